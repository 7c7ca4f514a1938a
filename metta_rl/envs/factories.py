"""Environment factories: one picklable creator per env, for ``pufferlib.vector.make``.

Gymnasium and PettingZoo envs go through pufferlib's emulation layer; MettaGrid is a native
PufferEnv. Seeding is ours, not pufferlib's (see :mod:`metta_rl.envs.seeding`): on each explicit
reset every env takes its own seed from (run seed, stream, env index, start point), and it
continues its own RNG on the automatic resets between episodes.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from typing import Any

import gymnasium
import pufferlib.emulation

from metta_rl.config import ConfigError
from metta_rl.envs.seeding import EnvSeeds


def check_env_id(kind: str, env_id: str, kwargs: dict[str, Any] | None = None, *, field: str = "env.id") -> None:
    """Fail before training, with one line naming ``field``, for an env id that cannot be built.

    A runtime check (it imports user modules), run at set-up by
    :func:`metta_rl.envs.checks.check_runtime`, never when a config is built. A gym
    ``module:callable`` is called once with ``kwargs`` (and the env closed) to check that it
    returns a ``gymnasium.Env``; a registered id or an Env class is not built."""
    if kind == "gym":
        module_name, _, name = env_id.partition(":")
        if not name:
            if env_id not in gymnasium.registry:
                close = [k for k in gymnasium.registry if k.lower().startswith(env_id.lower()[:4])][:5]
                hint = f" (close: {', '.join(close)})" if close else ""
                raise ConfigError(
                    f"{field}={env_id!r} is invalid: expected a registered Gymnasium id, 'module:EnvId' or "
                    f"'module:callable'{hint}"
                )
            return
        module = _import(module_name, env_id, field)
        if name in gymnasium.registry:
            return
        target = getattr(module, name, None)
        if not callable(target):
            raise ConfigError(
                f"{field}={env_id!r} is invalid: importing {module_name!r} registered no Gymnasium id {name!r}, "
                f"and {module_name!r} has no callable {name!r}"
            )
        if isinstance(target, type) and issubclass(target, gymnasium.Env):
            return
        try:
            env = _make_gym(env_id, dict(kwargs or {}), field=field)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's callable may raise anything
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            kwargs_field = field.rpartition(".")[0] + ".kwargs"
            raise ConfigError(
                f"{field}={env_id!r} is invalid: calling it with {kwargs_field} raised {detail}"
            ) from None
        env.close()
    elif kind == "pettingzoo":
        _resolve_callable(env_id, field=field)
    # mettagrid: the preset is checked when the config is built (EnvConfig); nothing to import.


def _import(module_name: str, env_id: str, field: str) -> Any:
    """Import a user's env module; any failure (missing, or raising on import) is one line."""
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a user module may raise anything on import
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        detail = " ".join(detail.split())
        raise ConfigError(f"{field}={env_id!r} is invalid: cannot import {module_name!r} ({detail})") from None


def _resolve_callable(path: str, *, field: str = "env.id", what: str = "a PettingZoo env") -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{field}={path!r} is invalid: expected 'module:callable' for {what}")
    module = _import(module_name, path, field)
    if not callable(getattr(module, attr, None)):
        raise ConfigError(f"{field}={path!r} is invalid: {module_name!r} has no callable {attr!r}")
    return getattr(module, attr)


def _make_gym(env_id: str, kwargs: dict[str, Any], *, field: str = "env.id") -> gymnasium.Env:
    """A Gymnasium env from a registered id, from Gymnasium's ``module:EnvId`` (importing the
    module registers the id), or from ``module:callable`` returning a ``gymnasium.Env``.

    The module is imported here, in the process that builds the env, so a Multiprocessing
    worker registers the id itself whatever the start method."""
    module_name, _, name = env_id.partition(":")
    if not name:
        return gymnasium.make(env_id, **kwargs)
    _import(module_name, env_id, field)
    if name in gymnasium.registry:
        return gymnasium.make(env_id, **kwargs)
    env = _resolve_callable(env_id, field=field, what="a Gymnasium env")(**kwargs)
    if not isinstance(env, gymnasium.Env):
        if callable(getattr(env, "close", None)):
            env.close()
        raise ConfigError(
            f"{field}={env_id!r} is invalid: {env_id} returned {type(env).__module__}.{type(env).__qualname__}, "
            "expected a gymnasium.Env"
        )
    return env


class EnvStepError(RuntimeError):
    """An env raised while stepping or resetting; the message names the env and its index."""


