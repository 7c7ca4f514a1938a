"""Tiny deterministic environments for the integration tests.

``TinyParallelEnv`` is a PettingZoo ParallelEnv with two agents, ``Box(4,)`` float32
observations and ``Discrete(3)`` actions. Every episode lasts exactly ``episode_length`` steps
and then all agents are truncated. An agent is rewarded 1.0 when its action equals
``target_action(obs)`` (the argmax of the first three observation entries), else 0.0, so a
policy can learn it and a random policy scores 1/3 per step.

Use it as ``env.kind=pettingzoo`` with ``env.id='tests.envs_for_tests:make_pz_env'``.

Gymnasium envs (registered when this module is imported; use ``env.kind=gym`` with the id):

- ``MemoryEnv`` (``MEMORY_ID``): a cue bit shown only at the first step, then ``delay`` blank
  steps, then a decision step that pays 1 iff the action equals the cue. Only a policy with
  memory can score above 1/2 per episode.
- ``TwoHeadEnv`` (``TWO_HEAD_ID``): ``MultiDiscrete([3, 2])`` actions; each head is paid for its
  own correct answer, so only a policy that learns both heads reaches the maximum.
- ``EpisodeEndsEnv`` (``EPISODE_ENDS_ID``): alternates episodes that terminate and episodes cut by
  a time limit, and writes the step count and the episode kind into every observation, so a test
  can read from a stored observation which steps ended an episode and how.
"""

from __future__ import annotations

import functools
import os

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


# ---------------------------------------------------------------------- Gymnasium envs
MEMORY_ID = "MettaRLTestMemory-v0"
TWO_HEAD_ID = "MettaRLTestTwoHead-v0"
EPISODE_ENDS_ID = "MettaRLTestEpisodeEnds-v0"


class MemoryEnv(gymnasium.Env):
    """Remember a cue: observation ``[cue, 0, 0]`` at t=0 (cue +1 or -1, drawn from the env's RNG),
    ``delay`` blank observations ``[0, 0, 0]``, then the decision observation ``[0, 0, 1]``. The
    action taken on the decision observation ends the episode (terminated) and pays 1.0 iff it is
    the cue (action 1 for +1, action 0 for -1); every other action pays 0. A policy without
    memory sees the same decision observation in every episode, so it scores 1/2 on average.

    ``episodes`` records ``(cue, actions)`` of every finished episode, for tests of behaviour.
    """

    metadata = {"render_modes": []}

    def __init__(self, delay: int = 2) -> None:
        self.delay = int(delay)
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.episodes: list[tuple[int, tuple[int, ...]]] = []
        self.cue = 0
        self._t = 0
        self._actions: list[int] = []

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if self._t == 0:
            obs[0] = 1.0 if self.cue else -1.0
        elif self._t == self.delay + 1:
            obs[2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(0, 2))
        self._t = 0
        self._actions = []
        return self._obs(), {}

    def step(self, action):
        action = int(action)
        self._actions.append(action)
        if self._t == self.delay + 1:
            self.episodes.append((self.cue, tuple(self._actions)))
            return np.zeros(3, dtype=np.float32), float(action == self.cue), True, False, {}
        self._t += 1
        return self._obs(), 0.0, False, False, {}


def two_head_targets(obs: np.ndarray) -> tuple[int, int]:
    """The rewarded ``(head 0, head 1)`` actions of a ``TwoHeadEnv`` observation."""
    return int(np.argmax(obs[:3])), int(obs[3] > 0)


class TwoHeadEnv(gymnasium.Env):
    """``MultiDiscrete([3, 2])`` actions on random ``Box(4)`` observations: reward
    ``[a0 == argmax(obs[:3])] + [a1 == (obs[3] > 0)]`` per step, ``length`` steps per episode
    (then truncated). Random actions earn 1/3 + 1/2 per step, a perfect policy 2."""

    metadata = {"render_modes": []}
    NVEC = (3, 2)
    RANDOM_REWARD_PER_STEP = 1 / 3 + 1 / 2
    MAX_REWARD_PER_STEP = 2.0

    def __init__(self, length: int = 8) -> None:
        self.length = int(length)
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = gymnasium.spaces.MultiDiscrete(list(self.NVEC))
        self._obs = np.zeros(4, dtype=np.float32)
        self._t = 0

    def _draw(self) -> np.ndarray:
        self._obs = self.np_random.uniform(-1.0, 1.0, size=4).astype(np.float32)
        return self._obs.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self._draw(), {}

    def step(self, action):
        a0, a1 = (int(a) for a in np.asarray(action).reshape(-1))
        t0, t1 = two_head_targets(self._obs)
        reward = float(a0 == t0) + float(a1 == t1)
        self._t += 1
        return self._draw(), reward, False, self._t >= self.length, {}


class EpisodeEndsEnv(gymnasium.Env):
    """Episodes alternate: even-numbered ones (per env, from 0) terminate after
    ``TERMINATE_AFTER`` steps, odd-numbered ones are truncated by a time limit after
    ``TRUNCATE_AFTER`` steps. Observation ``[steps so far / 10, 1 if this episode is cut by the
    time limit else 0, noise, noise]`` (noise from the env's RNG, so values differ per step), and
    the final observation of an episode is that of its last step (steps = its length).
    Reward ``0.5 + 0.25 * action + 0.1 * steps so far``, never zero."""

    metadata = {"render_modes": []}
    TERMINATE_AFTER = 3
    TRUNCATE_AFTER = 5

    def __init__(self) -> None:
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self._episode = -1
        self._t = 0

    @property
    def truncates(self) -> bool:
        return self._episode % 2 == 1

    def _obs(self) -> np.ndarray:
        noise = self.np_random.uniform(-1.0, 1.0, size=2)
        return np.array([self._t / 10, float(self.truncates), *noise], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._episode += 1
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        reward = 0.5 + 0.25 * int(action) + 0.1 * self._t
        self._t += 1
        end = self.TRUNCATE_AFTER if self.truncates else self.TERMINATE_AFTER
        over = self._t >= end
        return self._obs(), reward, over and not self.truncates, over and self.truncates, {}


class _FailsOnRank(gymnasium.Wrapper):
    def __init__(self, env: gymnasium.Env, *, rank: int, at_step: int) -> None:
        super().__init__(env)
        self.fails = int(os.environ.get("RANK", 0)) == rank
        self.at_step = at_step
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.fails and self.steps >= self.at_step:
            raise RuntimeError(f"test env fails on rank {os.environ.get('RANK')} at step {self.steps}")
        return self.env.step(action)


def cartpole_failing_on_rank(rank: int = 1, at_step: int = 100) -> gymnasium.Env:
    """CartPole that raises at step ``at_step`` in the process of torchrun rank ``rank`` only:
    the distributed tests' failing rank."""
    return _FailsOnRank(gymnasium.make("CartPole-v1"), rank=rank, at_step=at_step)


def register_gym_envs() -> None:
    """Register the Gymnasium test envs (idempotent; runs when this module is imported)."""
    for env_id, entry_point in (
        (MEMORY_ID, MemoryEnv),
        (TWO_HEAD_ID, TwoHeadEnv),
        (EPISODE_ENDS_ID, EpisodeEndsEnv),
    ):
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)


register_gym_envs()
