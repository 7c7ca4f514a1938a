"""Environment factories: one picklable creator per env, for ``pufferlib.vector.make``.

Gymnasium and PettingZoo envs go through pufferlib's emulation layer; MettaGrid is a native
PufferEnv. Seeding is ours, not pufferlib's (see :mod:`metta_rl.envs.seeding`): on each explicit
reset every env takes its own seed from (run seed, stream, env index, start point), and it
continues its own RNG on the automatic resets between episodes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import pufferlib.emulation

from metta_rl.config import ConfigError
from metta_rl.envs.seeding import EnvSeeds
from metta_rl.envs.tasks import TaskDraw, TaskSwitchingGym
from metta_rl.envs.user_code import import_user_module, one_line, resolve_callable


def check_env_id(kind: str, env_id: str, kwargs: dict[str, Any] | None = None, *, field: str = "env.id") -> None:
    """Fail before training, with one line naming ``field``, for an env id that cannot be built.

    A runtime check (it imports user modules), run at set-up by
    :func:`metta_rl.envs.checks.check_runtime`, never when a config is built. A gym
    ``module:callable`` is called once with ``kwargs`` (and the env closed) to check that it
    returns a ``gymnasium.Env``; a registered id or an Env class is not built. A MettaGrid
    task or ``module:callable`` is called with ``kwargs`` to check that it returns a
    ``MettaGridConfig`` (see :func:`metta_rl.envs.mettagrid_config.check_mettagrid_id`)."""
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
        module = import_user_module(module_name, env_id, field)
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
            env = make_gym(env_id, dict(kwargs or {}), field=field)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's callable may raise anything
            detail = one_line(exc)
            kwargs_field = field.rpartition(".")[0] + ".kwargs"
            raise ConfigError(
                f"{field}={env_id!r} is invalid: calling it with {kwargs_field} raised {detail}"
            ) from None
        env.close()
    elif kind == "pettingzoo":
        resolve_callable(env_id, field=field)
    elif kind == "mettagrid":
        from metta_rl.envs.mettagrid_config import check_mettagrid_id

        check_mettagrid_id(env_id, dict(kwargs or {}), field=field)


def make_gym(env_id: str, kwargs: dict[str, Any], *, field: str = "env.id") -> gymnasium.Env:
    """A Gymnasium env from a registered id, from Gymnasium's ``module:EnvId`` (importing the
    module registers the id), or from ``module:callable`` returning a ``gymnasium.Env``.

    The module is imported here, in the process that builds the env, so a Multiprocessing
    worker registers the id itself whatever the start method."""
    module_name, _, name = env_id.partition(":")
    if not name:
        return gymnasium.make(env_id, **kwargs)
    import_user_module(module_name, env_id, field)
    if name in gymnasium.registry:
        return gymnasium.make(env_id, **kwargs)
    env = resolve_callable(env_id, field=field, what="a Gymnasium env")(**kwargs)
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
    """Builds one env for pufferlib.vector; picklable, so Multiprocessing workers can call it.

    ``tasks`` (a curriculum, ``env.tasks``): ``(name, id, kwargs)`` per task, drawn at each reset
    with the shared ``task_probs`` (:mod:`metta_rl.envs.tasks`); none: the one env ``env_id``."""

    kind: str
    env_id: str
    kwargs: tuple[tuple[str, Any], ...]
    seed: int
    stream: int
    env_index: int
    render_mode: str | None = None
    tasks: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...] = ()
    task_probs: Any = field(default=None, compare=False)

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
            if self.tasks:
                render = {} if self.render_mode is None else {"render_mode": self.render_mode}
                draw = TaskDraw([name for name, _, _ in self.tasks], self.task_probs)
                gym_env: gymnasium.Env = TaskSwitchingGym(
                    [make_gym(task_id, {**dict(task_kwargs), **render}) for _, task_id, task_kwargs in self.tasks],
                    draw,
                )
            else:
                if self.render_mode is not None:
                    kwargs["render_mode"] = self.render_mode
                gym_env = make_gym(self.env_id, kwargs)
            env = _SeededGymReset(gym_env, seeds, label)
            return pufferlib.emulation.GymnasiumPufferEnv(env=env, buf=buf)
        if self.kind == "pettingzoo":
            env = _SeededParallelEnv(resolve_callable(self.env_id)(**kwargs), seeds, label)
            return pufferlib.emulation.PettingZooPufferEnv(env=env, buf=buf)
        if self.kind == "mettagrid":
            from metta_rl.envs.mettagrid_env import make_mettagrid_env  # mettagrid imports slowly

            if self.tasks:
                draw = TaskDraw([name for name, _, _ in self.tasks], self.task_probs)
                tasks = [(task_id, dict(task_kwargs)) for _, task_id, task_kwargs in self.tasks]
                return make_mettagrid_env(self.env_id, kwargs, seeds=seeds, buf=buf, tasks=tasks, draw=draw)
            return make_mettagrid_env(self.env_id, kwargs, seeds=seeds, buf=buf)
        raise ConfigError(f"env.kind={self.kind!r} is invalid")


def make_creators(
    kind: str, env_id: str, kwargs: dict[str, Any], *, seed: int, stream: int, num_envs: int,
    render_mode: str | None = None, first_index: int = 0,
    tasks: tuple[tuple[str, str, dict[str, Any]], ...] = (), task_probs: Any = None,
) -> list[EnvCreator]:
    """``first_index``: the index of the first env (rank r of a torchrun launch has envs
    ``r * num_envs ...``, so every env of every rank has a seed of its own). ``tasks``:
    ``(name, id, kwargs)`` of a curriculum's tasks, drawn with the shared ``task_probs``."""
    frozen = tuple(sorted(kwargs.items()))
    frozen_tasks = tuple((name, task_id, tuple(sorted(kw.items()))) for name, task_id, kw in tasks)
    return [
        EnvCreator(kind, env_id, frozen, seed, stream, first_index + i, render_mode, frozen_tasks, task_probs)
        for i in range(num_envs)
    ]
