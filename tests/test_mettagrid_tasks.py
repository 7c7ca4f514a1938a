"""MettaGrid tasks and how a config names one: the shipped tasks (``env.id=navigation``), a
user's ``module:callable``, the one-line errors at build time and at set-up, and what the
tasks' objects do (a source gives one heart and stays empty until it refills; the arena chain
turns ore into batteries into hearts, paying the shaped rewards)."""

from __future__ import annotations

import sys
import uuid

import numpy as np
import torch
import pytest

from metta_rl.config import METTAGRID_TASKS, ConfigError, EnvConfig, TrainerConfig, VectorizationConfig
from metta_rl.envs.checks import check_runtime
from metta_rl.managers.environment import EnvironmentManager

pytest.importorskip("mettagrid")

from mettagrid.config.mettagrid_config import MettaGridConfig  # noqa: E402
from mettagrid.map_builder.ascii import AsciiMapBuilder  # noqa: E402

from metta_rl.envs.mettagrid_config import build_mettagrid_config, mettagrid_config, token_layout  # noqa: E402
from metta_rl.envs.mettagrid_env import MettaGridEnv  # noqa: E402
from metta_rl.envs.mettagrid_tasks import TASKS, arena  # noqa: E402
from metta_rl.envs.seeding import EnvSeeds  # noqa: E402

