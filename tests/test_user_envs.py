"""A user's own Gymnasium env, in a module nothing imported before: ``env.id=module:EnvId``
(Gymnasium's form; importing the module registers the id) and ``env.id=module:callable``
(returns a ``gymnasium.Env``, built with ``env.kwargs``). Also the runtime checks
(:func:`metta_rl.envs.checks.check_runtime`) and their one-line errors.

Each test writes its module into ``tmp_path`` under a fresh name, so no earlier import (by
another test, or by pytest collecting) can make it work by accident.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path

import gymnasium
import pytest

from metta_rl import cli
from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.envs import checks
from metta_rl.envs.checks import check_runtime
from metta_rl.envs.factories import make_creators
from tests.integration_utils import run_tool

MODULE = '''
"""A user's env module: a corridor walked right in ``length`` steps."""

import gymnasium
import numpy as np


class Corridor(gymnasium.Env):
    metadata = {{"render_modes": []}}

    def __init__(self, length=4, render_mode=None):
        self.length = length
        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.pos = 0

    def _obs(self):
        obs = np.zeros(self.length, np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {{}}

    def step(self, action):
        self.pos = min(self.pos + int(action), self.length - 1)
        done = self.pos == self.length - 1
        return self._obs(), float(done), done, False, {{}}


gymnasium.register(id="{env_id}", entry_point=__name__ + ":Corridor", max_episode_steps=20)


def make_corridor(length=4, render_mode=None):
    return Corridor(length=length, render_mode=render_mode)


def make_not_an_env(**kwargs):
    return object()
'''


class UserModule:
    """A fresh module file: ``name`` (importable once ``path`` is on sys.path) registering ``env_id``."""

    def __init__(self, root: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"user_envs_{tag}"
        self.env_id = f"UserCorridor{tag}-v0"
        self.path = root / "user_pkg"
        self.path.mkdir()
        (self.path / f"{self.name}.py").write_text(MODULE.format(env_id=self.env_id))

    def id(self, attr: str) -> str:
        return f"{self.name}:{attr}"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    module = UserModule(tmp_path)
    monkeypatch.syspath_prepend(str(module.path))
    yield module
    sys.modules.pop(module.name, None)
    gymnasium.registry.pop(module.env_id, None)


def config(env_id: str, **env: object) -> TrainerConfig:
    return TrainerConfig.from_dict({"env": {"name": "user", "kind": "gym", "id": env_id, **env}})


def runtime_error(cfg: TrainerConfig) -> str:
    with pytest.raises(ConfigError) as info:
        check_runtime(cfg)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------- runtime checks
def test_registered_id_form_is_checked_at_runtime_not_at_build(user_module):
    cfg = config(user_module.id(user_module.env_id))
    assert user_module.name not in sys.modules  # building the config imported nothing
    check_runtime(cfg)
    assert user_module.name in sys.modules and user_module.env_id in gymnasium.registry


def test_callable_form_builds_with_kwargs(user_module):
    cfg = config(user_module.id("make_corridor"), kwargs={"length": 3})
    check_runtime(cfg)
    creator = make_creators("gym", cfg.env.id, cfg.env.kwargs, seed=0, stream=0, num_envs=1)[0]
    env = creator()
    try:
        assert env.single_observation_space.shape == (3,)
    finally:
        env.close()


@pytest.mark.parametrize(
    "attr, kwargs, expected",
    [
        ("Nope-v0", {},
         "importing '{mod}' registered no Gymnasium id 'Nope-v0', and '{mod}' has no callable 'Nope-v0'"),
        ("make_not_an_env", {}, "{mod}:make_not_an_env returned builtins.object, expected a gymnasium.Env"),
        ("make_corridor", {"bad": 1}, "calling it with env.kwargs raised TypeError: make_corridor() got an unexpected"),
    ],
    ids=["not-registered-no-callable", "not-an-env", "callable-raises"],
)
def test_user_module_errors_are_one_line(user_module, attr, kwargs, expected):
    env_id = user_module.id(attr)
    msg = runtime_error(config(env_id, kwargs=kwargs))
    assert msg.startswith(f"env.id={env_id!r} is invalid: "), msg
    assert expected.format(mod=user_module.name) in msg, msg


def test_module_that_cannot_be_imported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"broken_envs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no display\\navailable')\n")
    msg = runtime_error(config(f"{name}:Env-v0"))
    assert msg == f"env.id='{name}:Env-v0' is invalid: cannot import '{name}' (RuntimeError: no display available)"
    msg = runtime_error(config("no_such_user_module_xyz:Env-v0"))
    assert "cannot import 'no_such_user_module_xyz' (No module named 'no_such_user_module_xyz')" in msg


def test_unregistered_plain_id_suggests_close_ids():
    msg = runtime_error(config("CartPoel-v1"))
    assert msg.startswith("env.id='CartPoel-v1' is invalid: expected a registered Gymnasium id")
    assert "CartPole-v1" in msg


def test_eval_task_check_names_the_task(user_module):
    cfg = TrainerConfig.from_dict({"evaluation": {"tasks": [
        {"name": "ok", "id": user_module.id("make_corridor")},
        {"name": "bad", "id": user_module.id("make_not_an_env")},
    ]}})
    assert runtime_error(cfg).startswith(f"evaluation.tasks[1].id='{user_module.id('make_not_an_env')}' is invalid")


def test_tensorboard_extra_is_checked_at_runtime_not_at_build(monkeypatch):
    cfg = TrainerConfig.from_dict({"tensorboard": {"enabled": True}})
    real = importlib.util.find_spec
    monkeypatch.setattr(
        checks.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    assert runtime_error(cfg).startswith("tensorboard.enabled=True is invalid: expected false, or install the extra")


# ---------------------------------------------------------------------------------- CLI
def train(module: UserModule, runs: Path, *args: str) -> tuple[object, Path]:
    proc = run_tool(
        "train.py", "env.kind=gym", *args, "trainer.total_timesteps=512", "evaluation.num_episodes=2",
        "run=user", f"runs_dir={runs}", extra_env={"PYTHONPATH": str(module.path)}, timeout=180,
    )
    return proc, runs / "user"


def test_cli_trains_a_registered_id_from_a_user_module(user_module, tmp_path):
    proc, run = train(user_module, tmp_path / "runs", f"env.id={user_module.id(user_module.env_id)}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent_steps"] == 512 and summary["epochs"] == 2 and summary["eval_episodes"] == 2


def test_cli_trains_a_user_callable_in_multiprocessing_workers(user_module, tmp_path):
    proc, run = train(
        user_module, tmp_path / "runs", f"env.id={user_module.id('make_corridor')}", "env.kwargs.length=3",
        "vectorization.backend=multiprocessing", "vectorization.num_envs=4", "vectorization.num_workers=2",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent_steps"] == 512 and summary["epochs"] == 2
    assert "kwargs:\n    length: 3" in (run / "config.yaml").read_text()


def test_cli_preflight_refuses_a_callable_that_is_not_an_env(user_module, capsys):
    env_id = user_module.id("make_not_an_env")
    with pytest.raises(SystemExit) as info:
        cli.preflight(["env.kind=gym", f"env.id={env_id}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: env.id={env_id!r} is invalid: {env_id} returned builtins.object, expected a gymnasium.Env"
    ]
