"""Weights & Biases logging as a hook (``wandb.enabled=true``).

Offline unless ``wandb.mode=online`` is asked for and an API key is available: with no network
and no key a run still logs, to ``<run_dir>/wandb``, for ``wandb sync`` later. The agent step
is the x-axis of every metric.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from metta_rl.config import WandbConfig
from metta_rl.hooks import Hook
from metta_rl.progress import TrainingProgress

log = logging.getLogger(__name__)


def effective_mode(config: WandbConfig) -> str:
    if config.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning("wandb.mode=online but WANDB_API_KEY is not set: logging offline")
        return "offline"
    return config.mode


class WandbHook(Hook):
    def __init__(self, config: WandbConfig) -> None:
        self.config = config
        self.run: Any = None

    def on_train_start(self, *, progress: TrainingProgress, config: Any, run_dir: Any) -> None:
        import wandb

        self.run = wandb.init(
            project=self.config.project,
            entity=self.config.entity,
            group=self.config.group,
            tags=list(self.config.tags),
            mode=effective_mode(self.config),
            name=run_dir.path.name,
            dir=str(run_dir.path),
            config=config.to_dict(),
        )
        self.run.define_metric("agent_step")
        self.run.define_metric("*", step_metric="agent_step")

    def on_epoch_end(self, *, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def on_train_end(self, *, progress: TrainingProgress, summary: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float, str)):
                    self.run.summary[key] = value
        self.close()

    def on_failure(self, *, progress: TrainingProgress, error: BaseException) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
