"""Asynchronous Multiprocessing with several workers per batch: every stored step is aligned.

8 TinyParallelEnv envs (2 agents each, 16 agent rows) on 4 workers, 4 envs (2 workers, 8 rows)
per batch: the rollout receives rows 0-7 and 8-15 in turn while the other half steps. The env
pays 1 exactly when the action equals ``argmax(obs[:3])`` of the observation it was taken in,
so the buffer is aligned iff, at every stored real step, the stored reward is 1 exactly when the
stored action matches the stored observation. Any mix-up of rows within or across batches, or
of columns, breaks that on about 2 steps in 3 (a random policy hits 1 in 3).
"""

from __future__ import annotations

import numpy as np
import torch

from metta_rl.config import EnvConfig, PolicyConfig, VectorizationConfig
from metta_rl.core.policy import ActorCritic
from metta_rl.core.progress import TrainingProgress
from metta_rl.managers.environment import EnvironmentManager
from metta_rl.managers.rollout import RolloutManager
from tests.envs_for_tests import EPISODE_LENGTH, NUM_AGENTS
from tests.integration_utils import PZ_ENV

torch.set_num_threads(1)

NUM_ENVS, NUM_WORKERS, ENVS_PER_BATCH = 8, 4, 4
ROWS = NUM_ENVS * NUM_AGENTS
HORIZON = 2 * (EPISODE_LENGTH + 1)  # two whole episodes and their dummy steps per row


def check_alignment(buf) -> int:
    """Assert obs, action and reward agree at every stored real step; the number checked."""
    T = buf.horizon
    obs = buf.obs[:, :T].numpy()
    actions = buf.actions[:, :T, 0].numpy()
    rewards = buf.rewards[:, :T].numpy()
    valid = buf.valid[:, :T].numpy() == 1
    expected = (actions == np.argmax(obs[..., :3], axis=-1)).astype(np.float32)
    bad = np.argwhere(valid & (rewards != expected))
    assert len(bad) == 0, f"{len(bad)} misaligned (row, column) steps, first {bad[:5].tolist()}"
    # A dummy step (the action on a final observation) is discarded: the env paid nothing.
    assert (rewards[~valid] == 0).all()
    # Not vacuous: both outcomes occur.
    assert 0 < expected[valid].sum() < valid.sum()
    return int(valid.sum())


def check_episode_pattern(buf, *, first_epoch: bool) -> None:
    """Every row: 5 live steps, the final observation (invalid), the next episode's first."""
    T = buf.horizon
    period = EPISODE_LENGTH + 1
    offset = 0 if first_epoch else T  # the carried column continues the previous epoch's pattern
    cols = np.arange(offset, offset + T + 1)
    valid = (cols % period != EPISODE_LENGTH).astype(np.float32)
    first = (cols % period == 0).astype(np.float32)
    truncated = (cols[:T] % period == EPISODE_LENGTH - 1).astype(np.float32)
    for row in range(buf.rows):
        np.testing.assert_array_equal(buf.valid[row].numpy(), valid, err_msg=f"valid, row {row}")
        np.testing.assert_array_equal(buf.first[row].numpy(), first, err_msg=f"first, row {row}")
        np.testing.assert_array_equal(buf.truncated[row, :T].numpy(), truncated, err_msg=f"truncated, row {row}")
    assert (buf.terminated == 0).all()


def test_async_multiprocessing_stores_aligned_obs_actions_and_rewards():
    vec = VectorizationConfig(
        backend="multiprocessing", num_envs=NUM_ENVS, num_workers=NUM_WORKERS, batch_size=ENVS_PER_BATCH
    )
    torch.manual_seed(0)
    env = EnvironmentManager(env=EnvConfig(**PZ_ENV), vectorization=vec, seed=0)
    try:
        assert env.num_agents == ROWS and env.agents_per_batch == ENVS_PER_BATCH * NUM_AGENTS == ROWS // 2
        policy = ActorCritic(
            obs_space=env.observation_space, action_space=env.action_space, config=PolicyConfig(hidden_sizes=[16])
        )
        rollout = RolloutManager(env=env, policy=policy, horizon=HORIZON, device=torch.device("cpu"))
        buf = rollout.buffer
        checked = 0
        for epoch in range(2):
            result = rollout.collect(policy, TrainingProgress(epoch=epoch))
            assert (buf.col == HORIZON + 1).all()
            check_episode_pattern(buf, first_epoch=epoch == 0)
            checked += check_alignment(buf)
            # Two episodes per row per epoch, every return the sum of that row's stored rewards.
            assert len(result.episode_returns) == 2 * ROWS
            assert sum(result.episode_returns) == float(buf.rewards[:, :HORIZON].sum())
        assert checked == 2 * ROWS * 2 * EPISODE_LENGTH
    finally:
        env.close()
    assert not any(p.is_alive() for p in env.vecenv.processes)
