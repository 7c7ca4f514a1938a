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
from typing import Any

from metta_rl.config import ConfigError, EnvConfig, TrainerConfig
from metta_rl.envs.factories import make_gym, check_env_id
from metta_rl.envs.user_code import one_line


def check_env(env: EnvConfig, *, field: str = "env") -> None:
    """Can this env be built here: its module imports, its id is registered, its callable
    returns an env. ``field`` names the env config in the message (``evaluation.tasks[0]``)."""
    check_env_id(env.kind, env.id, env.kwargs, field=f"{field}.id")


def check_tasks(env: EnvConfig) -> None:
    """A curriculum's tasks can be built and share one observation and action space (and, for
    MettaGrid, one agent count and token layout: one policy plays them all)."""
    first = None
    for i, task in enumerate(env.tasks):
        field = f"env.tasks[{i}]"
        check_env(task, field=field)
        spaces = _spaces(task, field)
        if first is None:
            first = spaces
            continue
        for what, mine in spaces.items():
            if mine != first[what]:
                raise ConfigError(
                    f"{field}={task.name!r} is invalid: its {what} {_short(mine)} differs from env.tasks[0]'s "
                    f"{_short(first[what])} (a curriculum's tasks share one observation and action space)"
                )


def _spaces(task: EnvConfig, field: str) -> dict[str, Any]:
    if task.kind == "mettagrid":
        from mettagrid.policy.policy_env_interface import PolicyEnvInterface

        from metta_rl.envs.mettagrid_config import mettagrid_config, token_layout

        interface = PolicyEnvInterface.from_mg_cfg(mettagrid_config(task))
        return {
            "observation space": interface.observation_space, "action space": interface.action_space,
            "agent count": int(interface.num_agents), "token features": token_layout(task).features,
        }
    try:
        env = make_gym(task.id, dict(task.kwargs), field=f"{field}.id")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - gym.make with the task's kwargs may raise anything
        raise ConfigError(
            f"{field}.kwargs={task.kwargs!r} is invalid: building the env raised {one_line(exc)}"
        ) from None
    try:
        return {"observation space": env.observation_space, "action space": env.action_space}
    finally:
        env.close()


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_runtime(config: TrainerConfig) -> None:
    """Every runtime check of a run's config: the training env (each task of its curriculum),
    each eval task, the extras."""
    if config.env.tasks:
        check_tasks(config.env)
    else:
        check_env(config.env)
    for i, task in enumerate(config.evaluation.tasks):
        check_env(task, field=f"evaluation.tasks[{i}]")
    if config.tensorboard.enabled and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard.enabled=True is invalid: expected false, or install the extra: "
            "pip install 'metta_rl[tensorboard]'"
        )
