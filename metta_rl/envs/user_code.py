"""Importing a user's env code named in a config (``module:callable``), with one-line errors.

Shared by every env kind that takes a user's callable (Gymnasium, PettingZoo, MettaGrid), so
the messages read the same: ``env.id='pkg.mod:make' is invalid: cannot import 'pkg.mod' (...)``.
The import happens in the process that calls these (the trainer at set-up, and each vector-env
worker when it builds its envs), so a module nothing imported before works everywhere.
"""

from __future__ import annotations

import importlib
from typing import Any

from metta_rl.config import ConfigError


def import_user_module(module_name: str, env_id: str, field: str) -> Any:
    """Import a user's env module; any failure (missing, or raising on import) is one line."""
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a user module may raise anything on import
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        detail = " ".join(detail.split())
        raise ConfigError(f"{field}={env_id!r} is invalid: cannot import {module_name!r} ({detail})") from None


def resolve_callable(path: str, *, field: str = "env.id", what: str = "a PettingZoo env") -> Any:
    """The callable ``module:attr`` names (the module imported here)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{field}={path!r} is invalid: expected 'module:callable' for {what}")
    module = import_user_module(module_name, path, field)
    if not callable(getattr(module, attr, None)):
        raise ConfigError(f"{field}={path!r} is invalid: {module_name!r} has no callable {attr!r}")
    return getattr(module, attr)


def one_line(exc: BaseException) -> str:
    """``TypeError: f() got an unexpected keyword`` on one line, for error messages."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
