"""TensorBoard scalars as a hook (``tensorboard.enabled=true``; the ``tensorboard`` extra).

Writes every epoch's metrics to ``<run>/tensorboard`` with the agent step as the global step,
the same names and values as metrics.jsonl and W&B (``overview/sps``, ``losses/policy_loss``,
...), so TensorBoard groups them by the same families. The resolved config is a text summary.
A resumed run appends a new event file to the same folder; TensorBoard merges them.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from metta_rl.hooks import Hook
from metta_rl.core.progress import TrainingProgress

# Counters that are the x-axis or bookkeeping, not curves.
SKIP = frozenset({"agent_step"})


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardHook(Hook):
    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def on_train_start(self, *, config: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            text = yaml.safe_dump(config.to_dict(), sort_keys=False)
            # Markdown code block: TensorBoard renders text summaries as markdown.
            self.writer.add_text("config", "```\n" + text + "```", global_step=0)

    def on_epoch_end(self, *, progress: TrainingProgress, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        step = progress.agent_step
        for key, value in metrics.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(key, value if math.isfinite(value) else math.nan, global_step=step)

    def on_train_end(self) -> None:
        self.close()

    def on_failure(self) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
