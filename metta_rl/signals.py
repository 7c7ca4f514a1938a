"""Ctrl-C and SIGTERM during training: stop at the next safe point instead of mid-write.

The first SIGINT or SIGTERM only sets a flag; the Trainer checks it after each epoch, writes a
checkpoint, closes the envs and raises :class:`TrainingInterrupted` (the CLI turns that into
exit code 130 or 143 and no traceback). A second signal raises ``KeyboardInterrupt`` at once,
for when the current epoch takes too long to wait for.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing ``checkpoint``; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, checkpoint: Path | None, agent_step: int) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.agent_step = agent_step
        where = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint written"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at agent step {agent_step:,}; {where}; "
            "run the same command again to resume"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside, SIGINT/SIGTERM request a stop (``signum`` is set).

    Outside the main thread (where handlers cannot be installed) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this epoch and writing a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
