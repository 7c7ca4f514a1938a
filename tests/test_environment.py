"""EnvironmentManager and the env factories against real vector envs: Gymnasium CartPole on the
serial and multiprocessing (sync and async) backends, seeding, a PettingZoo env, config-time env
errors, and MettaGrid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metta_rl.config import ConfigError, EnvConfig, TrainerConfig, VectorizationConfig
from metta_rl.managers.environment import EVAL_STREAM, TRAIN_STREAM, EnvError, EnvironmentManager
from metta_rl.envs.checks import check_runtime
from metta_rl.envs.seeding import env_seed
from metta_rl.trainer import Trainer
from tests.envs_for_tests import EPISODE_LENGTH
from tests.integration_utils import PZ_ENV, config_dict, make_config

torch.set_num_threads(1)

try:
    import mettagrid  # noqa: F401

    HAVE_METTAGRID = True
except Exception:  # noqa: BLE001 - any import failure means: not available here
    HAVE_METTAGRID = False

requires_mettagrid = pytest.mark.skipif(not HAVE_METTAGRID, reason="mettagrid cannot be imported")

CARTPOLE = EnvConfig()
PZ = EnvConfig(**PZ_ENV)


def manager(
    env: EnvConfig = CARTPOLE,
    *,
    backend: str = "serial",
    num_envs: int = 4,
    num_workers: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    stream: int = TRAIN_STREAM,
) -> EnvironmentManager:
    vec = VectorizationConfig(backend=backend, num_envs=num_envs, num_workers=num_workers, batch_size=batch_size)
    return EnvironmentManager(env=env, vectorization=vec, seed=seed, stream=stream)


def first_obs(env: EnvConfig = CARTPOLE, start: int = 0, **kwargs) -> np.ndarray:
    """The observations of the first recv after reset (all rows), copied."""
    m = manager(env, **kwargs)
    try:
        m.reset(start=start)
        parts = {}
        while len(parts) * m.agents_per_batch < m.num_agents:
            batch = m.recv()
            parts[batch.rows.start] = batch.obs.copy()
            m.send(np.zeros((m.agents_per_batch, 1), dtype=np.int64))
        return np.concatenate([parts[k] for k in sorted(parts)])
    finally:
        m.close()


def assert_processes_gone(m: EnvironmentManager) -> None:
    procs = list(m.vecenv.processes)
    assert procs, "the multiprocessing backend should have worker processes"
    assert not any(p.is_alive() for p in procs)


# ------------------------------------------------------------------------------ gym, serial
def test_cartpole_serial_spaces_and_geometry():
    m = manager(num_envs=3)
    try:
        assert m.backend == "serial"
        assert m.observation_space.shape == (4,)
        assert m.observation_space.dtype == np.float32
        assert m.action_space.n == 2
        assert m.single_action
        assert m.num_agents == 3
        assert m.agents_per_batch == 3
        assert m.horizon(24) == 8
        assert m.horizon(3) == 1
    finally:
        m.close()


def test_horizon_error_names_batch_size_and_agent_count():
    m = manager(num_envs=3)
    try:
        with pytest.raises(ConfigError, match=r"trainer\.batch_size=10 is invalid.*multiple of the agent count \(3 "):
            m.horizon(10)
    finally:
        m.close()


def test_cartpole_serial_recv_send_loop_and_deferred_reset():
    """The step that reports done carries reward 1 and the final obs; the next step is the
    reset: reward 0, not done, and a fresh observation from the env's continued RNG."""
    m = manager(num_envs=3)
    try:
        m.reset()
        first = None
        prev_done = np.zeros(3, dtype=bool)
        dones_seen = resets_seen = 0
        for step in range(60):
            b = m.recv()
            assert b.rows == slice(0, 3)
            assert b.obs.shape == (3, 4)
            assert b.masks.all()
            done = b.terminals | b.truncations
            if step == 0:
                first = b.obs.copy()
                assert not done.any() and (b.rewards == 0).all()
            else:
                # Live steps earn 1 (including the terminating one); reset steps earn 0.
                np.testing.assert_array_equal(b.rewards, np.where(prev_done, 0.0, 1.0))
                # A reset step is never itself done.
                assert not (done & prev_done).any()
                for row in np.flatnonzero(prev_done):
                    resets_seen += 1
                    # Automatic resets continue the env's RNG: not the first episode again.
                    assert not np.array_equal(b.obs[row], first[row])
            dones_seen += int(done.sum())
            prev_done = done.copy()
            # Always pushing right ends CartPole episodes in about 10 steps.
            m.send(np.ones((3, 1), dtype=np.int64))
        assert dones_seen >= 6 and resets_seen >= 3
    finally:
        m.close()
    m.close()  # idempotent


