"""One way to write a file so that no reader, and no crash, ever sees half of it.

Every record file (config.yaml, summary.json, the truncated metrics.jsonl, checkpoint files,
replays, eval reports, the heartbeat) goes through :func:`atomic_write`: a temp file in the same
folder, flushed and fsynced, then renamed over the target. Its mode is the umask's (``0o666 &
~umask``), like any file ``open()`` creates: ``mkstemp``'s own 0600 would make a run's records
unreadable to the people it is shared with.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Content = bytes | str | Callable[[BinaryIO], object]


def file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX: the directory entry is the directory's data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, content: Content, *, durable: bool = True) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path``.

    ``durable=False`` skips the fsyncs: still never half-written for a reader, but a machine
    crash may lose it (for files rewritten every epoch whose loss is harmless, the heartbeat).
    The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
