"""The hooks every run gets from its config: monitors, console, loggers.

One function, so the Trainer's setup reads as "the user's hooks, then the built-in side
effects". The run record (metrics.jsonl, summary.json) is not among them: the Trainer writes
it, so an error cannot disable it the way it disables a hook. Heavy or optional packages
(wandb, tensorboard, matplotlib) are imported by their hooks only when those run.
"""

from __future__ import annotations

import logging

from metta_rl.config import TrainerConfig
from metta_rl.hooks.console import ConsoleHook
from metta_rl.hooks import Hook
from metta_rl.hooks.learning_curve import LearningCurveHook
from metta_rl.hooks.monitor import HeartbeatHook, ProfilerHook, SystemMonitorHook
from metta_rl.records.run_dir import RunDirectory

log = logging.getLogger(__name__)


def default_hooks(config: TrainerConfig, run_dir: RunDirectory, *, console: bool = True) -> list[Hook]:
    logging_cfg = config.logging
    hooks: list[Hook] = []
    if logging_cfg.system_monitor:
        hooks.append(SystemMonitorHook(interval_s=logging_cfg.monitor_interval_s))
    if logging_cfg.profile_epochs is not None:
        hooks.append(ProfilerHook(out_dir=run_dir.path / "profile", epochs=logging_cfg.profile_epochs))
    if console and logging_cfg.console != "off":
        hooks.append(ConsoleHook(mode=logging_cfg.console, interval_s=logging_cfg.log_interval_s))
    if logging_cfg.heartbeat:
        hooks.append(HeartbeatHook(run_dir.path / "heartbeat", interval_s=logging_cfg.monitor_interval_s))
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
    # Last: at train end it plots metrics.jsonl (the Trainer writes each row before any hook runs).
    hooks.append(LearningCurveHook(run_dir.path))
    return hooks
