"""The hooks every run gets from its config: monitors, console, records, loggers.

One function, so the Trainer's setup reads as "the user's hooks, then the built-in side
effects". Heavy or optional packages (wandb, tensorboard, matplotlib) are imported by their
hooks only when those run.
"""

from __future__ import annotations

import logging

from metta_rl.config import TrainerConfig
from metta_rl.hooks.console import ConsoleHook
from metta_rl.hooks import Hook
from metta_rl.hooks.learning_curve import LearningCurveHook
from metta_rl.hooks.monitor import HeartbeatHook, ProfilerHook, SystemMonitorHook
from metta_rl.records.run_dir import MetricsFileHook, RunDirectory

log = logging.getLogger(__name__)


def default_hooks(config: TrainerConfig, run_dir: RunDirectory, *, console: bool = True) -> list[Hook]:
    logging_cfg = config.logging
    hooks: list[Hook] = []
    if logging_cfg.system_monitor:
        hooks.append(SystemMonitorHook())
    if logging_cfg.profile_epochs is not None:
        hooks.append(ProfilerHook(out_dir=run_dir.path / "profile", epochs=logging_cfg.profile_epochs))
    if console and logging_cfg.console != "off":
        hooks.append(ConsoleHook(mode=logging_cfg.console, interval_s=logging_cfg.log_interval_s))
    hooks.append(MetricsFileHook(run_dir))
    if logging_cfg.heartbeat:
        hooks.append(HeartbeatHook(run_dir.path / "heartbeat"))
    if config.tensorboard.enabled:
        from metta_rl.hooks.tensorboard_hook import TensorBoardHook, tensorboard_available

        if tensorboard_available():
            hooks.append(TensorBoardHook(run_dir.path / "tensorboard"))
        else:
            # A missing logger must not stop a run (it is a side effect, not the training).
            log.warning(
                "tensorboard.enabled=true but tensorboard is not installed: pip install 'metta_rl[tensorboard]'"
            )
    if config.wandb.enabled and config.wandb.mode != "disabled":
        from metta_rl.hooks.wandb_hook import WandbHook

        hooks.append(WandbHook(config.wandb))
    # Last: it reads metrics.jsonl, complete once every other hook has seen the last epoch.
    hooks.append(LearningCurveHook(run_dir.path))
    return hooks
