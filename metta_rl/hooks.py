"""Hooks: every side effect of training (console, metrics file, loggers) on a small lifecycle.

A hook never changes the training math: it receives read-only values (progress, rollout
result, the epoch's metrics) and returns nothing. A hook that raises is reported once and
disabled; the run goes on. Failures that must stop a run (a checkpoint that cannot be
written) do not belong in a hook.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from metta_rl.progress import TrainingProgress

log = logging.getLogger(__name__)


class Hook:
    """Override any of these; each is called with keyword arguments."""

    def on_train_start(self, *, progress: TrainingProgress, config: Any, run_dir: Any) -> None: ...

    def on_rollout_end(self, *, progress: TrainingProgress, rollout: Any) -> None: ...

    def on_epoch_end(self, *, progress: TrainingProgress, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, *, progress: TrainingProgress, summary: dict[str, Any]) -> None: ...

    def on_failure(self, *, progress: TrainingProgress, error: BaseException) -> None: ...

    def close(self) -> None: ...


class HookList:
    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks: list[Hook] = list(hooks)

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def call(self, event: str, **kwargs: Any) -> None:
        for hook in list(self.hooks):
            try:
                getattr(hook, event)(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a logger must not kill a run
                log.warning("hook %s failed in %s and is disabled: %s: %s", type(hook).__name__, event, type(exc).__name__, exc)
                self.hooks.remove(hook)

    def close(self) -> None:
        for hook in self.hooks:
            try:
                hook.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("hook %s failed to close: %s", type(hook).__name__, exc)
