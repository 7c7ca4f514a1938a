"""EnvironmentManager: owns the vectorized env, its seeding, the batch geometry and the task
curriculum (``env.tasks``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import pufferlib
import pufferlib.vector

from metta_rl.config import ConfigError, EnvConfig, VectorizationConfig
from metta_rl.core.curriculum import Curriculum
from metta_rl.core.token_grid import TokenLayout
from metta_rl.envs.factories import EnvStepError, make_creators
from metta_rl.envs.seeding import reset_key
from metta_rl.envs.tasks import shared_probabilities, view

log = logging.getLogger(__name__)

TRAIN_STREAM = 0
EVAL_STREAM = 1


class EnvError(RuntimeError):
    """An environment could not be built or failed while stepping."""


@dataclass
class EnvBatch:
    """One received batch: zero-copy views of the vector env's shared buffers.

    The views are only valid until the next ``send``: copy what must be kept.
    """

    obs: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    truncations: np.ndarray
    masks: np.ndarray
    rows: slice
    infos: list[dict[str, Any]]


class EnvironmentManager:
    """Builds ``pufferlib.vector`` over our env creators and exposes recv/send on agent rows.

    ``num_agents`` is every agent of every env (the rows of the experience buffer);
    ``agents_per_batch`` is how many of them one ``recv`` returns (all of them unless
    Multiprocessing runs asynchronously with ``batch_size < num_envs``). ``token_layout`` is
    how a MettaGrid env's token observations map onto its observation window (None for other
    envs), computed here from the config, whichever process the envs run in.

    With ``env.tasks`` it owns the :class:`~metta_rl.core.curriculum.Curriculum` too: the
    trainer hands it each epoch's rollout (:meth:`update_curriculum`) and it writes the new
    task probabilities where every env draws from (:mod:`metta_rl.envs.tasks`); its state is in
    :meth:`state_dict`. Without tasks there is none, and nothing of it runs.
    """

    def __init__(
        self,
        *,
        env: EnvConfig,
        vectorization: VectorizationConfig,
        seed: int,
        stream: int = TRAIN_STREAM,
        render_mode: str | None = None,
        rank: int = 0,
    ) -> None:
        """``rank``: this process's rank under torchrun; its envs are seeded as the global env
        indices ``rank * num_envs ...`` (rank 0's are those of a single-process run)."""
        self.env_config = env
        self.token_layout: TokenLayout | None = None
        if env.kind == "mettagrid":
            from metta_rl.envs.mettagrid_config import token_layout  # mettagrid imports slowly

            self.token_layout = token_layout(env.tasks[0] if env.tasks else env)
        self.curriculum: Curriculum | None = None
        self._task_probs: Any = None
        tasks: tuple[tuple[str, str, dict[str, Any]], ...] = ()
        if env.tasks:
            lp = env.learning_progress
            self.curriculum = Curriculum(
                names=[t.name for t in env.tasks], mode=env.curriculum, fast_rate=lp.fast_rate,
                slow_rate=lp.slow_rate, explore=lp.explore,
            )
            self._task_probs = shared_probabilities(len(env.tasks))
            tasks = tuple((t.name, t.id, dict(t.kwargs)) for t in env.tasks)
        num_envs = vectorization.num_envs
        creators = make_creators(
            env.kind, env.id, env.kwargs, seed=seed, stream=stream, num_envs=num_envs, render_mode=render_mode,
            first_index=rank * num_envs, tasks=tasks, task_probs=self._task_probs,
        )
        kwargs: dict[str, Any] = {}
        if vectorization.backend == "multiprocessing":
            backend = pufferlib.vector.Multiprocessing
            kwargs = dict(
                num_workers=vectorization.num_workers,
                batch_size=vectorization.envs_per_batch,
                zero_copy=True,
                overwork=True,
            )
        else:
            backend = pufferlib.vector.Serial
        try:
            self.vecenv = pufferlib.vector.make(
                creators,
                env_args=[[] for _ in range(num_envs)],
                env_kwargs=[{} for _ in range(num_envs)],
                backend=backend,
                num_envs=num_envs,
                **kwargs,
            )
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any env construction failure, named
            raise EnvError(f"env {env.name!r} ({env.kind}:{env.id}) could not be created: {exc}") from exc
        self.backend = vectorization.backend
        self.num_envs = num_envs
        self.observation_space: gymnasium.spaces.Box = self.vecenv.single_observation_space
        self.action_space: gymnasium.Space = self.vecenv.single_action_space
        self.num_agents: int = int(self.vecenv.num_agents)
        self.agents_per_batch: int = int(self.vecenv.agents_per_batch)
        self.single_action = isinstance(self.action_space, gymnasium.spaces.Discrete)
        self._closed = False

    def horizon(self, batch_size: int, *, ranks: int = 1) -> int:
        """Steps per agent row per epoch for a batch of ``batch_size`` agent steps (this
        process's share of ``trainer.batch_size`` when it is split over ``ranks``)."""
        if batch_size % self.num_agents:
            share = f" per rank (trainer.batch_size / {ranks} ranks)" if ranks > 1 else ""
            raise ConfigError(
                f"trainer.batch_size={batch_size * ranks} is invalid: expected {batch_size}{share} to be a multiple "
                f"of the agent count ({self.num_agents} = vectorization.num_envs x agents per env)"
                if share else
                f"trainer.batch_size={batch_size} is invalid: expected a multiple of the agent count "
                f"({self.num_agents} = vectorization.num_envs x agents per env)"
            )
        return batch_size // self.num_agents

    # ------------------------------------------------------------------ curriculum
    def update_curriculum(self, env_info: dict[str, list[float]]) -> None:
        """Fold one epoch's finished episodes (a rollout's ``env_info``: each task's
        ``<task>/episode_return`` list) into the curriculum, and publish its probabilities to
        the envs. Call it between collections (not while a background one runs): the envs of
        a serial backend then draw reproducibly."""
        if self.curriculum is None:
            return
        self.curriculum.update({name: env_info.get(f"{name}/episode_return", ()) for name in self.curriculum.names})
        view(self._task_probs)[:] = self.curriculum.probabilities

    def curriculum_metrics(self) -> dict[str, float]:
        return self.curriculum.metrics() if self.curriculum is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": self.curriculum.state_dict()} if self.curriculum is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint of a run without tasks (or from before curricula) restores nothing; one
        with a curriculum needs this run's task names."""
        if self.curriculum is None or "curriculum" not in state:
            return
        self.curriculum.load_state_dict(state["curriculum"])
        view(self._task_probs)[:] = self.curriculum.probabilities

    def reset(self, start: int = 0) -> None:
        """Start every env on episodes of its own for start point ``start`` (the epoch a run
        starts at: 0, or the resume point), see :mod:`metta_rl.envs.seeding`."""
        try:
            self.vecenv.async_reset(reset_key(start))
        except Exception as exc:
            raise self._named(exc) from exc

    def recv(self) -> EnvBatch:
        if self.backend == "multiprocessing":
            self._await_workers()
        try:
            obs, rewards, terminals, truncations, _teacher, infos, agent_ids, masks = self.vecenv.recv()
        except Exception as exc:
            raise self._named(exc) from exc
        start = int(agent_ids[0])
        return EnvBatch(obs, rewards, terminals, truncations, masks, slice(start, start + len(agent_ids)), infos)

    def send(self, actions: np.ndarray) -> None:
        """``actions`` is ``[agents, heads]``; a Discrete space takes the single column."""
        try:
            self.vecenv.send(actions[:, 0] if self.single_action else actions)
        except Exception as exc:
            raise self._named(exc) from exc

    def _named(self, exc: Exception) -> EnvError:
        """Any exception from the envs, as one :class:`EnvError` naming the env."""
        if isinstance(exc, EnvError):
            return exc
        cfg = self.env_config
        if isinstance(exc, EnvStepError):
            return EnvError(f"env {cfg.name!r}: {exc}")
        return EnvError(f"env {cfg.name!r} ({cfg.kind}:{cfg.id}) raised {type(exc).__name__}: {exc}")

    def _await_workers(self) -> None:
        """Wait for the workers the next ``recv`` needs, checking they are alive.

        pufferlib's ``recv`` spins on shared-memory flags forever if a worker has died (an env
        raised, or it was killed); here the same wait notices the dead process and names it.
        """
        vec = self.vecenv
        sems = vec.buf["semaphores"]
        need = vec.waiting_workers[: vec.workers_per_batch]
        if (sems[need] >= pufferlib.vector.MAIN).all():
            return
        next_check = time.monotonic() + 0.05
        while not (sems[need] >= pufferlib.vector.MAIN).all():
            if time.monotonic() >= next_check:
                self.check_workers()
                next_check = time.monotonic() + 0.05

    def check_workers(self) -> None:
        """Raise :class:`EnvError` naming the first dead worker and the envs it ran."""
        procs = self.vecenv.processes
        per_worker = self.num_envs // len(procs)
        for w, proc in enumerate(procs):
            if proc.exitcode is not None:
                how = f"was killed by signal {-proc.exitcode}" if proc.exitcode < 0 else f"exited with code {proc.exitcode}"
                raise EnvError(
                    f"env {self.env_config.name!r}: worker {w} (pid {proc.pid}, envs {w * per_worker}-"
                    f"{(w + 1) * per_worker - 1}) {how}; its traceback, if any, is above"
                )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.vecenv.close()
        except Exception as exc:  # noqa: BLE001 - closing must not mask the original error
            log.warning("closing env %s failed: %s", self.env_config.name, exc)
        # pufferlib terminates its workers but does not wait for them: reap them here.
        for proc in getattr(self.vecenv, "processes", ()):
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
