"""TrainerConfig: defaults, dict round-trip and the one-line validation messages."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

from metta_rl.config import (
    ConfigError,
    EnvConfig,
    EvaluationConfig,
    PPOConfig,
    TrainerConfig,
    TrainingLoopConfig,
    VectorizationConfig,
)
from tests.integration_utils import REPO


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        TrainerConfig.from_dict(data)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


# ---------------------------------------------------------------------------------- defaults
def test_defaults_are_valid():
    cfg = TrainerConfig()
    assert cfg.env.kind == "gym" and cfg.env.id == "CartPole-v1"
    assert cfg.trainer.batch_size % cfg.trainer.minibatch_size == 0
    assert cfg.vectorization.num_workers <= cfg.vectorization.num_envs
    assert cfg.optimizer.schedule in ("constant", "linear", "cosine")


def test_empty_dict_gives_defaults():
    assert TrainerConfig.from_dict({}) == TrainerConfig()


def test_to_dict_is_plain_nested_dict():
    data = TrainerConfig().to_dict()
    assert isinstance(data, dict)
    assert isinstance(data["ppo"], dict) and data["ppo"]["gamma"] == 0.99
    assert isinstance(data["policy"]["hidden_sizes"], list)


def test_from_dict_round_trip_of_defaults():
    cfg = TrainerConfig()
    again = TrainerConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_from_dict_round_trip_of_non_defaults():
    data = {
        "seed": 7,
        "run": "my-run",
        "env": {"name": "acrobot", "kind": "gym", "id": "Acrobot-v1", "kwargs": {"max_episode_steps": 50}},
        "policy": {"hidden_sizes": [32, 16], "activation": "relu", "lstm": True, "lstm_hidden_size": 8},
        "trainer": {"total_timesteps": 1000, "batch_size": 64, "minibatch_size": 32, "update_epochs": 2},
        "ppo": {"gamma": 0.9, "clip_vloss": True, "target_kl": 0.02},
        "optimizer": {"type": "adamw", "schedule": "cosine", "min_lr_fraction": 0.1, "max_grad_norm": None},
        "vectorization": {"backend": "multiprocessing", "num_envs": 4, "num_workers": 2, "batch_size": 2},
        "wandb": {"tags": ["a", "b"], "entity": None},
    }
    cfg = TrainerConfig.from_dict(data)
    assert cfg.policy.hidden_sizes == [32, 16]
    assert cfg.optimizer.max_grad_norm is None
    assert cfg.ppo.target_kl == 0.02
    assert cfg.vectorization.envs_per_batch == 2
    again = TrainerConfig.from_dict(cfg.to_dict())
    assert again == cfg
    # fields not given keep their defaults
    assert cfg.ppo.gae_lambda == PPOConfig().gae_lambda


def test_from_dict_coerces_numbers():
    cfg = TrainerConfig.from_dict({"ppo": {"gamma": 1}, "trainer": {"batch_size": 512.0, "minibatch_size": 256}})
    assert isinstance(cfg.ppo.gamma, float) and cfg.ppo.gamma == 1.0
    assert isinstance(cfg.trainer.batch_size, int) and cfg.trainer.batch_size == 512


def test_from_dict_none_section_means_defaults():
    assert TrainerConfig.from_dict({"ppo": None}).ppo == PPOConfig()


# ---------------------------------------------------------------------------------- messages
def test_batch_not_divisible_by_minibatch():
    msg = _error({"trainer": {"batch_size": 100, "minibatch_size": 64}})
    assert "trainer.batch_size" in msg
    assert "100" in msg
    assert "multiple" in msg and "trainer.minibatch_size=64" in msg


def test_batch_not_divisible_direct_construction():
    with pytest.raises(ConfigError, match=r"trainer\.batch_size=100 .*multiple.*64"):
        TrainingLoopConfig(batch_size=100, minibatch_size=64)


def test_num_workers_more_than_num_envs():
    msg = _error({"vectorization": {"num_envs": 2, "num_workers": 4}})
    assert "vectorization.num_workers" in msg
    assert "4" in msg
    assert "at most" in msg and "num_envs=2" in msg
    with pytest.raises(ConfigError, match="vectorization.num_workers"):
        VectorizationConfig(num_envs=2, num_workers=4)


def test_negative_total_timesteps():
    msg = _error({"trainer": {"total_timesteps": -5}})
    assert "trainer.total_timesteps" in msg
    assert "-5" in msg
    assert "integer >= 1" in msg


def test_unknown_key_typo_suggests_the_right_field():
    msg = _error({"ppo": {"gama": 0.9}})
    assert "'ppo.gama'" in msg
    assert "'ppo.gamma'" in msg  # the suggestion
    assert "allowed" in msg and "gae_lambda" in msg


def test_unknown_top_level_key():
    msg = _error({"tranier": {}})
    assert "'tranier'" in msg and "'trainer'" in msg


def test_bad_choice():
    msg = _error({"optimizer": {"schedule": "expo"}})
    assert "optimizer.schedule" in msg
    assert "'expo'" in msg
    for allowed in ("constant", "linear", "cosine"):
        assert allowed in msg


def test_wrong_type():
    msg = _error({"trainer": {"batch_size": "big"}})
    assert "trainer.batch_size" in msg
    assert "'big'" in msg
    assert "integer" in msg


def test_bool_is_not_an_integer():
    msg = _error({"trainer": {"batch_size": True}})
    assert "trainer.batch_size" in msg and "True" in msg


def test_section_that_is_not_a_mapping():
    msg = _error({"ppo": 5})
    assert "ppo" in msg and "5" in msg and "mapping" in msg


@pytest.mark.parametrize(
    ("data", "field", "value"),
    [
        ({"ppo": {"gamma": 1.5}}, "ppo.gamma", "1.5"),
        ({"ppo": {"target_kl": 0}}, "ppo.target_kl", "0"),
        ({"policy": {"hidden_sizes": []}}, "policy.hidden_sizes", "[]"),
        ({"policy": {"hidden_sizes": [64, "a"]}}, "policy.hidden_sizes[1]", "'a'"),
        ({"policy": {"activation": "swish"}}, "policy.activation", "'swish'"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas", "[0.9]"),
        ({"optimizer": {"min_lr_fraction": 2.0}}, "optimizer.min_lr_fraction", "2.0"),
        ({"optimizer": {"type": "sgd"}}, "optimizer.type", "'sgd'"),
        ({"seed": -1}, "seed", "-1"),
        ({"run": "a/b"}, "run", "'a/b'"),
        ({"trainer": {"device": "tpu"}}, "trainer.device", "'tpu'"),
        ({"vectorization": {"num_envs": 6, "num_workers": 4}}, "vectorization.num_envs", "6"),
        ({"vectorization": {"num_envs": 8, "num_workers": 2, "batch_size": 4}}, "vectorization.batch_size", "4"),
        ({"env": {"kind": "foo"}}, "env.kind", "'foo'"),
        ({"env": {"kind": "mettagrid", "id": "x"}}, "env.id", "'x'"),
        ({"env": {"kind": "pettingzoo", "id": "nomodule"}}, "env.id", "'nomodule'"),
        ({"evaluation": {"num_episodes": 0}}, "evaluation.num_episodes", "0"),
        ({"checkpoint": {"keep_last": 0}}, "checkpoint.keep_last", "0"),
        ({"wandb": {"mode": "cloud"}}, "wandb.mode", "'cloud'"),
        ({"logging": {"console": "tty"}}, "logging.console", "'tty'"),
        ({"ppo": {"clip_vloss": 1}}, "ppo.clip_vloss", "1"),
    ],
)
def test_other_validations_name_field_and_value(data, field, value):
    msg = _error(data)
    assert msg.startswith(f"{field}={value}"), msg
    assert "expected" in msg or "invalid" in msg


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_configs_are_closed_pydantic_models():
    assert issubclass(TrainerConfig, pydantic.BaseModel)
    for model in (TrainerConfig, PPOConfig, EnvConfig, VectorizationConfig):
        assert model.model_config["extra"] == "forbid"
        assert model.model_config["validate_assignment"] is True


@pytest.mark.parametrize(
    "data",
    [{"optimizer": {"learning_rate": float("nan")}}, {"ppo": {"clip_coef": float("nan")}}],
    ids=["learning_rate", "clip_coef"],
)
def test_nan_is_not_a_positive_number(data):
    _error(data)


# ---------------------------------------------------------------------------------- strictness
@pytest.mark.parametrize("value", [1.5, "abc", "4", True], ids=["fraction", "text", "numeric-text", "bool"])
def test_integer_field_rejects_non_integers(value):
    msg = _error({"trainer": {"update_epochs": value}})
    assert msg.startswith(f"trainer.update_epochs={value!r} is invalid"), msg
    assert "integer" in msg


def test_integer_field_takes_a_whole_float_as_an_int():
    cfg = TrainerConfig.from_dict({"trainer": {"update_epochs": 4.0}, "vectorization": {"num_envs": 2e1}})
    assert cfg.trainer.update_epochs == 4 and type(cfg.trainer.update_epochs) is int
    assert cfg.vectorization.num_envs == 20 and type(cfg.vectorization.num_envs) is int


@pytest.mark.parametrize("value", [1, 0, "true"], ids=["one", "zero", "text"])
def test_bool_field_takes_only_bools(value):
    msg = _error({"ppo": {"norm_adv": value}})
    assert msg == f"ppo.norm_adv={value!r} is invalid: expected true or false"


@pytest.mark.parametrize("value", [True, "0.9", None], ids=["bool", "text", "null"])
def test_number_field_rejects_non_numbers(value):
    msg = _error({"ppo": {"gae_lambda": value}})
    assert msg == f"ppo.gae_lambda={value!r} is invalid: expected a number in [0, 1]"


def test_string_field_takes_a_number_as_its_text_but_not_a_bool():
    # `run=123` on a Hydra command line arrives as an int.
    assert TrainerConfig.from_dict({"run": 123}).run == "123"
    assert _error({"run": True}) == "run=True is invalid: expected a string or null"


def test_list_field_takes_a_tuple():
    assert TrainerConfig.from_dict({"optimizer": {"betas": (0.8, 0.9)}}).optimizer.betas == [0.8, 0.9]


# ---------------------------------------------------------------------------------- building in Python
def test_direct_construction_with_nested_kwargs():
    cfg = TrainerConfig(ppo={"gamma": 0.5}, trainer={"total_timesteps": 512, "batch_size": 128, "minibatch_size": 64})
    assert isinstance(cfg.ppo, PPOConfig) and cfg.ppo.gamma == 0.5
    assert cfg.trainer.batch_size == 128
    assert cfg == TrainerConfig.from_dict(cfg.to_dict())


def test_direct_construction_errors_are_one_config_error_line():
    with pytest.raises(ConfigError) as info:
        TrainerConfig(ppo={"gamma": 2})
    assert str(info.value) == "ppo.gamma=2 is invalid: expected a number in [0, 1]"
    with pytest.raises(ConfigError, match=r"^unknown config field 'ppo\.gama' \(did you mean 'ppo\.gamma'\?\)"):
        PPOConfig(gama=0.9)
    with pytest.raises(ConfigError, match=r"^evaluation\.num_envs=0 is invalid: expected an integer >= 1$"):
        EvaluationConfig(num_envs=0)


def test_assignment_is_validated_and_a_refused_value_is_not_kept():
    cfg = TrainerConfig()
    cfg.ppo.gamma = 0.9
    assert cfg.ppo.gamma == 0.9
    with pytest.raises(ConfigError) as info:
        cfg.ppo.gamma = 1.5
    assert str(info.value) == "ppo.gamma=1.5 is invalid: expected a number in [0, 1]"
    assert cfg.ppo.gamma == 0.9
    # a cross-field rule is checked on assignment too, and the old value stays
    refused = r"^trainer\.batch_size=100 is invalid: expected a multiple of trainer\.minibatch_size=256$"
    with pytest.raises(ConfigError, match=refused):
        cfg.trainer.batch_size = 100
    assert cfg.trainer.batch_size == 256
    typo = r"^unknown config field 'trainer\.batch_sise' \(did you mean 'trainer\.batch_size'\?\)"
    with pytest.raises(ConfigError, match=typo):
        cfg.trainer.batch_sise = 512
    with pytest.raises(ConfigError, match=r"^ppo=5 is invalid: expected a mapping$"):
        cfg.ppo = 5


def test_replace_is_a_validated_copy():
    cfg = TrainerConfig()
    other = cfg.replace(seed=3)
    assert other.seed == 3 and cfg.seed == 0 and other.ppo == cfg.ppo
    with pytest.raises(ConfigError, match=r"^seed=-3 is invalid"):
        cfg.replace(seed=-3)


def test_to_dict_is_yaml_safe():
    import yaml

    data = TrainerConfig.from_dict({"evaluation": {"tasks": [{"name": "a"}]}, "hooks": ["m:H"]}).to_dict()
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert data["evaluation"]["tasks"][0]["id"] == "CartPole-v1"


# ---------------------------------------------------------------------------------- cross-field rules
def test_eval_task_errors_name_the_task():
    assert _error({"evaluation": {"tasks": [{"name": "a"}, {"name": "b", "kind": "mettagrid", "id": "x"}]}}) == (
        "evaluation.tasks[1].id='x' is invalid: expected a MettaGrid task, one of navigation, arena, tiny, "
        "or 'module:callable' returning a MettaGridConfig"
    )
    msg = _error({"evaluation": {"tasks": [{"name": "a", "idd": "CartPole-v1"}]}})
    assert msg.startswith("unknown config field 'evaluation.tasks[0].idd' (did you mean 'evaluation.tasks[0].id'?)")


def test_eval_task_names_must_be_unique():
    msg = _error({"evaluation": {"tasks": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}})
    assert msg == "evaluation.tasks=['a', 'b', 'a'] is invalid: expected tasks with distinct names"


@pytest.mark.parametrize(
    "spec", ["no_colon", "a:b:c", {"kwargs": 1}, 5], ids=["no-colon", "two-colons", "no-target", "int"]
)
def test_hook_spec_format(spec):
    msg = _error({"hooks": ["ok.module:Hook", spec]})
    assert msg.startswith(f"hooks[1]={spec!r} is invalid: expected 'module:Class'"), msg
    assert TrainerConfig.from_dict({"hooks": ["m:H", {"target": "m:H", "x": 1}]}).hooks[1] == {"target": "m:H", "x": 1}


def test_serial_backend_steps_every_env_at_once():
    msg = _error({"vectorization": {"backend": "serial", "num_envs": 4, "num_workers": 2, "batch_size": 2}})
    assert msg.startswith("vectorization.batch_size=2 is invalid") and "backend=multiprocessing" in msg
    assert TrainerConfig.from_dict({"vectorization": {"backend": "multiprocessing", "num_envs": 4, "num_workers": 2,
                                                      "batch_size": 2}}).vectorization.envs_per_batch == 2


def test_total_timesteps_must_hold_one_batch():
    msg = _error({"trainer": {"total_timesteps": 100, "batch_size": 128, "minibatch_size": 64}})
    assert msg == "trainer.total_timesteps=100 is invalid: expected at least one batch (trainer.batch_size=128)"


# ---------------------------------------------------------------------------------- no side effects
def test_building_a_config_imports_nothing_and_checks_no_install(tmp_path, monkeypatch):
    import importlib
    import importlib.util

    (tmp_path / "config_side_effect_env.py").write_text("raise RuntimeError('imported while building a config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    monkeypatch.setattr(importlib, "import_module", lambda *a, **k: calls.append(("import_module", a)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a, **k: calls.append(("find_spec", a)))
    cfg = TrainerConfig.from_dict({
        "env": {"kind": "gym", "id": "config_side_effect_env:make"},
        "evaluation": {"tasks": [{"name": "pz", "kind": "pettingzoo", "id": "config_side_effect_env:make_pz"}]},
        "tensorboard": {"enabled": True},
        "hooks": ["config_side_effect_env:Hook"],
    })
    assert cfg.env.id == "config_side_effect_env:make"
    assert calls == [] and "config_side_effect_env" not in sys.modules


def test_config_module_imports_nothing_from_metta_rl():
    import ast

    tree = ast.parse((REPO / "metta_rl" / "config.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "metta_rl"], imported
    # and loading it on its own (no package __init__) pulls in no env library
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('c', 'metta_rl/config.py');"
        "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m; spec.loader.exec_module(m);"
        "m.TrainerConfig();"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('metta_rl', 'gymnasium', 'pufferlib', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
