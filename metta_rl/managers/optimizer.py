"""OptimizerManager: the optimizer, the learning-rate schedule and grad-norm clipping.

The schedule is a pure function of training progress (the share of the step budget used),
so the learning rate after a resume is exactly where it would have been: there is no
scheduler object whose own step counter could drift from the trainer's.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.adam import adam

from metta_rl.config import OptimizerConfig
from metta_rl.core.progress import TrainingProgress
from metta_rl.distributed import SINGLE, Distributed


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


class FlatAdam:
    """Adam (AdamW: ``decoupled=True``) over one flat parameter tensor, stepped by torch's own
    functional ``torch.optim.adam.adam`` (the fused kernel ``torch.optim.Adam.step`` calls),
    with ``torch.optim.Adam``'s state-dict format, so checkpoints load either way.

    Why not ``torch.optim.Adam`` itself: its constructor and every ``step`` import
    ``torch._dynamo`` (``add_param_group`` and ``step`` are wrapped in dynamo's disable and
    graph breaks), 2-3 s on a small CPU, as long as the whole start of a CartPole run.
    The functional form runs the same math, bit for bit (tests/test_components.py), and
    imports nothing. ``param_groups`` and ``state`` read like an Optimizer's.
    """

    def __init__(
        self, param: torch.Tensor, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
        decoupled: bool,
    ) -> None:
        self.param = param
        self.fused = param.device.type in ("cpu", "cuda")
        self.param_groups: list[dict[str, Any]] = [{
            "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": False,
            "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
            "fused": self.fused, "decoupled_weight_decay": decoupled,
        }]
        # Created at the first step, as torch.optim.Adam does (a step count of 0 has none).
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def _moments(self) -> dict[str, torch.Tensor]:
        state = self.state.get(self.param)
        if state is None:
            p = self.param
            step_device = p.device if self.fused else torch.device("cpu")
            state = self.state[p] = {
                "step": torch.zeros((), dtype=torch.float32, device=step_device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return state

    @torch.no_grad()
    def step(self) -> None:
        group, state = self.param_groups[0], self._moments()
        beta1, beta2 = group["betas"]
        if self.fused:
            # What ``adam(..., fused=True)`` runs for one tensor, without its per-call grouping
            # by device and dtype (a third of a CartPole minibatch's optimizer time).
            torch._foreach_add_([state["step"]], 1)
            kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
            kernel(
                [self.param], [self.param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
            )
            return
        adam(
            [self.param], [self.param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            foreach=False, fused=self.fused, decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False,
        )

    def state_dict(self) -> dict[str, Any]:
        state = self.state.get(self.param)
        return {
            "state": {} if state is None else {0: {k: v.clone() for k, v in state.items()}},
            "param_groups": [{**self.param_groups[0], "params": [0]}],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like ``Optimizer.load_state_dict``: the saved hyperparameters and moments, moved to the
        parameter's device; a ValueError when they do not fit the parameter."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != 1:
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        saved = state_dict["state"].get(groups[0]["params"][0])
        p = self.param
        if saved is not None and any(saved[k].shape != p.shape for k in ("exp_avg", "exp_avg_sq")):
            raise ValueError(f"loaded Adam moments of shape {tuple(saved['exp_avg'].shape)} do not fit the "
                             f"parameters ({tuple(p.shape)})")
        group = {k: v for k, v in groups[0].items() if k != "params"}
        self.param_groups = [{**self.param_groups[0], **group, "betas": tuple(group["betas"]), "fused": self.fused}]
        self.state = {} if saved is None else {p: {
            "step": saved["step"].to(dtype=torch.float32, device=p.device if self.fused else "cpu"),
            "exp_avg": saved["exp_avg"].to(dtype=p.dtype, device=p.device).clone(),
            "exp_avg_sq": saved["exp_avg_sq"].to(dtype=p.dtype, device=p.device).clone(),
        }}


class OptimizerManager:
    """Owns the optimizer over the policy's parameters, flattened into one buffer.

    Small policies spend most of an update in per-tensor overhead: Adam and grad clipping
    over a dozen tiny tensors cost more than the matmuls. So the parameters (and their
    gradients) are re-pointed into one contiguous tensor each, and Adam and the norm clip run
    on that single tensor. The module keeps its own parameters; they are views of the buffer.

    Under torchrun (``dist``) the same buffer is what the ranks average: one all-reduce of the
    flat gradient per step, before the norm is read, so every rank clips, skips and steps
    alike and the weights stay identical. Measured against wrapping the policy in
    ``DistributedDataParallel`` (2 gloo ranks on this 2-core machine, the CartPole MLP, a
    minibatch of 128, forward + backward + sync + clip + Adam): 4.1-4.7 ms a step flat,
    6.4-6.5 ms with DDP (whose forward would also have to be the module's ``forward``, not
    ``forward_step``/``forward_sequence``).
    """

    def __init__(self, *, policy: nn.Module, config: OptimizerConfig, dist: Distributed = SINGLE) -> None:
        self.config = config
        self.dist = dist
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
        self.optimizer = FlatAdam(
            self.flat,
            lr=config.learning_rate,
            betas=(config.betas[0], config.betas[1]),
            eps=config.eps,
            weight_decay=config.weight_decay,
            decoupled=config.type == "adamw",
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

    def step(self, loss: torch.Tensor, backward: Callable[[], None] | None = None) -> torch.Tensor:
        """Backward, clip, step. Returns the pre-clip gradient norm.

        ``backward``: a hand-written backward that writes every parameter's gradient
        (:meth:`metta_rl.core.policy.Policy.forward_explicit`), run instead of autograd's
        ``loss.backward()``; ``loss`` is then only checked for being finite.

        A non-finite gradient norm (a NaN/Inf loss gives one too) skips the optimizer step,
        leaving weights and Adam moments untouched, and is counted in ``nonfinite_streak``.
        Reading the norm costs a device sync per step (microseconds on CPU), and pays for itself:
        the clip factor becomes Python arithmetic instead of three tensor ops.
        """
        grad = self.flat.grad
        grad.zero_()
        if backward is None:
            loss.backward()
        else:
            backward()
            if not math.isfinite(loss.item()):
                # A hand-written gradient comes from the loss's inputs, not through the loss, so
                # a non-finite loss need not reach it: make it NaN, as autograd's would be, so
                # this step is skipped (on every rank: the average below is NaN too).
                grad.fill_(math.nan)
        self.dist.mean_(grad)  # the ranks' average gradient (nothing in a single process)
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
