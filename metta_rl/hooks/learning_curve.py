"""The learning-curve hook: ``<run>/learning_curve.png`` from the run's own metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from metta_rl.hooks import Hook
from metta_rl.learning_curve import FILENAME, write_learning_curve_png


class LearningCurveHook(Hook):
    """Writes ``<run>/learning_curve.png`` when training ends (also after a failure: the
    curve up to the failure is the first thing to look at), and at cleanup when epochs ran
    since (a notebook stepping with ``train_epoch()`` never reaches ``on_train_end``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._unplotted = False

    @property
    def path(self) -> Path:
        return self.run_dir / FILENAME

    def write(self) -> Path | None:
        self._unplotted = False
        if not (self.run_dir / "metrics.jsonl").exists():
            return None
        return write_learning_curve_png(self.run_dir, self.path)

    def on_epoch_end(self) -> None:
        self._unplotted = True

    def on_train_end(self) -> None:
        self.write()

    def on_failure(self) -> None:
        self.write()

    def close(self) -> None:
        if self._unplotted:
            self.write()
