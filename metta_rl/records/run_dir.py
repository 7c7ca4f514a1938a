"""The run directory ``<runs_dir>/<run>/``: resolved config, metrics.jsonl, summary.json
(and checkpoints/, see :mod:`metta_rl.records.checkpoint`).

Nothing is written until the trainer is fully set up, so a bad config or a missing env never
leaves a half-made run. An existing run is resumed (``resume=auto``) or refused
(``resume=never``), never silently mixed with a new one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from metta_rl.hooks import Hook

RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


class RunExistsError(FileExistsError):
    pass


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give records the usual mode
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        if resume_step is None:
            for name in ("metrics.jsonl", "summary.json"):
                (self.path / name).unlink(missing_ok=True)
        elif self.metrics_path.exists():
            kept = []
            for line in self.metrics_path.read_text().splitlines(keepends=True):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the torn last line of a killed writer
                if row.get("agent_step", 0) <= resume_step:
                    kept.append(line)
            atomic_write_text(self.metrics_path, "".join(kept))

    def append_metrics(self, metrics: Mapping[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_jsonable(metrics)) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(_jsonable(summary), indent=2) + "\n")


class MetricsFileHook(Hook):
    """Appends every epoch's metrics to ``metrics.jsonl``: a record that needs no service."""

    def __init__(self, run_dir: RunDirectory) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, *, metrics: Mapping[str, float]) -> None:
        self.run_dir.append_metrics(metrics)