# ------------------------------------------------------------------------------ multiprocessing
def test_multiprocessing_sync_backend():
    m = manager(backend="multiprocessing", num_envs=4, num_workers=2)
    try:
        assert m.backend == "multiprocessing"
        assert m.num_agents == 4 and m.agents_per_batch == 4
        assert len(m.vecenv.processes) == 2
        assert all(p.is_alive() for p in m.vecenv.processes)
        m.reset()
        dones = 0
        for _ in range(40):
            b = m.recv()
            assert b.rows == slice(0, 4)
            assert b.obs.shape == (4, 4)
            dones += int((b.terminals | b.truncations).sum())
            m.send(np.ones((4, 1), dtype=np.int64))
        assert dones > 0
    finally:
        m.close()
    assert_processes_gone(m)
    m.close()  # idempotent


def test_multiprocessing_async_batches_alternate_round_robin():
    m = manager(backend="multiprocessing", num_envs=4, num_workers=2, batch_size=2)
    try:
        assert m.num_agents == 4
        assert m.agents_per_batch == 2
        m.reset()
        starts = []
        for _ in range(12):
            b = m.recv()
            assert b.rows.stop - b.rows.start == 2
            assert b.obs.shape == (2, 4)
            starts.append(b.rows.start)
            m.send(np.zeros((2, 1), dtype=np.int64))
        assert starts == [0, 2] * 6
    finally:
        m.close()
    assert_processes_gone(m)


def test_multiprocessing_pettingzoo_workers():
    m = manager(PZ, backend="multiprocessing", num_envs=4, num_workers=2)
    try:
        assert m.num_agents == 8 and m.agents_per_batch == 8
        m.reset()
        for step in range(EPISODE_LENGTH + 2):
            b = m.recv()
            assert b.obs.shape == (8, 4)
            done = b.truncations
            assert done.all() == (step == EPISODE_LENGTH)
            m.send(np.zeros((8, 1), dtype=np.int64))
    finally:
        m.close()
    assert_processes_gone(m)


# ------------------------------------------------------------------------------ seeding
def test_same_seed_same_first_observations_different_seed_differs():
    a = first_obs(seed=7)
    b = first_obs(seed=7)
    c = first_obs(seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "vec",
    [
        dict(backend="serial", num_envs=4),
        dict(backend="multiprocessing", num_envs=4, num_workers=2),  # 2 envs per worker
        dict(backend="multiprocessing", num_envs=4, num_workers=2, batch_size=2),
    ],
    ids=["serial", "multiprocessing", "async"],
)
def test_envs_of_one_vector_env_get_distinct_seeds(vec):
    obs = first_obs(seed=3, **vec)
    assert obs.shape == (4, 4)
    assert len({row.tobytes() for row in obs}) == 4


def test_env_seeds_do_not_depend_on_the_backend():
    """Env i gets SeedSequence([seed, stream, i]) whatever worker it lives in."""
    serial = first_obs(seed=5, backend="serial", num_envs=4)
    mp = first_obs(seed=5, backend="multiprocessing", num_envs=4, num_workers=2)
    np.testing.assert_array_equal(serial, mp)


def test_evaluation_stream_differs_from_training_stream():
    train = first_obs(seed=0, stream=TRAIN_STREAM)
    evaluation = first_obs(seed=0, stream=EVAL_STREAM)
    assert not np.array_equal(train, evaluation)
    for row in range(4):
        assert not np.array_equal(train[row], evaluation[row])
    assert env_seed(0, TRAIN_STREAM, 0) != env_seed(0, EVAL_STREAM, 0)


