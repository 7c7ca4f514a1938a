"""The run directory ``<runs_dir>/<run>/``: resolved config, metrics.jsonl, summary.json
(and checkpoints/, see :mod:`metta_rl.records.checkpoint`).

Nothing is written until the trainer is fully set up, so a bad config or a missing env never
leaves a half-made run. An existing run is resumed (``resume=auto``) or refused
(``resume=never``), never silently mixed with a new one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from metta_rl.records.atomic import atomic_write

RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


class RunExistsError(FileExistsError):
    pass


class RunRecordError(OSError):
    """A run record (metrics.jsonl, summary.json, config.yaml, a checkpoint) cannot be written.
    The run stops: a run whose record is incomplete is not a result. One line naming the file."""


def record_error(path: Path, exc: OSError, *, what: str = "the run record") -> RunRecordError:
    """The one-line :class:`RunRecordError` for a failed write of ``path`` (run records and
    checkpoints alike)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return RunRecordError(f"cannot write {what} {path}: {reason}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def check_new(self) -> None:
        existing = [name for name in RECORD_FILES if (self.path / name).exists()]
        if existing:
            raise RunExistsError(
                f"run directory {self.path} already holds a run ({', '.join(existing)}): choose another run= name"
            )

    def open(self, config: dict[str, Any], *, resume_step: int | None) -> None:
        """Write the resolved config; when resuming, drop metrics rows past the checkpoint's
        step (an interrupted run wrote them after its last checkpoint), so agent_step never
        goes backwards. A fresh start in a run folder without checkpoints starts its records over."""
        path = self.path / "config.yaml"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write(path, yaml.safe_dump(config, sort_keys=False))
            if resume_step is None:
                for name in ("metrics.jsonl", "summary.json"):
                    path = self.path / name
                    path.unlink(missing_ok=True)
            elif self.metrics_path.exists():
                path = self.metrics_path
                kept = []
                for line in path.read_text().splitlines(keepends=True):
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # the torn last line of a killed writer
                    if row.get("agent_step", 0) <= resume_step:
                        kept.append(line)
                atomic_write(path, "".join(kept))
        except OSError as exc:
            raise record_error(path, exc) from exc

    def append_metrics(self, metrics: Mapping[str, Any]) -> None:
        """One epoch's row. The Trainer writes it (not a hook, which an error would disable):
        a row that cannot be written stops the run with :class:`RunRecordError`."""
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(_jsonable(metrics)) + "\n")
        except OSError as exc:
            raise record_error(self.metrics_path, exc) from exc

    def write_summary(self, summary: dict[str, Any]) -> None:
        path = self.path / "summary.json"
        try:
            atomic_write(path, json.dumps(_jsonable(summary), indent=2) + "\n")
        except OSError as exc:
            raise record_error(path, exc) from exc
