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