@pytest.mark.parametrize(
    "vec",
    [dict(backend="serial", num_envs=4), dict(backend="multiprocessing", num_envs=4, num_workers=2)],
    ids=["serial", "multiprocessing"],
)
def test_a_later_start_point_gives_every_env_new_episodes_reproducibly(vec):
    """A run resumed at epoch E starts its envs on episodes of their own for E, not on a
    replay of epoch 0's; the same (seed, start) gives the same episodes on any backend."""
    at_zero = first_obs(seed=5, **vec)
    later = first_obs(seed=5, start=195, **vec)
    for row in range(4):
        assert not np.array_equal(at_zero[row], later[row])
    np.testing.assert_array_equal(later, first_obs(seed=5, start=195, backend="serial", num_envs=4))
    assert not np.array_equal(later, first_obs(seed=5, start=196, **vec))


def test_pettingzoo_envs_see_their_own_seed_for_the_start_point():
    m = manager(PZ, num_envs=3, seed=4)
    try:
        m.reset(start=7)
        m.recv()
        for i, env in enumerate(m.vecenv.envs):
            assert env.env._env.reset_seeds == [env_seed(4, TRAIN_STREAM, i, 7)]
    finally:
        m.close()


def test_explicit_reset_restarts_every_env_from_its_seed():
    m = manager(num_envs=2, seed=11)
    try:
        m.reset()
        first = m.recv().obs.copy()
        for _ in range(15):
            m.send(np.ones((2, 1), dtype=np.int64))
            m.recv()
        m.send(np.ones((2, 1), dtype=np.int64))
        m.reset()
        again = m.recv().obs.copy()
        np.testing.assert_array_equal(first, again)
    finally:
        m.close()


# ------------------------------------------------------------------------------ PettingZoo
def test_pettingzoo_env_geometry_and_seeds():
    m = manager(PZ, num_envs=3, seed=4)
    try:
        assert m.num_agents == 2 * 3
        assert m.agents_per_batch == 6
        assert m.observation_space.shape == (4,) and m.observation_space.dtype == np.float32
        assert m.action_space.n == 3
        assert m.horizon(6 * 5) == 5
        m.reset()
        b = m.recv()
        assert b.obs.shape == (6, 4)
        # The inner ParallelEnv saw our own seed, not pufferlib's seed + i.
        for i, env in enumerate(m.vecenv.envs):
            assert env.env._env.reset_seeds == [env_seed(4, TRAIN_STREAM, i)]
        # Different envs start differently.
        assert len({row.tobytes() for row in b.obs}) == 6
        m.send(np.zeros((6, 1), dtype=np.int64))
    finally:
        m.close()


def test_pettingzoo_trainer_runs_two_epochs(tmp_path):
    cfg = make_config(
        env=PZ_ENV,
        vectorization={"num_envs": 2},
        trainer={"total_timesteps": 80, "batch_size": 40, "minibatch_size": 20, "update_epochs": 2},
        evaluation={"num_episodes": 2, "num_envs": 2},
    )
    with Trainer(cfg, run_dir=tmp_path / "pz", console=False) as trainer:
        assert trainer.env.num_agents == 4
        assert trainer.rollout.buffer.horizon == 10
        result = trainer.train()
    s = result.summary
    assert s["agent_steps"] == 80 and s["epochs"] == 2
    # 10-step horizon, 5-step episodes: at least one episode per agent row per epoch.
    assert s["episodes"] >= 8
    assert 0.0 <= s["episode_return"] <= EPISODE_LENGTH
    # Evaluation counts every agent's episode: 2 envs x 1 episode x 2 agents.
    assert s["eval_episodes"] == 4
    assert all(n == EPISODE_LENGTH for n in result.eval.lengths)
    assert 0.0 <= s["eval_mean_return"] <= EPISODE_LENGTH
    for key in ("losses/policy_loss", "losses/value_loss", "losses/approx_kl"):
        assert np.isfinite(result.metrics[key])
    assert (tmp_path / "pz" / "summary.json").exists()


# ------------------------------------------------------------------------------ bad env ids
def test_unknown_gym_id_fails_the_runtime_check():
    with pytest.raises(ConfigError, match=r"env\.id='CartPoel-v1' is invalid") as info:
        check_runtime(TrainerConfig.from_dict(config_dict(env={"id": "CartPoel-v1"})))
    assert "\n" not in str(info.value)
    assert "CartPole-v1" in str(info.value)  # the close match is suggested


