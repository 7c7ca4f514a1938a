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
from metta_rl.core.progress import TrainingProgress


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
    """Owns the optimizer over the policy's parameters, flattened into one buffer.

    Small policies spend most of an update in per-tensor overhead: Adam and grad clipping
    over a dozen tiny tensors cost more than the matmuls. So the parameters (and their
    gradients) are re-pointed into one contiguous tensor each, and Adam and the norm clip run
    on that single tensor. The module keeps its own parameters; they are views of the buffer.
    """

    def __init__(self, *, policy: nn.Module, config: OptimizerConfig) -> None:
        self.config = config
        params = [p for p in policy.parameters() if p.requires_grad]
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in params]).requires_grad_(True)
        self.flat.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            n = p.numel()
            # Autograd accumulates into an existing .grad in place, so gradients land in the buffer.
            p.data = self.flat.data[offset : offset + n].view_as(p)
            p.grad = self.flat.grad[offset : offset + n].view_as(p)
            offset += n
        cls = torch.optim.AdamW if config.type == "adamw" else torch.optim.Adam
        self.optimizer = cls(
            [self.flat],
            lr=config.learning_rate,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
            fused=self.flat.device.type in ("cpu", "cuda"),
        )
        self.lr = config.learning_rate
        # Multiplies the schedule; the non-finite guard lowers it after a rollback.
        self.lr_scale = 1.0
        # Non-finite guard: optimizer steps skipped in a row, and in total.
        self.nonfinite_streak = 0
        self.skipped_steps = 0

    def apply_schedule(self, progress: TrainingProgress) -> float:
        """Set the learning rate for the coming update from progress; returns it."""
        self.lr = scheduled_lr(self.config, progress.fraction) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip, step. Returns the pre-clip gradient norm.

        A non-finite gradient norm (a NaN/Inf loss gives one too) skips the optimizer step,
        leaving weights and Adam moments untouched, and is counted in ``nonfinite_streak``.
        Reading the norm costs a device sync per step (microseconds on CPU), and pays for itself:
        the clip factor becomes Python arithmetic instead of three tensor ops.
        """
        grad = self.flat.grad
        grad.zero_()
        loss.backward()
        norm = torch.linalg.vector_norm(grad)
        value = norm.item()  # the one read per step: it decides both the skip and the clip
        if not math.isfinite(value):
            self.nonfinite_streak += 1
            self.skipped_steps += 1
            return norm
        self.nonfinite_streak = 0
        max_norm = self.config.max_grad_norm
        if max_norm is not None and value + 1e-6 > max_norm:
            grad.mul_(max_norm / (value + 1e-6))
        self.optimizer.step()
        return norm

    def weights_finite(self) -> bool:
        return bool(torch.isfinite(self.flat).all())

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr": self.lr,
            "lr_scale": self.lr_scale,
            "skipped_steps": self.skipped_steps,
            # A resumed run counts towards the guard's limit from where it stopped.
            "nonfinite_streak": self.nonfinite_streak,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr = state["lr"]
        self.lr_scale = state["lr_scale"]
        self.skipped_steps = state["skipped_steps"]
        self.nonfinite_streak = state.get("nonfinite_streak", 0)  # absent in older checkpoints
