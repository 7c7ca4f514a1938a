"""The checks a config cannot make itself, because they need the runtime.

Building a :class:`~metta_rl.config.TrainerConfig` has no side effects. What needs the
runtime (importing a user's env module, looking an id up in Gymnasium's registry, calling a
``module:callable`` once to see that it returns an env, finding an optional extra) is here, in
:func:`check_runtime`, run once before anything trains: by the CLI's preflight for every job
of a command line, and by ``Trainer.setup()``. Each failure is one :class:`ConfigError` line
naming the field.
"""

from __future__ import annotations

import importlib.util

from metta_rl.config import ConfigError, EnvConfig, TrainerConfig
from metta_rl.envs.factories import check_env_id


def check_env(env: EnvConfig, *, field: str = "env") -> None:
    """Can this env be built here: its module imports, its id is registered, its callable
    returns an env. ``field`` names the env config in the message (``evaluation.tasks[0]``)."""
    check_env_id(env.kind, env.id, env.kwargs, field=f"{field}.id")


def check_runtime(config: TrainerConfig) -> None:
    """Every runtime check of a run's config: the training env, each eval task, the extras."""
    check_env(config.env)
    for i, task in enumerate(config.evaluation.tasks):
        check_env(task, field=f"evaluation.tasks[{i}]")
    if config.tensorboard.enabled and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard.enabled=True is invalid: expected false, or install the extra: "
            "pip install 'metta_rl[tensorboard]'"
        )
