"""RolloutManager against real envs: buffer geometry, the dummy step pufferlib leaves after
every episode end, the column carried between epochs, episode bookkeeping, and the recurrent
state that training replays from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metta_rl.config import EnvConfig, PolicyConfig, VectorizationConfig
from metta_rl.managers.environment import EnvironmentManager
from metta_rl.core.policy import ActorCritic, log_prob
from metta_rl.core.progress import TrainingProgress
from metta_rl.managers.rollout import RolloutManager
from metta_rl.trainer import Trainer
from tests.envs_for_tests import EPISODE_LENGTH, target_action
from tests.integration_utils import PZ_ENV, make_config

torch.set_num_threads(1)

CPU = torch.device("cpu")
HORIZON = 40


class Rollout:
    """An env, a policy and a RolloutManager, closed by the fixture."""

    def __init__(self, env: EnvConfig, vec: VectorizationConfig, horizon: int, policy: PolicyConfig, seed: int = 0):
        torch.manual_seed(seed)
        self.env = EnvironmentManager(env=env, vectorization=vec, seed=seed)
        self.policy = ActorCritic(obs_space=self.env.observation_space, action_space=self.env.action_space, config=policy)
        self.rm = RolloutManager(env=self.env, policy=self.policy, horizon=horizon, device=CPU)
        self.buf = self.rm.buffer

    def collect(self):
        return self.rm.collect(self.policy, TrainingProgress())

    def columns(self) -> dict[str, np.ndarray]:
        """Copies of every per-step buffer tensor."""
        b = self.buf
        return {
            name: getattr(b, name).clone().numpy()
            for name in ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "valid", "first")
        }


@pytest.fixture
def cartpole():
    r = Rollout(EnvConfig(), VectorizationConfig(num_envs=4), HORIZON, PolicyConfig(hidden_sizes=[16]))
    yield r
    r.env.close()


def check_episode_boundaries(buf, *, first_epoch: bool) -> None:
    """The dummy-step rules, for every row and column of a freshly collected buffer."""
    T = buf.horizon
    done = (buf.terminated[:, :T] + buf.truncated[:, :T]).numpy() > 0
    valid = buf.valid.numpy()
    first = buf.first.numpy()
    assert set(np.unique(valid)) <= {0.0, 1.0} and set(np.unique(first)) <= {0.0, 1.0}
    rows, cols = np.nonzero(done)
    assert len(rows) > 0, "the horizon should contain episode ends"
    for r, t in zip(rows, cols):
        assert valid[r, t + 1] == 0, f"row {r}: column {t + 1} holds a final obs and must be invalid"
        if t + 2 <= T:
            assert first[r, t + 2] == 1, f"row {r}: column {t + 2} starts an episode"
    # ... and the converse: nothing else is invalid or first.
    for t in range(1, T + 1):
        np.testing.assert_array_equal(valid[:, t], 1.0 - done[:, t - 1])
    for t in range(2, T + 1):
        np.testing.assert_array_equal(first[:, t], done[:, t - 2].astype(np.float32))
    # The reset step that follows a done step is never done itself.
    assert not (done[:, 1:] & done[:, :-1]).any()
    if first_epoch:
        assert (valid[:, 0] == 1).all() and (first[:, 0] == 1).all() and (first[:, 1] == 0).all()


def test_collect_fills_every_row_to_horizon_plus_one(cartpole):
    result = cartpole.collect()
    buf = cartpole.buf
    assert buf.rows == 4 and buf.horizon == HORIZON
    assert buf.obs.shape == (4, HORIZON + 1, 4)
    assert (buf.col == HORIZON + 1).all() and buf.full
    assert result.agent_steps == buf.rows * buf.horizon == 4 * HORIZON
    assert result.env_seconds > 0 and result.inference_seconds > 0
    assert set(np.unique(buf.actions.numpy())) <= {0, 1}
    assert (buf.logprobs <= 0).all() and torch.isfinite(buf.values).all()


def test_dummy_steps_and_episode_starts(cartpole):
    cartpole.collect()
    check_episode_boundaries(cartpole.buf, first_epoch=True)
    cartpole.collect()
    check_episode_boundaries(cartpole.buf, first_epoch=False)


def test_cartpole_rewards_are_one_on_valid_steps_zero_on_dummy_steps(cartpole):
    for _ in range(2):
        cartpole.collect()
        T = cartpole.buf.horizon
        rewards = cartpole.buf.rewards[:, :T].numpy()
        valid = cartpole.buf.valid[:, :T].numpy() == 1
        assert (rewards[valid] == 1.0).all()
        assert (rewards[~valid] == 0.0).all()
        assert (~valid).any()


def test_episode_returns_equal_lengths_and_match_the_buffer(cartpole):
    tracker = cartpole.rm.episodes
    valid_outcomes = 0
    finished_lengths = 0
    episodes = 0
    for _ in range(2):
        result = cartpole.collect()
        buf = cartpole.buf
        T = buf.horizon
        done = (buf.terminated[:, :T] + buf.truncated[:, :T]) > 0
        assert result.episodes == len(result.episode_lengths) == int(done.sum()) > 0
        # CartPole pays 1 per step: a return is the episode's length.
        assert result.episode_returns == [float(n) for n in result.episode_lengths]
        assert min(result.episode_lengths) >= 8
        assert max(result.episode_lengths) <= 500
        valid_outcomes += int(buf.valid[:, :T].sum())
        finished_lengths += sum(result.episode_lengths)
        episodes += result.episodes
        # Every action taken in a real state is counted once: finished episodes + running ones.
        assert valid_outcomes == finished_lengths + int(tracker.lengths.sum())
    assert episodes >= 4


def test_last_column_is_carried_to_column_zero(cartpole):
    cartpole.collect()
    before = cartpole.columns()
    T = HORIZON
    result = cartpole.collect()
    after = cartpole.columns()
    for name in ("obs", "actions", "logprobs", "values", "valid", "first"):
        np.testing.assert_array_equal(after[name][:, 0], before[name][:, T], err_msg=name)
    assert result.agent_steps == 4 * T
    assert (cartpole.buf.col == T + 1).all()
    # Column 0's outcome (the action taken at the old column T) is recorded in the new epoch.
    done0 = after["terminated"][:, 0] + after["truncated"][:, 0] > 0
    np.testing.assert_array_equal(after["rewards"][:, 0], np.where(after["valid"][:, 0] == 1, 1.0, 0.0))
    np.testing.assert_array_equal(after["valid"][:, 1], 1.0 - done0)


def test_async_multiprocessing_rollout():
    r = Rollout(
        EnvConfig(),
        VectorizationConfig(backend="multiprocessing", num_envs=4, num_workers=2, batch_size=2),
        HORIZON,
        PolicyConfig(hidden_sizes=[16]),
    )
    try:
        assert r.env.agents_per_batch == 2 and r.buf.rows == 4
        r.collect()
        assert (r.buf.col == HORIZON + 1).all()
        check_episode_boundaries(r.buf, first_epoch=True)
        before = r.columns()
        r.collect()
        check_episode_boundaries(r.buf, first_epoch=False)
        for name in ("obs", "actions", "values"):
            np.testing.assert_array_equal(getattr(r.buf, name)[:, 0].numpy(), before[name][:, HORIZON])
        valid = r.buf.valid[:, :HORIZON].numpy() == 1
        assert (r.buf.rewards[:, :HORIZON].numpy()[valid] == 1.0).all()
    finally:
        r.env.close()
    assert not any(p.is_alive() for p in r.env.vecenv.processes)


def test_pettingzoo_buffer_alignment_of_obs_actions_and_rewards():
    """Fixed 5-step episodes make the pattern exact: 5 live steps, the final obs (dummy), then
    the next episode's first obs. And each stored reward is the reward for the stored
    action in the stored observation."""
    T = 16
    r = Rollout(EnvConfig(**PZ_ENV), VectorizationConfig(num_envs=2), T, PolicyConfig(hidden_sizes=[16]))
    try:
        result = r.collect()
        buf = r.buf
        assert buf.rows == 4
        period = EPISODE_LENGTH + 1
        done_cols = [t for t in range(T) if t % period == EPISODE_LENGTH - 1]
        for name, expected in (
            ("truncated", [float(t in done_cols) for t in range(T)]),
            ("terminated", [0.0] * T),
            ("valid", [float(t % period != EPISODE_LENGTH) for t in range(T + 1)]),
            ("first", [float(t % period == 0) for t in range(T + 1)]),
        ):
            values = getattr(buf, name)[:, : len(expected)].numpy()
            for row in range(4):
                assert values[row].tolist() == expected, (name, row)
        assert result.episode_lengths == [EPISODE_LENGTH] * (4 * len(done_cols))
        obs = buf.obs.numpy()
        actions = buf.actions.numpy()[..., 0]
        rewards = buf.rewards.numpy()
        valid = buf.valid.numpy()
        for row in range(4):
            for t in range(T):
                if valid[row, t]:
                    assert rewards[row, t] == float(actions[row, t] == target_action(obs[row, t])), (row, t)
                else:
                    assert rewards[row, t] == 0.0
        # All rows finish together and are reported in row order: episode k of row r is
        # result k * 4 + r, and its return is the sum of its stored rewards.
        for k in range(len(done_cols)):
            for row in range(4):
                stored = rewards[row, k * period : k * period + EPISODE_LENGTH].sum()
                assert result.episode_returns[k * 4 + row] == pytest.approx(stored)
    finally:
        r.env.close()


# ------------------------------------------------------------------------------ LSTM
LSTM_POLICY = {"hidden_sizes": [16], "shared_trunk": True, "lstm": True, "lstm_hidden_size": 16}


def replay_matches_buffer(policy: ActorCritic, buf) -> None:
    """Training replays each row from ``state0`` with resets at ``first``: with the policy that
    collected the data it must reproduce the stored values and log-probabilities."""
    T = buf.horizon
    with torch.no_grad():
        logits, values = policy.forward_sequence(buf.obs[:, : T + 1], buf.state0, buf.first[:, : T + 1])
        logprobs = log_prob(logits, buf.actions[:, : T + 1], policy.nvec)
    torch.testing.assert_close(values, buf.values[:, : T + 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logprobs, buf.logprobs[:, : T + 1], atol=1e-5, rtol=1e-5)


def test_lstm_collect_state_carry_and_update(tmp_path):
    cfg = make_config(
        policy=LSTM_POLICY,
        trainer={"batch_size": 4 * HORIZON, "minibatch_size": 2 * HORIZON, "update_epochs": 2},
    )
    with Trainer(cfg, run_dir=tmp_path / "lstm", console=False) as trainer:
        rm, policy, buf = trainer.rollout, trainer.policy, trainer.rollout.buffer
        assert buf.state0 is not None and buf.state0[0].shape == (4, 16)
        rm.collect(policy, trainer.progress)
        assert (buf.state0[0] == 0).all() and (buf.state0[1] == 0).all()  # before any step
        assert buf.next_state0[0].abs().sum() > 0
        replay_matches_buffer(policy, buf)

        stashed = tuple(s.clone() for s in buf.next_state0)
        rm.collect(policy, trainer.progress)  # no update in between: same policy
        torch.testing.assert_close(buf.state0[0], stashed[0], rtol=0, atol=0)
        torch.testing.assert_close(buf.state0[1], stashed[1], rtol=0, atol=0)
        check_episode_boundaries(buf, first_epoch=False)
        replay_matches_buffer(policy, buf)

        stats = trainer.training.update(policy, trainer.optimizer, buf, trainer.progress)
        assert stats.minibatches == 2 * 2 and stats.update_epochs == 2
        for value in (stats.policy_loss, stats.value_loss, stats.approx_kl, stats.grad_norm):
            assert np.isfinite(value)

        # The ordinary epoch path works with the recurrent policy too.
        stashed = tuple(s.clone() for s in buf.next_state0)
        metrics = trainer.train_epoch()
        torch.testing.assert_close(buf.state0[0], stashed[0], rtol=0, atol=0)
        assert np.isfinite(metrics["losses/policy_loss"])
        assert metrics["agent_step"] == 4 * HORIZON
