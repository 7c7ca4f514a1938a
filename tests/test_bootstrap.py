"""The truncation bootstrap, checked on the returns of a real rollout buffer.

``EpisodeEndsEnv`` alternates episodes that terminate (after 3 steps) and episodes cut by a time
limit (after 5 steps), and writes the step count and the episode kind into every observation.
So from the stored observations alone the test knows, for every column, whether it is a real
step, a final observation (the dummy step pufferlib leaves before the reset), and which steps
ended their episode and how. It then checks the returns the update computed, captured from the
update's own GAE call, against the lambda-return definition:

    terminated at t:       R_t = r_t
    truncated at t:        R_t = r_t + gamma * V(final obs), the value stored in column t + 1
    last column, running:  R_t = r_t + gamma * V(obs in column T)
    otherwise:             R_t = r_t + gamma * ((1 - lambda) * V_{t+1} + lambda * R_{t+1})

An episode's returns never read the next episode's rewards or values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metta_rl import Trainer
from metta_rl.managers import training as training_module
from tests.envs_for_tests import EPISODE_ENDS_ID, EpisodeEndsEnv
from tests.integration_utils import make_config

torch.set_num_threads(1)

GAMMA, LAMBDA = 0.9, 0.8
NUM_ENVS, HORIZON = 4, 16  # episodes of 3 and 5 steps (+ a dummy step each): some cross epochs


def ground_truth(obs: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """From observations ``[rows, cols, 4]`` and actions ``[rows, cols]``: which columns are real
    steps, which ended an episode by termination or truncation, and the reward each earned."""
    steps = np.rint(obs[..., 0] * 10).astype(int)
    truncating = obs[..., 1] == 1
    end = np.where(truncating, EpisodeEndsEnv.TRUNCATE_AFTER, EpisodeEndsEnv.TERMINATE_AFTER)
    valid = steps < end  # steps == end: the episode's final observation
    last = valid & (steps == end - 1)
    return {
        "valid": valid,
        "terminated": last & ~truncating,
        "truncated": last & truncating,
        "rewards": 0.5 + 0.25 * actions + 0.1 * steps,
    }


def expected_returns(rewards, values, terminated, truncated, valid) -> np.ndarray:
    """Lambda-returns by their definition, per row, backwards (NaN at dummy steps)."""
    rows, T = rewards.shape
    out = np.full((rows, T), np.nan)
    for r in range(rows):
        for t in range(T - 1, -1, -1):
            if not valid[r, t]:
                continue
            if terminated[r, t]:
                out[r, t] = rewards[r, t]
            elif truncated[r, t] or t == T - 1:
                out[r, t] = rewards[r, t] + GAMMA * values[r, t + 1]
            else:
                assert valid[r, t + 1], "a running episode continues in the next column"
                out[r, t] = rewards[r, t] + GAMMA * ((1 - LAMBDA) * values[r, t + 1] + LAMBDA * out[r, t + 1])
    return out


def test_truncation_bootstraps_from_the_final_observation_and_termination_does_not(tmp_path, monkeypatch):
    captured = []
    real_gae = training_module.compute_gae

    def spy(*args, **kwargs):
        result = real_gae(*args, **kwargs)
        captured.append(result)
        return result

    monkeypatch.setattr(training_module, "compute_gae", spy)
    batch = NUM_ENVS * HORIZON
    cfg = make_config(
        env={"name": "episode_ends", "kind": "gym", "id": EPISODE_ENDS_ID, "kwargs": {}},
        vectorization={"num_envs": NUM_ENVS},
        trainer={"total_timesteps": 2 * batch, "batch_size": batch, "minibatch_size": batch, "update_epochs": 1},
        ppo={"gamma": GAMMA, "gae_lambda": LAMBDA},
        evaluation={"enabled": False},
        checkpoint={"interval": 0, "keep_last": 1},
        logging={"console": "off", "system_monitor": False, "heartbeat": False},
    )
    kinds = {"terminated": 0, "truncated": 0}
    with Trainer(cfg, run_dir=tmp_path / "run", console=False) as trainer:
        policy, buf, T = trainer.policy, trainer.rollout.buffer, HORIZON
        for epoch in range(2):  # the second epoch starts from the carried column
            trainer.rollout.collect(policy, trainer.progress)
            obs = buf.obs.numpy().copy()
            actions = buf.actions[..., 0].numpy().copy()
            values = buf.values.numpy().copy()
            with torch.no_grad():  # the stored values are V of the stored observations
                _, fresh, _ = policy.forward_step(buf.obs.reshape(-1, *buf.obs.shape[2:]))
            # (after the first epoch, column 0 is carried over: valued by the policy before the update)
            start = 0 if epoch == 0 else 1
            np.testing.assert_allclose(values[:, start:], fresh.view(buf.rows, T + 1).numpy()[:, start:], atol=1e-6)
            truth = ground_truth(obs, actions)

            # The rollout stored what the env did: real steps, how each episode ended, rewards.
            np.testing.assert_array_equal(buf.valid.numpy() == 1, truth["valid"])
            for flag in ("terminated", "truncated"):
                np.testing.assert_array_equal(getattr(buf, flag)[:, :T].numpy() == 1, truth[flag][:, :T], err_msg=flag)
                kinds[flag] += int(truth[flag][:, :T].sum())
            valid = truth["valid"][:, :T]
            np.testing.assert_allclose(buf.rewards[:, :T].numpy()[valid], truth["rewards"][:, :T][valid], atol=1e-6)
            # The column after a done step holds that episode's final observation.
            rows, cols = np.nonzero(truth["truncated"][:, :T] | truth["terminated"][:, :T])
            assert (~truth["valid"][rows, cols + 1]).all()

            trainer.training.update(policy, trainer.optimizer, buf, trainer.progress)
            assert len(captured) == epoch + 1, "the update computes its advantages with compute_gae"
            advantages, returns = (x.numpy() for x in captured[-1])
            want = expected_returns(
                truth["rewards"][:, :T], values, truth["terminated"][:, :T], truth["truncated"][:, :T], valid
            )
            np.testing.assert_allclose(returns[valid], want[valid], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(advantages[valid], (want - values[:, :T])[valid], rtol=1e-5, atol=1e-5)

            # Spelled out at the episode ends: truncation bootstraps from the final observation's
            # value (a real, non-zero value here), termination from nothing.
            trunc = np.nonzero(truth["truncated"][:, :T])
            bootstrap = values[trunc[0], trunc[1] + 1]
            assert np.abs(bootstrap).min() > 1e-3
            np.testing.assert_allclose(
                returns[trunc], truth["rewards"][trunc] + GAMMA * bootstrap, rtol=1e-5, atol=1e-5
            )
            term = np.nonzero(truth["terminated"][:, :T])
            np.testing.assert_allclose(returns[term], truth["rewards"][term], rtol=1e-5, atol=1e-5)
    assert kinds["terminated"] >= 2 * NUM_ENVS and kinds["truncated"] >= 2 * NUM_ENVS, kinds


@pytest.mark.parametrize("kind", ["terminated", "truncated"])
def test_episode_ends_env_ends_its_episodes_as_documented(kind):
    """The ground truth the test above reads from observations is the env's real behaviour."""
    env = EpisodeEndsEnv()
    obs, _ = env.reset(seed=0)
    if kind == "truncated":  # episode 1 is the first one cut by the time limit
        while not any(env.step(0)[2:4]):
            pass
        obs, _ = env.reset()
    length = EpisodeEndsEnv.TRUNCATE_AFTER if kind == "truncated" else EpisodeEndsEnv.TERMINATE_AFTER
    assert obs[0] == 0 and obs[1] == float(kind == "truncated")
    for step in range(1, length + 1):
        obs, reward, terminated, truncated, _ = env.step(1)
        assert reward == pytest.approx(0.75 + 0.1 * (step - 1))
        assert obs[0] == pytest.approx(step / 10)
        assert (terminated, truncated) == ((step == length and kind == "terminated"), (step == length and kind == "truncated"))
