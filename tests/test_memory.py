"""A task that needs memory, trained through the Trainer; and recurrent state in evaluation.

``MemoryEnv`` shows a cue bit only at the first step of an episode, then blank observations,
then a decision observation that is the same whatever the cue: the action on it pays 1 iff it
names the cue. A random policy scores 1/2, and so does any policy without memory (it sees one
decision observation, so it makes one choice, right for the episodes with that cue only). The
LSTM policy (``policy.lstm=true``) must solve it, the MLP must not: that is the LSTM's rollout
state, its replay from the buffer's saved state in the update, and the resets at episode
starts, all working together.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from metta_rl import Trainer
from metta_rl.config import EnvConfig, EvaluationConfig, PolicyConfig
from metta_rl.core.policy import ActorCritic
from metta_rl.managers.evaluation import EvaluationManager
from tests.envs_for_tests import MEMORY_ID, MemoryEnv
from tests.integration_utils import make_config

torch.set_num_threads(1)

DELAY = 2  # blank steps between the cue and the decision
EPISODE_LENGTH = DELAY + 2
MEMORY_ENV = {"name": "memory", "kind": "gym", "id": MEMORY_ID, "kwargs": {"delay": DELAY}}
NUM_ENVS, HORIZON, EPOCHS = 16, 20, 6  # the LSTM solved it by epoch 3 on each of seeds 0-5
EVAL_EPISODES = 40
CHANCE = 0.5
SEEDS = [0, 1, 2]


def train_on_memory_task(tmp_path, seed: int, *, lstm: bool) -> list[float]:
    """Train for ``EPOCHS`` epochs; the returns of the final (deterministic) evaluation."""
    batch = NUM_ENVS * HORIZON
    cfg = make_config(
        seed=seed,
        env=MEMORY_ENV,
        policy={"hidden_sizes": [32], "shared_trunk": True, "lstm": lstm, "lstm_hidden_size": 32},
        vectorization={"num_envs": NUM_ENVS},
        # A recurrent minibatch is whole rows: 8 rows of the 16.
        trainer={"total_timesteps": EPOCHS * batch, "batch_size": batch, "minibatch_size": 8 * HORIZON,
                 "update_epochs": 4},
        optimizer={"learning_rate": 6e-3},
        ppo={"gamma": 0.9},
        evaluation={"num_episodes": EVAL_EPISODES, "num_envs": 8, "deterministic": True},
        checkpoint={"interval": 0, "keep_last": 1},
        logging={"console": "off", "system_monitor": False, "heartbeat": False},
    )
    with Trainer(cfg, run_dir=tmp_path / f"memory_{'lstm' if lstm else 'mlp'}_{seed}", console=False) as trainer:
        assert trainer.policy.is_recurrent == lstm
        result = trainer.train()
    assert result.eval is not None and len(result.eval.returns) == EVAL_EPISODES
    assert set(result.eval.lengths) == {EPISODE_LENGTH}
    return list(result.eval.returns)


@pytest.mark.parametrize("seed", SEEDS)
def test_lstm_policy_solves_the_memory_task(tmp_path, seed):
    returns = train_on_memory_task(tmp_path, seed, lstm=True)
    score = sum(returns) / len(returns)
    print(f"LSTM seed {seed}: eval mean return {score:.3f} (max 1, chance {CHANCE})")
    assert score >= 0.9, returns


@pytest.mark.parametrize("seed", SEEDS)
def test_mlp_policy_cannot_solve_the_memory_task(tmp_path, seed):
    """The control: the env does not leak the cue into the decision observation, so the
    LSTM's score above is memory, not a shortcut."""
    returns = train_on_memory_task(tmp_path, seed, lstm=False)
    score = sum(returns) / len(returns)
    print(f"MLP seed {seed}: eval mean return {score:.3f} (chance {CHANCE})")
    # A deterministic policy without memory takes one action on the one decision observation:
    # it scores the share of eval episodes whose cue is that action (at most 0.5, 0.6, 0.65 here).
    assert score <= CHANCE + 0.2, returns


# ---------------------------------------------------------------------- evaluation state
@pytest.mark.parametrize("init_seed", [0, 1, 2])
def test_evaluation_resets_the_lstm_state_at_every_episode_start(init_seed):
    """Every episode of one cue shows the same observations, so a deterministic recurrent
    policy whose state is reset at each episode start acts identically in all of them. One env
    plays the episodes one after another, so without the reset each episode would start from
    the state the previous one left behind (its decision and final observations)."""
    manager = EvaluationManager(
        env=EnvConfig(**MEMORY_ENV),
        config=EvaluationConfig(num_episodes=16, num_envs=1, deterministic=True),
        seed=0,
        device=torch.device("cpu"),
    )
    try:
        env = manager.env
        torch.manual_seed(init_seed)
        policy = ActorCritic(
            obs_space=env.observation_space,
            action_space=env.action_space,
            config=PolicyConfig(hidden_sizes=[16], shared_trunk=True, lstm=True, lstm_hidden_size=16),
        )
        with torch.no_grad():
            # A forget gate held open keeps the cell state for many steps, so a state carried
            # into the next episode (no reset) changes the actions there, not just the logits.
            size = policy.lstm.hidden_size
            policy.lstm.bias_ih[size : 2 * size] = 5.0
        result = manager.evaluate(policy, agent_step=0, epoch=0)
        memory_env = env.vecenv.envs[0].env.unwrapped
        assert isinstance(memory_env, MemoryEnv)
        episodes = list(memory_env.episodes)
    finally:
        manager.close()
    assert len(result.returns) == 16 and set(result.lengths) == {EPISODE_LENGTH}
    assert len(episodes) >= 16
    actions_by_cue: dict[int, set[tuple[int, ...]]] = defaultdict(set)
    counts: dict[int, int] = defaultdict(int)
    for cue, actions in episodes:
        assert len(actions) == EPISODE_LENGTH
        actions_by_cue[cue].add(actions)
        counts[cue] += 1
    assert min(counts[0], counts[1]) >= 3, counts  # both cues, several episodes each
    for cue, seen in actions_by_cue.items():
        assert len(seen) == 1, f"cue {cue}: episodes with the same observations acted differently: {sorted(seen)}"
    # The scores are those of the env's episodes, in order (the decision is the last action).
    assert result.returns == tuple(float(actions[-1] == cue) for cue, actions in episodes[:16])
