"""Tiny deterministic environments for the integration tests.

``TinyParallelEnv`` is a PettingZoo ParallelEnv with two agents, ``Box(4,)`` float32
observations and ``Discrete(3)`` actions. Every episode lasts exactly ``episode_length`` steps
and then all agents are truncated. An agent is rewarded 1.0 when its action equals
``target_action(obs)`` (the argmax of the first three observation entries), else 0.0, so a
policy can learn it and a random policy scores 1/3 per step.

Use it as ``env.kind=pettingzoo`` with ``env.id='tests.envs_for_tests:make_pz_env'``.
"""

from __future__ import annotations

import functools

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv

NUM_AGENTS = 2
EPISODE_LENGTH = 5


def target_action(obs: np.ndarray) -> int:
    """The rewarded action for an observation."""
    return int(np.argmax(obs[:3]))


class TinyParallelEnv(ParallelEnv):
    metadata = {"name": "tiny_parallel_v0", "render_modes": []}

    def __init__(
        self, episode_length: int = EPISODE_LENGTH, num_agents: int = NUM_AGENTS, fail_at_step: int | None = None
    ) -> None:
        self.episode_length = int(episode_length)
        self.fail_at_step = fail_at_step  # raise on this step (counted over all episodes): fault tests
        self._steps = 0
        self.possible_agents = [f"agent_{i}" for i in range(num_agents)]
        self.agents: list[str] = []
        self.render_mode = None
        self._rng = np.random.default_rng(0)
        self._t = 0
        self._obs: dict[str, np.ndarray] = {}
        self.reset_seeds: list[int | None] = []  # what reset() was called with, for tests

    @functools.lru_cache(maxsize=None)  # noqa: B019 - PettingZoo's recommended pattern
    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return gymnasium.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)

    @functools.lru_cache(maxsize=None)  # noqa: B019
    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return gymnasium.spaces.Discrete(3)

    def _observe(self) -> dict[str, np.ndarray]:
        self._obs = {
            a: self._rng.uniform(-1.0, 1.0, size=4).astype(np.float32) for a in self.possible_agents
        }
        return {a: o.copy() for a, o in self._obs.items()}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.reset_seeds.append(seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, int]):
        self._steps += 1
        if self.fail_at_step is not None and self._steps >= self.fail_at_step:
            raise RuntimeError(f"tiny env failed on purpose at step {self._steps}")
        rewards = {
            a: float(int(actions[a]) == target_action(self._obs[a])) if a in actions else 0.0 for a in self.agents
        }
        self._t += 1
        obs = self._observe()
        truncated = self._t >= self.episode_length
        terminations = {a: False for a in self.agents}
        truncations = {a: truncated for a in self.agents}
        infos = {a: {} for a in self.agents}
        if truncated:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def render(self) -> None:
        return None

    def close(self) -> None:
        pass


def make_pz_env(**kwargs) -> TinyParallelEnv:
    """Module-level factory: ``env.id='tests.envs_for_tests:make_pz_env'``."""
    return TinyParallelEnv(**kwargs)
