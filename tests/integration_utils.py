"""Small configs and helpers shared by the integration tests (test_environment, test_rollout,
test_trainer). Everything is sized to run in well under a second per epoch on one CPU core."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from metta_rl.config import TrainerConfig

REPO = Path(__file__).resolve().parent.parent
PZ_ENV_ID = "tests.envs_for_tests:make_pz_env"

# 4 CartPole envs x 16 steps = one 64-step epoch; a 1-epoch update of 2 minibatches.
BASE: dict[str, Any] = {
    "seed": 0,
    "env": {"name": "cartpole", "kind": "gym", "id": "CartPole-v1", "kwargs": {}},
    "policy": {"hidden_sizes": [16], "shared_trunk": False, "lstm": False},
    "trainer": {"total_timesteps": 64 * 100, "batch_size": 64, "minibatch_size": 32, "update_epochs": 1},
    "vectorization": {"backend": "serial", "num_envs": 4, "num_workers": 1},
    "evaluation": {"num_episodes": 2, "num_envs": 2, "evaluate_interval": 0},
    "logging": {"console": "off"},
}

PZ_ENV = {"name": "tiny_pz", "kind": "pettingzoo", "id": PZ_ENV_ID, "kwargs": {}}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_dict(**overrides: Any) -> dict[str, Any]:
    """BASE with nested overrides: ``config_dict(trainer={"batch_size": 128})``."""
    return merge(BASE, overrides)


def make_config(**overrides: Any) -> TrainerConfig:
    return TrainerConfig.from_dict(config_dict(**overrides))


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root``: relative path -> (mtime_ns, contents)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()
    }



def run_tool(
    script: str, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` as a user would, from the repo root, with output captured;
    ``extra_env`` adds environment variables (``PYTHONPATH`` for a user's env module)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, f"tools/{script}", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def eval_score(config: TrainerConfig, policy: Any, *, deterministic: bool | None = None) -> float:
    """``policy``'s mean return under ``config``'s evaluation (its own envs and seeds)."""
    import torch

    from metta_rl.managers.evaluation import EvaluationManager

    ev_cfg = config.evaluation if deterministic is None else config.evaluation.replace(deterministic=deterministic)
    manager = EvaluationManager(env=config.env, config=ev_cfg, seed=config.seed, device=torch.device("cpu"))
    try:
        return manager.evaluate(policy, agent_step=0, epoch=0).mean_return
    finally:
        manager.close()


def best_policy_score(run_dir: Path) -> float:
    """The score of the policy ``checkpoints/best`` keeps, evaluated afresh from the checkpoint."""
    from metta_rl.records.checkpoint import load_checkpoint, policy_from_checkpoint

    best = load_checkpoint(run_dir / "checkpoints" / "best")
    return eval_score(best.config, policy_from_checkpoint(best))


def random_policy_score(config: TrainerConfig) -> float:
    """The same evaluation of an untrained policy acting by sampling: its near-uniform action
    head (gain 0.01) makes it a random policy, the baseline a learning test compares with."""
    from metta_rl.core.policy import ActorCritic
    from metta_rl.envs.factories import EnvCreator

    env = EnvCreator(config.env.kind, config.env.id, tuple(sorted(config.env.kwargs.items())), config.seed, 1, 0)()
    try:
        policy = ActorCritic(obs_space=env.single_observation_space, action_space=env.single_action_space,
                             config=config.policy)
    finally:
        env.close()
    return eval_score(config, policy, deterministic=False)
