"""MettaGrid under metta_rl's rules (:mod:`metta_rl.envs.mettagrid_env`): every episode, the
first included, is ``max_steps`` steps and every reward in it is counted; a reset with a seed
replays the same maps and episodes (evaluations repeat), automatic resets give new maps; and
mettagrid's own episode stats reach the env's infos and the run's metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metta_rl.config import EnvConfig, EvaluationConfig, PolicyConfig, VectorizationConfig
from metta_rl.core.episodes import EpisodeTracker
from metta_rl.core.policy import ActorCritic
from metta_rl.managers.environment import EnvironmentManager
from metta_rl.managers.evaluation import EvaluationManager
from metta_rl.trainer import Trainer
from tests.integration_utils import make_config

pytest.importorskip("mettagrid")

from mettagrid.map_builder.ascii import AsciiMapBuilder  # noqa: E402

from metta_rl.envs.mettagrid_env import make_mettagrid_env  # noqa: E402
from metta_rl.envs.mettagrid_tasks import tiny  # noqa: E402
from metta_rl.envs.seeding import EnvSeeds  # noqa: E402

torch.set_num_threads(1)
MAX_STEPS = 10


def camping(max_steps: int = MAX_STEPS):
    """Two agents, each west of a heart source that refills every step: moving west pays 1 on
    every step of an episode, its first and last included."""
    cfg = tiny(num_agents=2, max_steps=max_steps, refill_period=1)
    cfg.game.map_builder = AsciiMapBuilder.Config(
        map_data=["#####", "#S@.#", "#S@.#", "#####"],
        char_to_map_name={"#": "wall", "@": "agent.agent", ".": "empty", "S": "heart_source"},
    )
    return cfg


CAMPING = EnvConfig(name="camp", kind="mettagrid", id="tests.test_mettagrid_env:camping")
TINY = EnvConfig(name="tiny", kind="mettagrid", id="tiny", kwargs={"max_steps": MAX_STEPS})


def manager(env: EnvConfig, *, num_envs: int = 2, seed: int = 0) -> EnvironmentManager:
    vec = VectorizationConfig(backend="serial", num_envs=num_envs, num_workers=1)
    return EnvironmentManager(env=env, vectorization=vec, seed=seed)


def map_of(m: EnvironmentManager, i: int = 0) -> list[tuple[str, int, int]]:
    """Env ``i``'s objects and agents where they stand."""
    objects = m.vecenv.envs[i].current_simulation.grid_objects()
    return sorted((o["type_name"], o["r"], o["c"]) for o in objects.values())


# ---------------------------------------------------------------------------------- episodes
def test_every_episode_is_max_steps_long_and_every_reward_counts():
    m = manager(CAMPING)
    tracker = EpisodeTracker(m.num_agents)
    lengths, returns, own = [], [], []
    try:
        m.reset()
        for state in range(3 * (MAX_STEPS + 1) + 1):
            b = m.recv()
            _, first, finished = tracker.observe(b.rows, b.rewards, b.terminals, b.truncations, b.masks)
            done = b.terminals | b.truncations
            # The step after a done state delivers the next episode's first state: no reward, not done.
            assert first.all() == (state % (MAX_STEPS + 1) == 0)
            if first.all():
                assert not done.any() and not b.rewards.any()
            if finished is not None:
                assert b.truncations.all() and not b.terminals.any()  # the time limit truncates
                lengths += finished.lengths.tolist()
                returns += finished.returns.tolist()
                own += np.concatenate([env.get_episode_rewards() for env in m.vecenv.envs]).tolist()
            m.send(np.full((m.num_agents, 1), 3))  # west, into the source
    finally:
        m.close()
    assert lengths == [MAX_STEPS] * 12  # 3 episodes x 2 envs x 2 agents
    assert returns == own == [float(MAX_STEPS)] * 12


