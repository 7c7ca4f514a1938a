#!/usr/bin/env python
"""The one place speed is measured: for one env config, in one run,

- env_sps:       the vector env alone, random actions (agent steps/s)
- inference_sps: the policy alone, forward + action sampling on batches of the env's size
- train_sps:     full training (rollout + update), evaluation off
- time_split:    share of training time in env / inference / update / other

    python tools/bench.py env=cartpole --json
    python tools/bench.py env=cartpole vectorization.backend=multiprocessing vectorization.num_workers=2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metta_rl import cli  # noqa: E402
from metta_rl.config import TrainerConfig  # noqa: E402
from metta_rl.managers.environment import EnvironmentManager  # noqa: E402
from metta_rl.core.policy import action_nvec, sample_actions  # noqa: E402
from metta_rl.core.policy_factory import make_policy  # noqa: E402
from metta_rl.core.progress import steps_per_second  # noqa: E402
from metta_rl.trainer import Trainer  # noqa: E402


def bench_env(config: TrainerConfig, seconds: float) -> float:
    env = EnvironmentManager(env=config.env, vectorization=config.vectorization, seed=config.seed)
    try:
        nvec = np.array(action_nvec(env.action_space))
        rng = np.random.default_rng(0)
        env.reset()
        steps, start = 0, None
        warmup = 20
        while True:
            batch = env.recv()
            n = batch.rows.stop - batch.rows.start
            env.send(rng.integers(0, nvec, size=(n, len(nvec))))
            warmup -= 1
            if warmup == 0:
                start = time.perf_counter()
            elif warmup < 0:
                steps += n
                if time.perf_counter() - start >= seconds:
                    return steps_per_second(steps, time.perf_counter() - start)
    finally:
        env.close()


def bench_inference(config: TrainerConfig, seconds: float) -> float:
    env = EnvironmentManager(env=config.env, vectorization=config.vectorization, seed=config.seed)
    try:
        env.reset()
        obs = torch.from_numpy(np.array(env.recv().obs))
        policy = make_policy(
            obs_space=env.observation_space, action_space=env.action_space, config=config.policy,
            token_layout=env.token_layout, env_kind=config.env.kind,
        )
    finally:
        env.close()
    policy.eval()  # as the rollout runs it
    state = policy.initial_state(obs.shape[0])
    first = torch.zeros(obs.shape[0]) if state is not None else None
    steps, calls = 0, 0
    with torch.inference_mode():
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            logits, _, state = policy.forward_step(obs, state, first)
            sample_actions(logits, policy.nvec)
            steps += obs.shape[0]
            calls += 1
        return steps_per_second(steps, time.perf_counter() - start)


def bench_train(config: TrainerConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, run_dir=Path(tmp) / "bench", console=False)
        with trainer:
            epoch_seconds = 0.0
            while not trainer.progress.done:
                metrics = trainer.train_epoch()
                epoch_seconds += metrics["timing/epoch_seconds"]
            split = trainer.stats.time_split()
            return {
                "train_sps": steps_per_second(trainer.progress.agent_step, epoch_seconds),
                "train_agent_steps": trainer.progress.agent_step,
                "train_seconds": epoch_seconds,
                "final_episode_return": metrics["overview/episode_return"],
                "time_split": split,
            }


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for tools/train.py")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the env and inference tests")
    parser.add_argument("--steps", type=int, default=None, help="agent steps for the training test")
    args = parser.parse_args()
    cli.setup_logging()
    cli.preflight(args.overrides)
    overrides = list(args.overrides) + ["evaluation.enabled=false", "logging.console=off"]
    if args.steps is not None:
        overrides.append(f"trainer.total_timesteps={args.steps}")
    config = cli.to_trainer_config(cli.compose(overrides))
    torch.set_num_threads(config.trainer.torch_threads or torch.get_num_threads())

    result = {
        "env": config.env.name,
        "backend": config.vectorization.backend,
        "num_envs": config.vectorization.num_envs,
        "batch_size": config.trainer.batch_size,
        "update_epochs": config.trainer.update_epochs,
        "env_sps": bench_env(config, args.seconds),
        "inference_sps": bench_inference(config, args.seconds),
    }
    result.update(bench_train(config))
    result["machine"] = machine()
    result["command"] = " ".join(["python", "tools/bench.py", *sys.argv[1:]])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['env']} ({result['backend']}, {result['num_envs']} envs) on {result['machine']['cpu']}, "
          f"{result['machine']['cores']} cores, torch {result['machine']['torch']}")
    for key in ("env_sps", "inference_sps", "train_sps"):
        print(f"  {key:14s} {result[key]:>12,.0f} agent steps/s")
    split = result["time_split"]
    print("  training time  " + "  ".join(f"{k} {v:.0%}" for k, v in split.items()))


if __name__ == "__main__":
    main()
