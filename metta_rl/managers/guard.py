"""The non-finite guard: what training does when losses or gradients stop being numbers.

The optimizer already skips (and counts) any step whose gradient norm is NaN/Inf. This guard
decides what happens when that persists: after ``guard.max_nonfinite_steps`` skipped steps in
a row it restores the last good checkpoint's weights and optimizer, scales the learning rate by
``guard.lr_backoff`` and logs it; once ``guard.max_rollbacks`` rollbacks in a row have not
helped, it stops the run with :class:`TrainingError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metta_rl.config import GuardConfig
from metta_rl.managers.optimizer import OptimizerManager
from metta_rl.managers.training import LossStats

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (losses stay non-finite after a rollback). One line."""


class NonFiniteGuard:
    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.rollbacks = 0
        self._in_a_row = 0

    def state_dict(self) -> dict[str, Any]:
        """Both counters survive a resume: a run that rolls back, is resumed and rolls back
        again stops after ``max_rollbacks`` in a row, as it would have uninterrupted."""
        return {"rollbacks": self.rollbacks, "in_a_row": self._in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A missing counter (a checkpoint written before they were saved) starts at 0."""
        self.rollbacks = int(state.get("rollbacks", 0))
        self._in_a_row = int(state.get("in_a_row", 0))

    def after_update(
        self, optimizer: OptimizerManager, losses: LossStats, *, restore: Callable[[], Path]
    ) -> None:
        """Called after every update. ``restore`` puts the newest checkpoint's weights and
        optimizer back and returns its path (raising if there is none)."""
        if optimizer.nonfinite_streak >= self.config.max_nonfinite_steps:
            self._rollback(optimizer, restore)
        elif losses.skipped_steps == 0:
            self._in_a_row = 0

    def _rollback(self, optimizer: OptimizerManager, restore: Callable[[], Path]) -> None:
        cfg = self.config
        streak = optimizer.nonfinite_streak
        if self._in_a_row >= cfg.max_rollbacks:
            raise TrainingError(
                f"{streak} optimizer steps in a row had a non-finite loss or gradient after "
                f"{self._in_a_row} rollback(s) (guard.max_rollbacks={cfg.max_rollbacks}); stopping: "
                "check the env's observations and rewards, or lower optimizer.learning_rate"
            )
        scale = optimizer.lr_scale * cfg.lr_backoff
        try:
            path = restore()
        except Exception as exc:  # noqa: BLE001 - no checkpoint, or none loads: say so and stop
            raise TrainingError(f"{streak} non-finite optimizer steps in a row and no checkpoint to restore: {exc}") from None
        optimizer.lr_scale = scale
        optimizer.nonfinite_streak = 0
        self._in_a_row += 1
        self.rollbacks += 1
        log.warning(
            "%d optimizer steps in a row had a non-finite loss or gradient: restored %s and scaled the "
            "learning rate by %g (now x%g of the schedule)",
            streak, path, cfg.lr_backoff, scale,
        )
