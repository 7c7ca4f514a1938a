"""The one place an ``EnvConfig`` of ``kind=mettagrid`` becomes a ``MettaGridConfig``.

``env.id`` is a task of :data:`metta_rl.envs.mettagrid_tasks.TASKS` (``navigation``) or a
user's ``module:callable``; either is called with ``env.kwargs`` and must return a
``MettaGridConfig``. The config built (build time) only checks the id's form; whether the
module imports, the kwargs fit and the callable returns a config is checked at set-up
(:func:`check_mettagrid_id`, via :func:`metta_rl.envs.checks.check_runtime`), and again in each
vector-env worker, which builds its own config (so a user module nothing imported before
works there too). Every failure is one :class:`~metta_rl.config.ConfigError` line naming
``env.id`` or ``env.kwargs``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.policy.policy_env_interface import PolicyEnvInterface

from metta_rl.config import METTAGRID_TASKS, ConfigError, EnvConfig
from metta_rl.core.token_grid import TokenLayout
from metta_rl.envs.mettagrid_tasks import TASKS
from metta_rl.envs.user_code import one_line, resolve_callable


def mettagrid_config(env: EnvConfig) -> MettaGridConfig:
    """The ``MettaGridConfig`` that ``env`` describes (a fresh one per call)."""
    return build_mettagrid_config(env.id, env.kwargs)


def token_layout(env: EnvConfig) -> TokenLayout:
    """The observation window and token features of the MettaGrid env ``env`` describes."""
    interface = PolicyEnvInterface.from_mg_cfg(mettagrid_config(env))
    features = tuple((int(f.id), str(f.name), float(f.normalization)) for f in interface.obs_features)
    return TokenLayout(
        height=int(interface.obs_height), width=int(interface.obs_width), features=features,
        tags=tuple(str(tag) for tag in interface.tags),
    )


def check_mettagrid_id(env_id: str, kwargs: dict[str, Any], *, field: str = "env.id") -> None:
    """Set-up check: the id resolves, takes ``kwargs`` and returns a ``MettaGridConfig``."""
    build_mettagrid_config(env_id, kwargs, field=field)


def build_mettagrid_config(env_id: str, kwargs: dict[str, Any], *, field: str = "env.id") -> MettaGridConfig:
    """Call the task or ``module:callable`` ``env_id`` with ``kwargs``; the time limit of the
    config it returns is made a truncation (PPO bootstraps there; the task does not end)."""
    kwargs_field = field.rpartition(".")[0] + ".kwargs" if "." in field else "kwargs"
    if env_id in TASKS:
        make, what = TASKS[env_id], f"MettaGrid task {env_id!r}"
    elif ":" in env_id:
        make, what = resolve_callable(env_id, field=field, what="a MettaGridConfig"), repr(env_id)
    else:
        raise ConfigError(
            f"{field}={env_id!r} is invalid: expected a MettaGrid task, one of {', '.join(METTAGRID_TASKS)}, "
            "or 'module:callable' returning a MettaGridConfig"
        )
    _check_kwargs(make, kwargs, what=what, field=kwargs_field)
    try:
        cfg = make(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the task or the user's callable may raise anything
        raise ConfigError(
            f"{field}={env_id!r} is invalid: calling it with {kwargs_field}={kwargs!r} raised {one_line(exc)}"
        ) from None
    if not isinstance(cfg, MettaGridConfig):
        raise ConfigError(
            f"{field}={env_id!r} is invalid: it returned {type(cfg).__module__}.{type(cfg).__qualname__}, "
            "expected a mettagrid MettaGridConfig"
        )
    cfg = cfg.model_copy(deep=True)  # a callable may hand out one shared config
    cfg.game.episode_truncates = True
    return cfg


def _check_kwargs(make: Callable[..., Any], kwargs: dict[str, Any], *, what: str, field: str) -> None:
    """Name the keys ``make`` does not take, and the ones it does (unless it takes ``**kwargs``)."""
    try:
        params = inspect.signature(make).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(
            f"{field}={kwargs!r} is invalid: {what} takes no {', '.join(map(repr, unknown))}; "
            f"it accepts {', '.join(accepted) or 'no keyword arguments'}"
        )
