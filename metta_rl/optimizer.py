"""OptimizerManager: the optimizer, the learning-rate schedule and grad-norm clipping.

The schedule is a pure function of training progress (the share of the step budget used),
so the learning rate after a resume is exactly where it would have been: there is no
scheduler object whose own step counter could drift from the trainer's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from metta_rl.config import OptimizerConfig
from metta_rl.progress import TrainingProgress


def scheduled_lr(config: OptimizerConfig, fraction: float) -> float:
    """Learning rate after ``fraction`` (0..1) of the step budget."""
    base = config.learning_rate
    floor = base * config.min_lr_fraction
    fraction = min(max(fraction, 0.0), 1.0)
    if config.schedule == "linear":
        return base - (base - floor) * fraction
    if config.schedule == "cosine":
        return floor + 0.5 * (base - floor) * (1.0 + math.cos(math.pi * fraction))
    return base


class OptimizerManager:
    def __init__(self, *, policy: nn.Module, config: OptimizerConfig) -> None:
        self.config = config
        self.params = [p for p in policy.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if config.type == "adamw" else torch.optim.Adam
        self.optimizer = cls(
            self.params,
            lr=config.learning_rate,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
            foreach=True,
        )
        self.lr = config.learning_rate

    def apply_schedule(self, progress: TrainingProgress) -> float:
        """Set the learning rate for the coming update from progress; returns it."""
        self.lr = scheduled_lr(self.config, progress.fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip, step. Returns the pre-clip gradient norm (a tensor: no sync here)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm, foreach=True)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        self.optimizer.step()
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr = state["lr"]
