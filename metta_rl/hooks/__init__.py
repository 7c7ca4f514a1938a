"""Hooks: every side effect of training (console, records, loggers) on a small lifecycle.

A hook never changes the training math: it receives read-only values (progress, the rollout
result, losses, eval results, the epoch's metrics) and returns nothing, except
``custom_metrics``, whose dict is merged into the epoch's metrics before any hook sees them.
A hook that raises is reported once and disabled; the run goes on. Failures that must stop a
run (a checkpoint that cannot be written) do not belong in a hook. A hook may end training
early, the way a Stable-Baselines3 callback returns False, by raising :class:`StopTraining`
(an Optuna pruner does): the epoch is booked, a final checkpoint and the summary are written.

Handlers are called with keyword arguments, and only those their signature names (or all of
them, given ``**kwargs``), so a hook declares just what it reads::

    class MyHook(Hook):
        def custom_metrics(self, *, report):
            return {"custom/long_episodes": sum(l > 200 for l in report.rollout.episode_lengths)}

        def on_epoch_end(self, *, progress, metrics):
            print(progress.agent_step, metrics["overview/sps"])
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from metta_rl.config import ConfigError
from metta_rl.core.progress import TrainingProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochReport:
    """Everything one epoch produced, for hooks to read (never to change).

    ``rollout`` is a :class:`~metta_rl.managers.rollout.RolloutResult`, ``losses`` a
    :class:`~metta_rl.managers.training.LossStats`, ``eval`` an :class:`~metta_rl.managers.evaluation.EvalResult`
    when an evaluation ran this epoch, ``timings`` a :class:`~metta_rl.managers.stats.EpochTimings`.
    """

    progress: TrainingProgress
    rollout: Any
    losses: Any
    timings: Any
    eval: Any = None


class StopTraining(Exception):
    """Raised by a hook to end training after the current epoch, with ``reason`` as the
    summary's ``stop_reason`` (e.g. ``"pruned"``). Not a failure: the hook stays enabled,
    the epoch's bookkeeping completes, a final checkpoint and ``summary.json`` are written
    and ``Trainer.train()`` returns. A resumed run trains on (the request is not saved)."""

    def __init__(self, reason: str = "stopped by a hook") -> None:
        super().__init__(reason)
        self.reason = reason


class Hook:
    """Override any of these; each is called with keyword arguments it names."""

    def on_train_start(
        self, *, progress: TrainingProgress, config: Any, run_dir: Any, resumed_from: Any = None
    ) -> None:
        """Training begins (or continues: ``resumed_from`` is the checkpoint directory)."""

    def on_rollout_end(self, *, progress: TrainingProgress, rollout: Any) -> None: ...

    def custom_metrics(self, *, report: EpochReport) -> Mapping[str, float] | None:
        """Extra metrics for this epoch (``{"custom/name": value}``): they reach every sink."""
        return None

    def on_epoch_end(
        self, *, progress: TrainingProgress, metrics: Mapping[str, float], report: EpochReport
    ) -> None: ...

    def on_checkpoint(self, *, progress: TrainingProgress, path: Any) -> None:
        """A checkpoint directory was written (complete) at ``path``."""

    def on_train_end(self, *, progress: TrainingProgress, summary: dict[str, Any]) -> None: ...

    def on_failure(self, *, progress: TrainingProgress, error: BaseException) -> None: ...

    def close(self) -> None: ...


def _parameter_names(method: Any) -> frozenset[str] | None:
    """The keyword names a handler takes; None when it takes ``**kwargs``."""
    params = inspect.signature(method).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


class HookList:
    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks: list[Hook] = list(hooks)
        # The reason of the first StopTraining a hook raised, until the Trainer stops.
        self.stop_requested: str | None = None
        # inspect.signature costs ~10 us: read each handler's once, not every epoch.
        self._names: dict[tuple[type, str], frozenset[str] | None] = {}

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def _disable(self, hook: Hook, event: str, exc: BaseException) -> None:
        log.warning(
            "hook %s failed in %s and is disabled: %s: %s", type(hook).__name__, event, type(exc).__name__, exc
        )
        if hook in self.hooks:
            self.hooks.remove(hook)

    def call(self, event: str, **kwargs: Any) -> None:
        for hook in list(self.hooks):
            try:
                method = getattr(hook, event)
                key = (type(hook), event)
                if key not in self._names:
                    self._names[key] = _parameter_names(method)
                names = self._names[key]
                method(**(kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}))
            except StopTraining as stop:
                if self.stop_requested is None:
                    self.stop_requested = stop.reason
            except Exception as exc:  # noqa: BLE001 - a logger must not kill a run
                self._disable(hook, event, exc)

    def custom_metrics(self, report: EpochReport) -> dict[str, float]:
        """Merge every hook's custom metrics; a bad value disables its hook like an exception."""
        merged: dict[str, float] = {}
        for hook in list(self.hooks):
            try:
                extra = hook.custom_metrics(report=report)
                for key, value in (extra or {}).items():
                    if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise TypeError(f"custom metric {key!r}={value!r} is not a name and a number")
                    merged[key] = float(value) if math.isfinite(value) else math.nan
            except Exception as exc:  # noqa: BLE001
                self._disable(hook, "custom_metrics", exc)
        return merged

    def close(self) -> None:
        for hook in self.hooks:
            try:
                hook.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("hook %s failed to close: %s", type(hook).__name__, exc)


def hook_from_spec(spec: str | Mapping[str, Any], index: int) -> Hook:
    """Build a user hook from the config: ``"module:Class"`` or ``{"target": ..., **kwargs}``."""
    if isinstance(spec, Mapping):
        kwargs = {k: v for k, v in spec.items() if k != "target"}
        target = spec["target"]
    else:
        kwargs, target = {}, spec
    module_name, _, attr = target.partition(":")
    field_name = f"hooks[{index}]"
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{field_name}={target!r} is invalid: cannot import it ({exc})") from None
    try:
        hook = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{field_name}={target!r} is invalid: {exc}") from None
    if not isinstance(hook, Hook):
        raise ConfigError(f"{field_name}={target!r} is invalid: expected a metta_rl.hooks.Hook subclass")
    return hook
