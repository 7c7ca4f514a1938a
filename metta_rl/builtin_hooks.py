"""The hooks every run gets from its config: console, metrics file, loggers, monitors.

One function, so the Trainer's setup reads as "the built-in side effects, then the user's".
"""

from __future__ import annotations

from metta_rl.config import TrainerConfig
from metta_rl.console import ConsoleHook
from metta_rl.hooks import Hook
from metta_rl.run_dir import MetricsFileHook, RunDirectory


def default_hooks(config: TrainerConfig, run_dir: RunDirectory, *, console: bool = True) -> list[Hook]:
    hooks: list[Hook] = []
    if console and config.logging.console != "off":
        hooks.append(ConsoleHook(mode=config.logging.console, interval_s=config.logging.log_interval_s))
    hooks.append(MetricsFileHook(run_dir))
    if config.wandb.enabled and config.wandb.mode != "disabled":
        from metta_rl.wandb_hook import WandbHook

        hooks.append(WandbHook(config.wandb))
    return hooks