USER_MODULE = '''
from metta_rl.envs.mettagrid_tasks import tiny

def make(size=7, agents=1):
    cfg = tiny(num_agents=agents, width=size, height=size, max_steps=12)
    cfg.game.episode_truncates = False  # mettagrid's default: the time limit a terminal
    return cfg

def make_not_a_config():
    return {"game": {}}

def make_raises(size=7):
    raise ValueError("size too\\nsmall")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def mg(env_id: str, **kwargs) -> EnvConfig:
    return EnvConfig(name="mg", kind="mettagrid", id=env_id, kwargs=kwargs)


def runtime_error(env: EnvConfig) -> str:
    with pytest.raises(ConfigError) as info:
        check_runtime(TrainerConfig.from_dict({"env": env.to_dict()}))
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------- names
def test_config_task_names_are_the_task_registry():
    assert METTAGRID_TASKS == tuple(TASKS)


def test_building_a_mettagrid_config_imports_no_mettagrid(monkeypatch):
    # Every mettagrid module (and ours that import it) made unimportable: an import at build
    # time would raise ImportError here.
    for name in [m for m in sys.modules if m.split(".")[0] == "mettagrid" or m.startswith("metta_rl.envs.mettagrid")]:
        monkeypatch.setitem(sys.modules, name, None)
    TrainerConfig.from_dict({"env": {"kind": "mettagrid", "id": "navigation", "kwargs": {"width": 9}}})
    TrainerConfig.from_dict({"env": {"kind": "mettagrid", "id": "some_pkg.tasks:make"}})
    with pytest.raises(ImportError):  # the poisoning works
        import metta_rl.envs.mettagrid_tasks  # noqa: F401


@pytest.mark.parametrize("env_id", ["nope", "pkg:", ":make", "navigaton"])
def test_an_id_that_is_neither_a_task_nor_module_callable_fails_at_build(env_id):
    with pytest.raises(ConfigError) as info:
        mg(env_id)
    assert str(info.value) == (
        f"env.id={env_id!r} is invalid: expected a MettaGrid task, one of navigation, arena, tiny, "
        "or 'module:callable' returning a MettaGridConfig"
    )


# ---------------------------------------------------------------------------------- set-up checks
def test_unknown_kwargs_of_a_task_are_named_with_the_accepted_ones():
    msg = runtime_error(mg("navigation", num_agents=2, bogus=1, sorces=3))
    assert msg == (
        "env.kwargs={'num_agents': 2, 'bogus': 1, 'sorces': 3} is invalid: MettaGrid task 'navigation' takes no "
        "'bogus', 'sorces'; it accepts num_agents, max_steps, width, height, sources, obstacles, refill_period"
    )


def test_a_task_that_raises_on_its_kwargs_is_one_line():
    msg = runtime_error(mg("tiny", width="wide"))
    assert msg.startswith("env.id='tiny' is invalid: calling it with env.kwargs={'width': 'wide'} raised "), msg


def test_user_callable_is_imported_at_setup_and_built_with_kwargs(user_module):
    env = mg(f"{user_module}:make", size=9, agents=2)
    assert user_module not in sys.modules  # building the config imported nothing
    check_runtime(TrainerConfig.from_dict({"env": env.to_dict()}))
    cfg = mettagrid_config(env)
    assert isinstance(cfg, MettaGridConfig)
    assert (cfg.game.num_agents, cfg.game.map_builder.width, cfg.game.max_steps) == (2, 9, 12)
    assert cfg.game.episode_truncates  # the time limit is a truncation, whatever the callable said


@pytest.mark.parametrize(
    "attr, kwargs, expected",
    [
        ("make_not_a_config", {}, "is invalid: it returned builtins.dict, expected a mettagrid MettaGridConfig"),
        ("make_raises", {"size": 3},
         "is invalid: calling it with env.kwargs={{'size': 3}} raised ValueError: size too small"),
        ("nope", {}, "is invalid: '{mod}' has no callable 'nope'"),
    ],
    ids=["not-a-config", "raises", "no-callable"],
)
def test_user_callable_errors_are_one_line(user_module, attr, kwargs, expected):
    env_id = f"{user_module}:{attr}"
    msg = runtime_error(mg(env_id, **kwargs))
    assert msg == f"env.id={env_id!r} " + expected.format(mod=user_module), msg


def test_user_callable_unknown_kwargs_are_named(user_module):
    msg = runtime_error(mg(f"{user_module}:make", colour=1))
    assert msg.endswith(f"'{user_module}:make' takes no 'colour'; it accepts size, agents"), msg


def test_user_module_that_cannot_be_imported():
    msg = runtime_error(mg("no_such_user_tasks_xyz:make"))
    assert msg == "env.id='no_such_user_tasks_xyz:make' is invalid: cannot import 'no_such_user_tasks_xyz' " \
        "(No module named 'no_such_user_tasks_xyz')"


def test_user_callable_in_multiprocessing_workers(user_module):
    # Each worker builds its envs from the id and kwargs (the creators carry no config).
    vec = VectorizationConfig(backend="multiprocessing", num_envs=2, num_workers=2)
    m = EnvironmentManager(env=mg(f"{user_module}:make", agents=2), vectorization=vec, seed=0)
    try:
        assert m.num_agents == 4 and len(m.vecenv.processes) == 2
        m.reset()
        for _ in range(14):  # past the end of a 12-step episode
            batch = m.recv()
            assert batch.obs.shape == (4, *m.observation_space.shape)
            m.send(np.ones((4, 1), dtype=np.int64))
    finally:
        m.close()


# ---------------------------------------------------------------------------------- layout
def test_token_layout_lists_the_configs_features():
    layout = token_layout(mg("tiny"))
    assert (layout.height, layout.width) == (13, 13)
    vec = VectorizationConfig(num_envs=1)
    for env, expected in ((mg("tiny"), layout), (EnvConfig(), None)):
        m = EnvironmentManager(env=env, vectorization=vec, seed=0)
        m.close()
        assert m.token_layout == expected
    names = {name for _, name, _ in layout.features}
    assert {"inv:heart", "tag", "last_reward"} <= names
    ids = [i for i, _, _ in layout.features]
    assert len(set(ids)) == len(ids) and all(norm > 0 for _, _, norm in layout.features)


# ---------------------------------------------------------------------------------- what tasks do
def scripted(cfg: MettaGridConfig, ascii_map: list[str], actions: list[int]) -> list[float]:
    """Rewards of one agent on ``ascii_map`` taking ``actions`` (1 north, 2 south, 3 west, 4 east)."""
    legend = {"#": "wall", "@": "agent.agent", ".": "empty", "S": "heart_source", "m": "mine",
              "g": "generator", "a": "altar"}
    cfg.game.map_builder = AsciiMapBuilder.Config(map_data=ascii_map, char_to_map_name=legend)
    env = MettaGridEnv(cfg, seeds=EnvSeeds(0, 0, 0))
    try:
        env.reset(seed=0)
        return [float(env.step(np.array([a], dtype=np.int32))[1][0]) for a in actions]
    finally:
        env.close()


def test_a_heart_source_gives_one_heart_then_is_empty_until_it_refills():
    cfg = build_mettagrid_config("navigation", {"num_agents": 1, "max_steps": 50, "refill_period": 6})
    rewards = scripted(cfg, ["####", "#@S#", "####"], [4] * 13)
    # Full at the start; refilled after steps 6 and 12 (bumping it meanwhile gives nothing).
    assert rewards == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]


def test_arena_chain_pays_the_shaped_rewards():
    cfg = arena(num_agents=1, max_steps=50, mine_refill_period=5)
    rewards = scripted(cfg, ["#####", "#m@g#", "##a##", "#####"], [4, 2, 3, 4, 3, 2, 0, 0, 3, 4, 2])
    # Nothing to convert yet; ore (0.1); ore -> battery (+0.7); mine and generator empty-handed;
    # battery -> heart (+0.2); the mine refills after step 5.
    np.testing.assert_allclose(rewards, [0, 0, 0.1, 0.7, 0, 0.2, 0, 0, 0.1, 0.7, 0.2], atol=1e-6)


def test_a_user_module_nothing_imported_before_trains(user_module, tmp_path):
    """``env.id=module:callable`` through the Trainer: the module is imported at set-up (not
    when the config is built), its config's envs are stepped, and the policy is updated."""
    from metta_rl.trainer import Trainer

    cfg = TrainerConfig.from_dict({
        "env": {"name": "user", "kind": "mettagrid", "id": f"{user_module}:make", "kwargs": {"agents": 2}},
        "trainer": {"total_timesteps": 256, "batch_size": 128, "minibatch_size": 128, "update_epochs": 1},
        "vectorization": {"num_envs": 2},
        "evaluation": {"enabled": False},
    })
    assert user_module not in sys.modules
    with Trainer(cfg, run_dir=tmp_path / "run", console=False) as trainer:
        before = [p.detach().clone() for p in trainer.policy.parameters()]
        trainer.train()
        after = list(trainer.policy.parameters())
    assert user_module in sys.modules
    assert trainer.progress.agent_step == 256 and trainer.progress.episodes > 0  # 12-step episodes
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
