"""StatsManager: rolling episode, loss and timing statistics, one flat metrics dict per epoch.

Metric names are grouped in families (``overview/``, ``losses/``, ``env/``, ``timing/``,
``eval/``) so every sink (console, metrics.jsonl, W&B, TensorBoard) shows them the same way.
``system/`` (CPU, memory, GPU memory) is sampled by :class:`metta_rl.hooks.monitor.SystemMonitorHook`
and reaches the same dict through ``custom_metrics``, so ``logging.system_monitor`` can turn
it off like any other side effect.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from metta_rl.core.progress import TrainingProgress, steps_per_second
from metta_rl.managers.rollout import RolloutResult
from metta_rl.managers.training import LossStats


@dataclass(frozen=True)
class EpochTimings:
    """Wall-clock seconds of one epoch, split by phase."""

    env: float
    inference: float
    update: float
    total: float

    @property
    def other(self) -> float:
        return max(0.0, self.total - self.env - self.inference - self.update)


class StatsManager:
    def __init__(self, *, window: int = 100) -> None:
        self.window = window
        self.episode_returns: deque[float] = deque(maxlen=window)
        self.episode_lengths: deque[float] = deque(maxlen=window)
        self.time_totals = {"env": 0.0, "inference": 0.0, "update": 0.0, "other": 0.0}

    def record(
        self,
        progress: TrainingProgress,
        rollout: RolloutResult,
        losses: LossStats,
        timings: EpochTimings,
        lr: float,
    ) -> dict[str, float]:
        """Fold one epoch in and return its metrics (``progress`` is after the epoch)."""
        self.episode_returns.extend(rollout.episode_returns)
        self.episode_lengths.extend(rollout.episode_lengths)
        for key, value in (
            ("env", timings.env),
            ("inference", timings.inference),
            ("update", timings.update),
            ("other", timings.other),
        ):
            self.time_totals[key] += value
        metrics: dict[str, float] = {
            "agent_step": progress.agent_step,
            "epoch": progress.epoch,
            "wall_seconds": progress.wall_seconds,
            "overview/sps": steps_per_second(rollout.agent_steps, timings.total),
            "overview/episode_return": mean(self.episode_returns),
            "overview/episode_length": mean(self.episode_lengths),
            "overview/episodes": progress.episodes,
            "overview/learning_rate": lr,
            "timing/epoch_seconds": timings.total,
            # Shares of all training time so far: steadier than one epoch's (an eval epoch
            # would show mostly "other").
            **{f"timing/{k}": v for k, v in self.time_split().items()},
        }
        metrics.update(losses.as_metrics())
        for key, values in rollout.env_info.items():
            metrics[f"env/{key}"] = mean(values)
        return metrics

    def time_split(self) -> dict[str, float]:
        """Share of all training time per phase so far."""
        total = sum(self.time_totals.values()) or 1.0
        return {k: v / total for k, v in self.time_totals.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "episode_returns": list(self.episode_returns),
            "episode_lengths": list(self.episode_lengths),
            "time_totals": dict(self.time_totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episode_returns = deque(state["episode_returns"], maxlen=self.window)
        self.episode_lengths = deque(state["episode_lengths"], maxlen=self.window)
        self.time_totals = dict(state["time_totals"])


def mean(values: Iterable[float]) -> float:
    """The mean of ``values``; NaN when there are none (no episode finished, no eval yet). The
    one mean of a list of numbers in the package: stats, evaluation scores."""
    values = list(values)
    return float(np.mean(values)) if values else math.nan
