"""The Checkpointer: a run's checkpoints, from resume to rollback.

It decides which checkpoint a run resumes from, when the next one is due, writes it (keeping
the last N and the best), and names the checkpoint the non-finite guard rolls back to. It
knows neither the Trainer nor the managers: what goes into a checkpoint is handed to
:meth:`Checkpointer.save` (the Trainer's :meth:`~metta_rl.trainer.Trainer.checkpoint_state`,
the one place it is gathered), and putting one back is a ``restore`` callback (the Trainer's
:meth:`~metta_rl.trainer.Trainer.load_checkpoint`, the one place it is restored).

Under torchrun (``dist``) rank 0 picks and loads the checkpoint, on the CPU, and sends it to
the other ranks, which restore that same state: no shared file system is needed, and the
ranks cannot pick different checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metta_rl.config import CheckpointConfig
from metta_rl.core.progress import TrainingProgress, crossed, resumed_message
from metta_rl.distributed import SINGLE, Distributed
from metta_rl.records import checkpoint as files
from metta_rl.records.checkpoint import Checkpoint, CheckpointError
from metta_rl.records.run_dir import RunRecordError, record_error

log = logging.getLogger(__name__)

# Puts a loaded checkpoint back into the trainer (whole, or weights and optimizer only).
Restore = Callable[[Checkpoint], object]


class Checkpointer:
    def __init__(self, *, run_path: Path, config: CheckpointConfig) -> None:
        self.run_path = Path(run_path)
        self.config = config
        self.resumed_from: Path | None = None
        # The newest checkpoint this process wrote (summary, hooks, a signal's exit message).
        self.last: Path | None = None
        # Where the guard rolls back to: this run's newest checkpoint (written, or resumed from
        # in this run's own folder). Never another run's, nor a stale one of an older attempt.
        self.rollback_target: Path | None = None
        self.saved_epoch: int | None = None

    @property
    def dir(self) -> Path:
        return self.run_path / files.CHECKPOINTS

    # ------------------------------------------------------------------ resume
    def resume(
        self, resume: str, *, restore: Restore, map_location: Any, dist: Distributed = SINGLE
    ) -> Checkpoint | None:
        """Load the checkpoint ``resume`` names (``never``: none; ``auto``: the newest of this
        run that loads, skipping damaged ones by name; else a path) and ``restore`` it."""
        if not dist.enabled:
            return self._resume(resume, restore=restore, map_location=map_location)
        checkpoint = self._resume(resume, restore=restore, map_location="cpu") if dist.is_main else None
        checkpoint = dist.broadcast_object(checkpoint)
        if checkpoint is not None and not dist.is_main:
            restore(checkpoint)
            self.resumed_from = checkpoint.path
        return checkpoint

    def _resume(self, resume: str, *, restore: Restore, map_location: Any) -> Checkpoint | None:
        if resume == "never":
            return None
        candidates = files.list_checkpoints(self.run_path) if resume == "auto" else [Path(resume)]
        if not candidates:
            return None
        errors = []
        for path in candidates:
            try:
                checkpoint = files.load_checkpoint(path, map_location=map_location)
                restore(checkpoint)
            except CheckpointError as exc:
                if resume != "auto":
                    raise
                log.warning("skipping checkpoint: %s", exc)
                errors.append(str(exc))
                continue
            self.resumed_from = checkpoint.path
            if checkpoint.path.parent == self.dir.resolve():
                self.rollback_target = checkpoint.path
            log.info("%s", resumed_message(checkpoint.path, checkpoint.progress))
            return checkpoint
        raise CheckpointError(
            f"run {self.run_path} has checkpoints but none can be resumed ({'; '.join(errors)}); "
            "use resume=never with a new run name, or resume=<path>"
        )

    def loaded(self, epoch: int) -> None:
        """A whole checkpoint of ``epoch`` was put back: no need to write that epoch again."""
        self.saved_epoch = epoch

    # ------------------------------------------------------------------ saving
    def due(self, prev_epoch: int, epoch: int, *, done: bool, new_best: bool) -> bool:
        """After the epoch ``prev_epoch -> epoch``: at the end, on each interval crossed, and
        on a new best eval score (``keep_best``); never twice for one epoch."""
        if self.saved_epoch == epoch:
            return False
        cfg = self.config
        return done or crossed(prev_epoch, epoch, cfg.interval) or (new_best and cfg.keep_best)

    def saved_at(self, epoch: int) -> Path | None:
        """The checkpoint this process wrote at ``epoch``, if it did."""
        return self.last if self.saved_epoch == epoch else None

    def save(
        self, *, progress: TrainingProgress, state: dict[str, Any], metadata: dict[str, Any], best: bool
    ) -> Path:
        """Write ``state`` as the checkpoint at ``progress`` (``best``: it has the best eval score
        so far), then prune to the last ``keep_last`` and the best. The metadata gets the run's
        name, the progress and the package versions. A write that fails raises
        :class:`RunRecordError` naming the checkpoint: a run that cannot checkpoint stops."""
        epoch = progress.epoch
        path = self.dir / files.checkpoint_name(epoch)
        metadata = {"run": self.run_path.name, "progress": asdict(progress), "versions": files.versions(), **metadata}
        try:
            files.save_checkpoint(path, state=state, metadata=metadata)
            if best and self.config.keep_best:
                files.set_best(self.dir, path)
            files.prune(self.dir, keep_last=self.config.keep_last)
        except RunRecordError:
            raise
        except OSError as exc:
            raise record_error(path, exc, what="the checkpoint") from exc
        self.saved_epoch = epoch
        self.last = self.rollback_target = path
        return path

    # ------------------------------------------------------------------ rollback
    def restore_last_good(self, *, restore: Restore, map_location: Any, dist: Distributed = SINGLE) -> Path:
        """The guard's rollback: load :attr:`rollback_target` and ``restore`` it.

        Under torchrun every rank decides to roll back at the same step (the gradient norm is
        the global one), and rank 0 sends the checkpoint, or its error, so all restore or all fail."""
        if not dist.enabled:
            checkpoint = self._last_good(map_location)
        else:
            found: tuple[Checkpoint | None, str | None] = (None, None)
            if dist.is_main:
                try:
                    found = (self._last_good("cpu"), None)
                except Exception as exc:  # noqa: BLE001 - sent to every rank, raised there
                    found = (None, str(exc))
            checkpoint, error = dist.broadcast_object(found)
            if error is not None:
                raise CheckpointError(error)
        restore(checkpoint)
        return checkpoint.path

    def _last_good(self, map_location: Any) -> Checkpoint:
        if self.rollback_target is None:
            raise CheckpointError(f"run {self.run_path} has no checkpoint of its own yet")
        return files.load_checkpoint(self.rollback_target, map_location=map_location)
