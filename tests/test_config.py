"""TrainerConfig: defaults, dict round-trip and the one-line validation messages."""

from __future__ import annotations

import dataclasses

import pytest

from metta_rl.config import (
    ConfigError,
    OptimizerConfig,
    PPOConfig,
    TrainerConfig,
    TrainingLoopConfig,
    VectorizationConfig,
)


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


def test_unknown_gym_env_id():
    msg = _error({"env": {"kind": "gym", "id": "nope"}})
    assert "env.id" in msg
    assert "'nope'" in msg
    assert "Gymnasium" in msg  # what is allowed


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


def test_configs_are_plain_dataclasses():
    assert dataclasses.is_dataclass(TrainerConfig)
    assert OptimizerConfig().learning_rate == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "data",
    [{"optimizer": {"learning_rate": float("nan")}}, {"ppo": {"clip_coef": float("nan")}}],
    ids=["learning_rate", "clip_coef"],
)
def test_nan_is_not_a_positive_number(data):
    _error(data)