def _named_errors(label: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except EnvStepError:
        raise
    except Exception as exc:
        raise EnvStepError(f"env #{label} raised {type(exc).__name__}: {exc}") from exc


class _SeededGymReset(gymnasium.Wrapper):
    """Gymnasium wrapper that replaces pufferlib's reset seed with the env's own seed, and
    names the env (id and index) in any exception it raises."""

    def __init__(self, env: gymnasium.Env, seeds: EnvSeeds, label: str) -> None:
        super().__init__(env)
        self._seeds = seeds
        self._label = label

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return _named_errors(self._label, self.env.reset, seed=self._seeds.for_reset(seed), options=options)

    def step(self, action: Any):
        try:  # inline, not via _named_errors: this is the per-step hot path
            return self.env.step(action)
        except Exception as exc:
            raise EnvStepError(f"env #{self._label} raised {type(exc).__name__}: {exc}") from exc


class _SeededParallelEnv:
    """PettingZoo ParallelEnv proxy that replaces pufferlib's reset seed with the env's own
    seed, and names the env in any exception it raises."""

    def __init__(self, env: Any, seeds: EnvSeeds, label: str) -> None:
        self._env = env
        self._seeds = seeds
        self._label = label

    def reset(self, seed: int | None = None, options: dict | None = None):
        return _named_errors(self._label, self._env.reset, seed=self._seeds.for_reset(seed), options=options)

    def step(self, actions: Any):
        return _named_errors(self._label, self._env.step, actions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the trainer dies (even by SIGKILL), so a
    killed run never leaves workers spinning."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class EnvCreator:
    """Builds one env for pufferlib.vector; picklable, so Multiprocessing workers can call it."""

    kind: str
    env_id: str
    kwargs: tuple[tuple[str, Any], ...]
    seed: int
    stream: int
    env_index: int
    render_mode: str | None = None

    def __call__(self, buf: Any = None, seed: int | None = None) -> Any:  # noqa: ARG002 (pufferlib's seed)
        if multiprocessing.parent_process() is not None:
            # In a vector-env worker: Ctrl-C is the trainer's to handle (it checkpoints, then
            # closes the workers), so a terminal's SIGINT to the process group must not kill us.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _die_with_parent()
        seeds = EnvSeeds(self.seed, self.stream, self.env_index)
        kwargs = dict(self.kwargs)
        label = f"{self.env_index} ({self.env_id})"
        if self.kind == "gym":
            if self.render_mode is not None:
                kwargs["render_mode"] = self.render_mode
            env = _SeededGymReset(_make_gym(self.env_id, kwargs), seeds, label)
            return pufferlib.emulation.GymnasiumPufferEnv(env=env, buf=buf)
        if self.kind == "pettingzoo":
            env = _SeededParallelEnv(_resolve_callable(self.env_id)(**kwargs), seeds, label)
            return pufferlib.emulation.PettingZooPufferEnv(env=env, buf=buf)
        if self.kind == "mettagrid":
            return _make_mettagrid(self.env_id, kwargs, buf, seeds)
        raise ConfigError(f"env.kind={self.kind!r} is invalid")


def _make_mettagrid(preset: str, kwargs: dict[str, Any], buf: Any, seeds: EnvSeeds) -> Any:
    from mettagrid.builder.envs import make_arena, make_navigation
    from mettagrid.simulator import Simulator

    num_agents = int(kwargs.pop("num_agents", 4))
    max_steps = kwargs.pop("max_steps", None)
    if kwargs:
        raise ConfigError(f"env.kwargs has unknown MettaGrid keys {sorted(kwargs)}: expected num_agents, max_steps")
    cfg = {"arena": make_arena, "navigation": make_navigation}[preset](num_agents=num_agents)
    if max_steps is not None:
        cfg.game.max_steps = int(max_steps)
    # The time limit is a truncation (PPO bootstraps from the last observation), not the end
    # of the task; and the map is drawn from the env's own seed, so runs are reproducible.
    cfg.game.episode_truncates = True
    seed = seeds.for_reset(0)
    if hasattr(cfg.game.map_builder, "seed"):
        cfg.game.map_builder.seed = seed
    return _seeded_mettagrid_class()(Simulator(), cfg, buf=buf, seed=seed, seeds=seeds)


@functools.cache
def _seeded_mettagrid_class() -> type:
    """Built on first use: importing mettagrid costs about a second."""
    from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv

    class SeededMettaGrid(MettaGridPufferEnv):
        """Takes its own seed on explicit resets (see :mod:`metta_rl.envs.seeding`)."""

        def __init__(self, *args: Any, seeds: EnvSeeds, **kwargs: Any) -> None:
            self.seeds = seeds
            super().__init__(*args, **kwargs)

        def reset(self, seed: int | None = None):
            return super().reset(seed=self.seeds.for_reset(seed))

    return SeededMettaGrid


def make_creators(
    kind: str, env_id: str, kwargs: dict[str, Any], *, seed: int, stream: int, num_envs: int,
    render_mode: str | None = None,
) -> list[EnvCreator]:
    frozen = tuple(sorted(kwargs.items()))
    return [
        EnvCreator(kind, env_id, frozen, seed, stream, i, render_mode) for i in range(num_envs)
    ]
