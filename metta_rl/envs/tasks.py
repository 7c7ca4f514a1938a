"""The env side of a task curriculum (``env.tasks``): draw a task at each reset, report it.

The trainer's :class:`~metta_rl.core.curriculum.Curriculum` decides the probabilities; the
envs draw. The probabilities live in shared memory (:func:`shared_probabilities`, a
``multiprocessing.RawArray`` handed to every env creator), written by the main process between
rollouts and read by each env at its resets, in this process (Serial) or in a worker
(Multiprocessing) alike. Each env draws from an RNG of its own, seeded from its own reset seed
(:mod:`metta_rl.envs.seeding`): with the serial backend, a run's task sequence is a function of
its seed. (With Multiprocessing a reset during the step still in flight when the probabilities
change may see either the old or the new ones.)

On the step that ends an episode the env reports, in that step's info, the task and the
episode's outcome nested under the task's name (``{"<task>": {"episode_return": ...}}``), so the
rollout's env stats come out as ``env/<task>/...`` and the curriculum reads its returns there.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np

_TASK_DRAW_TAG = 0x7A5C  # separates the task-draw RNG from the env's own reset seed


def shared_probabilities(n: int) -> Any:
    """A shared array of ``n`` task probabilities, uniform to start with."""
    probs = multiprocessing.RawArray("d", n)
    view(probs)[:] = 1.0 / n
    return probs


def view(probs: Any) -> np.ndarray:
    """The float64 numpy view of a :func:`shared_probabilities` array (no copy)."""
    return np.frombuffer(probs, dtype=np.float64)


class TaskDraw:
    """One env's task draws: its RNG, re-seeded at each explicit reset, and the shared
    probabilities, read at each draw."""

    def __init__(self, names: Sequence[str], probs: Any) -> None:
        self.names = tuple(names)
        self._probs = view(probs)
        self._rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TASK_DRAW_TAG]))

    def draw(self) -> int:
        p = self._probs.copy()  # one read: the main process may write meanwhile
        cumulative = np.cumsum(p)
        return min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")), len(p) - 1)


class TaskSwitchingGym(gymnasium.Env):
    """One Gymnasium env per task; each reset draws which one plays the next episode.

    Every task env gets a seed of its own at each explicit reset (used at its next reset), so
    a task's episodes are reproducible whichever task played before it."""

    def __init__(self, envs: Sequence[gymnasium.Env], draw: TaskDraw) -> None:
        self.envs = list(envs)
        self._draw = draw
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.metadata = self.envs[0].metadata
        self.render_mode = self.envs[0].render_mode
        self._task = 0
        self._pending: list[int | None] = [None] * len(self.envs)
        self._return = 0.0
        self._length = 0

    @property
    def task(self) -> str:
        return self._draw.names[self._task]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._draw.reseed(seed)
            self._pending = [int(s) for s in np.random.SeedSequence([int(seed), len(self.envs)]).generate_state(
                len(self.envs))]
        self._task = self._draw.draw()
        task_seed, self._pending[self._task] = self._pending[self._task], None
        self._return, self._length = 0.0, 0
        return self.envs[self._task].reset(seed=task_seed, options=options)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.envs[self._task].step(action)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            info = {**info, self.task: {"episode_return": self._return, "episode_length": self._length}}
        return obs, reward, terminated, truncated, info

    def render(self):
        return self.envs[self._task].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()