# ---------------------------------------------------------------------------------- seeds
def play(m: EnvironmentManager, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Reset, then take ``actions``: the observations, the rewards and env 0's map at each episode start."""
    m.reset()
    obs, rewards, maps = [], [], []
    for step_actions in actions:
        b = m.recv()
        obs.append(b.obs.copy())
        rewards.append(b.rewards.copy())
        if m.vecenv.envs[0].current_simulation.current_step == 0:
            maps.append(map_of(m))
        m.send(step_actions)
    return np.stack(obs), np.stack(rewards), maps


def test_a_reset_with_the_same_seed_replays_the_same_episodes():
    env = EnvConfig(name="nav", kind="mettagrid", id="navigation",
                    kwargs={"num_agents": 2, "max_steps": MAX_STEPS, "width": 11, "height": 11, "sources": 6})
    actions = np.random.default_rng(0).integers(0, 5, size=(3 * (MAX_STEPS + 1), 4, 1))
    m = manager(env)
    try:
        obs_a, rewards_a, maps_a = play(m, actions)
        obs_b, rewards_b, maps_b = play(m, actions)  # the same envs, reset again
    finally:
        m.close()
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    assert maps_a == maps_b and len(maps_a) == 3
    assert maps_a[0] != maps_a[1] != maps_a[2]  # the automatic resets gave new maps
    other = manager(env, seed=1)
    try:
        assert play(other, actions[:1])[2][0] != maps_a[0]  # another seed, another map
    finally:
        other.close()


def test_two_evaluations_of_one_policy_score_the_same():
    config = EvaluationConfig(num_episodes=4, num_envs=2, deterministic=False)
    ev = EvaluationManager(env=TINY, config=config, seed=0, device=torch.device("cpu"))
    try:
        torch.manual_seed(0)
        policy = ActorCritic(obs_space=ev.env.observation_space, action_space=ev.env.action_space,
                             config=PolicyConfig(hidden_sizes=[16]))
        first = ev.evaluate(policy, agent_step=0, epoch=0)
        second = ev.evaluate(policy, agent_step=0, epoch=1)
    finally:
        ev.close()
    assert first.returns == second.returns and first.lengths == second.lengths
    assert len(first.returns) == 8 and set(first.lengths) == {MAX_STEPS} and sum(first.returns) > 0


# ---------------------------------------------------------------------------------- stats
def test_episode_stats_arrive_in_infos_once_per_episode():
    m = manager(CAMPING, num_envs=1)
    infos = []
    try:
        m.reset()
        for _ in range(2 * (MAX_STEPS + 1)):
            b = m.recv()
            infos.append(b.infos)
            m.send(np.full((m.num_agents, 1), 3))
    finally:
        m.close()
    ends = [i for i, info in enumerate(infos) if any(info)]  # (the reset gives [{}])
    assert ends == [MAX_STEPS, 2 * MAX_STEPS + 1]  # the done states, and only they
    (info,) = infos[MAX_STEPS]
    assert set(info) == {"game", "agent"}
    assert info["agent"]["heart.gained"] == MAX_STEPS  # the mean over the env's agents
    assert info["agent"]["action.move.success"] == MAX_STEPS  # moving into a source counts as a move
    assert all(isinstance(v, float) for section in info.values() for v in section.values())


def test_a_stat_that_stayed_zero_is_reported_as_zero():
    env = make_mettagrid_env(CAMPING.id, {}, seeds=EnvSeeds(0, 0, 0))
    stats = []
    try:
        env.reset(seed=0)
        for action in (3, 0):  # an episode into the sources, then one standing still
            for _ in range(MAX_STEPS):
                infos = env.step(np.full(2, action, dtype=np.int32))[-1]
            stats.append(infos["agent"])
            env.step(np.zeros(2, dtype=np.int32))  # starts the next episode
    finally:
        env.close()
    assert stats[0]["heart.gained"] == MAX_STEPS and stats[1]["heart.gained"] == 0.0
    assert stats[1]["action.noop.success"] == MAX_STEPS


def test_mettagrid_stats_are_run_metrics(tmp_path):
    cfg = make_config(
        env=TINY.to_dict(),
        vectorization={"num_envs": 2},
        trainer={"total_timesteps": 48, "batch_size": 48, "minibatch_size": 48, "update_epochs": 1},
        evaluation={"enabled": False},
    )
    with Trainer(cfg, run_dir=tmp_path / "run", console=False) as trainer:
        trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    names = set().union(*lines)
    assert {"env/agent/action.move.success", "env/game/objects.heart_source"} <= names, sorted(names)
    assert not any(n.startswith(("env/per_agent", "env/attributes", "env/timing")) for n in names)