@pytest.mark.parametrize(
    "env_id, why",
    [
        ("tests.envs_for_tests:nope", "no callable 'nope'"),
        ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
        ("tests.envs_for_tests", "expected 'module:callable'"),
    ],
)
def test_bad_pettingzoo_id_fails_the_runtime_check(env_id, why):
    with pytest.raises(ConfigError, match=r"env\.id=") as info:
        check_runtime(TrainerConfig.from_dict(config_dict(env={**PZ_ENV, "id": env_id})))
    assert why in str(info.value)
    assert env_id in str(info.value)


def test_unknown_mettagrid_preset_fails_at_config_build():
    with pytest.raises(ConfigError, match=r"env\.id='nope' is invalid.*navigation"):
        TrainerConfig.from_dict(config_dict(env={"name": "mg", "kind": "mettagrid", "id": "nope"}))


def test_env_that_cannot_be_built_is_an_env_error_and_leaves_no_run_dir(tmp_path):
    cfg = make_config(env={"kwargs": {"no_such_kwarg": 1}})
    trainer = Trainer(cfg, run_dir=tmp_path / "run", console=False)
    with pytest.raises(EnvError, match=r"env 'cartpole' \(gym:CartPole-v1\) could not be created"):
        trainer.setup()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ MettaGrid
METTAGRID = dict(name="mg_nav", kind="mettagrid", id="navigation", kwargs={"num_agents": 2, "max_steps": 20})


@requires_mettagrid
def test_mettagrid_builds_and_steps():
    m = manager(EnvConfig(**METTAGRID), num_envs=2)
    try:
        assert m.num_agents == 4 and m.agents_per_batch == 4
        assert m.observation_space.dtype == np.uint8
        assert m.single_action and m.action_space.n >= 2
        m.reset()
        rng = np.random.default_rng(0)
        for step in range(23):
            b = m.recv()
            assert b.obs.shape == (4, *m.observation_space.shape)
            assert b.obs.dtype == np.uint8
            done = b.terminals | b.truncations
            # max_steps=20: every agent's episode ends on the 20th step, and only then.
            assert done.all() == (step == 20) and done.any() == (step == 20)
            m.send(rng.integers(0, m.action_space.n, size=(4, 1)))
    finally:
        m.close()


@requires_mettagrid
def test_mettagrid_unknown_kwarg_is_a_config_error(tmp_path):
    cfg = make_config(env={**METTAGRID, "kwargs": {"num_agents": 2, "bogus": 1}})
    with pytest.raises(ConfigError, match="bogus"):
        Trainer(cfg, run_dir=tmp_path / "run", console=False).setup()
    assert not (tmp_path / "run").exists()


@requires_mettagrid
def test_mettagrid_one_trainer_epoch(tmp_path):
    cfg = make_config(
        env=METTAGRID,
        vectorization={"num_envs": 1},
        trainer={"total_timesteps": 16, "batch_size": 16, "minibatch_size": 16, "update_epochs": 1},
        evaluation={"num_episodes": 1, "num_envs": 1},
    )
    with Trainer(cfg, run_dir=tmp_path / "mg", console=False) as trainer:
        assert trainer.rollout.buffer.horizon == 8
        result = trainer.train()
    assert result.summary["agent_steps"] == 16 and result.summary["epochs"] == 1
    assert np.isfinite(result.metrics["losses/policy_loss"])
    # One evaluation episode per env counts both agents' episodes, each max_steps long.
    assert result.eval.lengths == (20, 20)
    assert (tmp_path / "mg" / "summary.json").exists()


@requires_mettagrid
def test_mettagrid_same_seed_same_first_observations():
    # 8 envs x 2 agents: with unseeded maps, 16 identical first views are vanishingly unlikely
    # (with 2 envs they coincide about 1 time in 20).
    env = EnvConfig(**METTAGRID)
    a = first_obs(env, num_envs=8, seed=0)
    b = first_obs(env, num_envs=8, seed=0)
    np.testing.assert_array_equal(a, b)
