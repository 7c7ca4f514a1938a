#!/usr/bin/env python
"""The one place speed is measured: for one env config, in one run,

- env_sps:       the vector env alone, random actions (agent steps/s)
- inference_sps: the policy alone, forward + action sampling on batches of the env's size
- train_sps:     full training (rollout + update + each epoch's bookkeeping), evaluation off,
                 steady state: wall-clock time of the epochs after the first ``--warmup-epochs``
- time_split:    share of training time in env / inference / update / other
- sb3_train_sps: with ``--vs-sb3``, Stable-Baselines3's PPO with the same settings (its
                 n_steps, batch_size, n_epochs, gamma, ... from this config; the ``bench`` extra),
                 same process, same torch threads, steady state measured the same way

    python tools/bench.py env=cartpole --json
    python tools/bench.py env=cartpole --vs-sb3 --repeats 3
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
from metta_rl.core.device import keep_freed_memory  # noqa: E402
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


def bench_train(config: TrainerConfig, warmup_epochs: int) -> dict:
    """Steady-state training SPS: agent steps over wall-clock seconds of every epoch after the
    first ``warmup_epochs`` (everything ``train_epoch`` does: rollout, update, statistics,
    the metrics line, checkpoints when due)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, run_dir=Path(tmp) / "bench", console=False)
        with trainer:
            start_step, start, start_cpu = 0, time.perf_counter(), time.process_time()
            while not trainer.progress.done:
                metrics = trainer.train_epoch()
                if trainer.progress.epoch == warmup_epochs:
                    start_step, start, start_cpu = trainer.progress.agent_step, time.perf_counter(), time.process_time()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
            split = trainer.stats.time_split()
            return {
                "train_sps": steps_per_second(trainer.progress.agent_step - start_step, seconds),
                "train_sps_cpu": steps_per_second(trainer.progress.agent_step - start_step, cpu_seconds),
                "train_agent_steps": trainer.progress.agent_step,
                "train_seconds": seconds,
                "final_episode_return": metrics["overview/episode_return"],
                "time_split": split,
            }


def sb3_settings(config: TrainerConfig) -> dict:
    """Stable-Baselines3 PPO keyword arguments equivalent to this config, or a one-line error
    naming the setting SB3 has no equivalent for."""
    ppo, opt, loop, pol = config.ppo, config.optimizer, config.trainer, config.policy
    unsupported = {
        "env.kind": (config.env.kind != "gym", "gym"),
        "policy.kind": (pol.kind not in ("auto", "mlp"), "auto or mlp"),
        "policy.lstm": (pol.lstm, "false"),
        "policy.shared_trunk": (pol.shared_trunk, "false (SB3's MlpPolicy has separate trunks)"),
        # SB3's clip_range_vf uses the clipped value alone; ours (CleanRL's) the larger loss.
        "ppo.clip_vloss": (ppo.clip_vloss, "false"),
        "optimizer.schedule": (opt.schedule == "cosine", "constant or linear"),
        "optimizer.min_lr_fraction": (opt.schedule == "linear" and opt.min_lr_fraction != 0, "0"),
        "optimizer.max_grad_norm": (opt.max_grad_norm is None, "a number"),
        "trainer.batch_size": (loop.batch_size % config.vectorization.num_envs != 0,
                               "a multiple of vectorization.num_envs"),
    }
    for name, (bad, expected) in unsupported.items():
        if bad:
            raise SystemExit(f"--vs-sb3: {name} has no Stable-Baselines3 equivalent here: expected {expected}")
    from torch import nn

    base = opt.learning_rate
    lr = (lambda remaining: base * remaining) if opt.schedule == "linear" else base
    return dict(
        n_steps=loop.batch_size // config.vectorization.num_envs,
        batch_size=loop.minibatch_size,
        n_epochs=loop.update_epochs,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip_coef,
        ent_coef=ppo.ent_coef,
        vf_coef=ppo.vf_coef,
        max_grad_norm=opt.max_grad_norm,
        normalize_advantage=ppo.norm_adv,
        target_kl=ppo.target_kl,
        learning_rate=lr,
        policy_kwargs=dict(
            net_arch=dict(pi=list(pol.hidden_sizes), vf=list(pol.hidden_sizes)),
            activation_fn={"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}[pol.activation],
            optimizer_class=torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam,
            optimizer_kwargs=dict(betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay),
        ),
    )


def bench_sb3(config: TrainerConfig, warmup_epochs: int) -> dict:
    """Stable-Baselines3 PPO on the same env with :func:`sb3_settings`, steady state measured
    as :func:`bench_train` does: from the start of rollout ``warmup_epochs`` to the end."""
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.logger import Logger
    except ImportError:
        raise SystemExit("--vs-sb3 needs Stable-Baselines3: pip install -e '.[bench]'") from None

    class Marks(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[tuple[float, int]] = []

        def _on_rollout_start(self) -> None:
            self.marks.append((time.perf_counter(), time.process_time(), self.model.num_timesteps))

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.marks.append((time.perf_counter(), time.process_time(), self.model.num_timesteps))

    settings = sb3_settings(config)
    env = make_vec_env(config.env.id, n_envs=config.vectorization.num_envs, seed=config.seed,
                       env_kwargs=dict(config.env.kwargs))
    try:
        model = PPO("MlpPolicy", env, device=config.trainer.device, seed=config.seed, verbose=0, **settings)
        # A logger with no outputs: SB3's default one makes a folder in the temp dir per learn().
        model.set_logger(Logger(folder=None, output_formats=[]))
        marks = Marks()
        model.learn(total_timesteps=config.trainer.total_timesteps, callback=marks)
    finally:
        env.close()
    (t0, c0, s0), (t1, c1, s1) = marks.marks[min(warmup_epochs, len(marks.marks) - 2)], marks.marks[-1]
    return {"sb3_train_sps": steps_per_second(s1 - s0, t1 - t0), "sb3_train_sps_cpu": steps_per_second(s1 - s0, c1 - c0),
            "sb3_agent_steps": s1}


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
    parser.add_argument("--warmup-epochs", type=int, default=10,
                        help="epochs (SB3: rollouts) not counted in the steady-state train SPS")
    parser.add_argument("--vs-sb3", action="store_true",
                        help="also train Stable-Baselines3's PPO with the same settings (the bench extra)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="training tests per side, taken in turn (ours, SB3, ours, ...); medians reported")
    args = parser.parse_args()
    cli.setup_logging()
    cli.preflight(args.overrides)
    overrides = list(args.overrides) + ["evaluation.enabled=false", "logging.console=off"]
    if args.steps is not None:
        overrides.append(f"trainer.total_timesteps={args.steps}")
    config = cli.to_trainer_config(cli.compose(overrides))
    torch.set_num_threads(config.trainer.torch_threads or torch.get_num_threads())
    if config.trainer.reuse_memory:  # as the Trainer sets up, so every part runs as in training
        keep_freed_memory()

    result = {
        "env": config.env.name,
        "backend": config.vectorization.backend,
        "num_envs": config.vectorization.num_envs,
        "batch_size": config.trainer.batch_size,
        "update_epochs": config.trainer.update_epochs,
        "env_sps": bench_env(config, args.seconds),
        "inference_sps": bench_inference(config, args.seconds),
    }
    if args.vs_sb3:
        sb3_settings(config)  # an unsupported setting fails before anything trains
    runs, sb3_runs = [], []
    for _ in range(max(args.repeats, 1)):
        runs.append(bench_train(config, args.warmup_epochs))
        if args.vs_sb3:
            sb3_runs.append(bench_sb3(config, args.warmup_epochs))
    result.update(runs[len(runs) // 2] if len(runs) % 2 else runs[-1])
    # Wall clock is what a user waits for; process CPU time (``*_cpu``) is steadier on a shared
    # machine, where other processes' load slows the wall clock of either side.
    for key in ("train_sps", "train_sps_cpu"):
        result[key] = float(np.median([r[key] for r in runs]))
        result[f"{key}_runs"] = [r[key] for r in runs]
    if sb3_runs:
        for key, ours in (("sb3_train_sps", "train_sps"), ("sb3_train_sps_cpu", "train_sps_cpu")):
            result[key] = float(np.median([r[key] for r in sb3_runs]))
            result[f"{key}_runs"] = [r[key] for r in sb3_runs]
            # Pair by pair (each SB3 run right after one of ours), so a drifting machine cancels out.
            ratios = [a[ours] / b[key] for a, b in zip(runs, sb3_runs)]
            suffix = ours.removeprefix("train_sps")
            result[f"speedup_vs_sb3{suffix}"] = float(np.median(ratios))
            result[f"speedup_vs_sb3{suffix}_runs"] = ratios
    result["machine"] = machine()
    result["command"] = " ".join(["python", "tools/bench.py", *sys.argv[1:]])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['env']} ({result['backend']}, {result['num_envs']} envs) on {result['machine']['cpu']}, "
          f"{result['machine']['cores']} cores, torch {result['machine']['torch']}")
    for key in ("env_sps", "inference_sps", "train_sps", "sb3_train_sps", "train_sps_cpu", "sb3_train_sps_cpu"):
        if key in result:
            runs_note = result.get(f"{key}_runs") or []
            extra = f"      (runs: {' / '.join(f'{v:,.0f}' for v in runs_note)})" if len(runs_note) > 1 else ""
            print(f"  {key:14s} {result[key]:>12,.0f} agent steps/s{extra}")
    split = result["time_split"]
    print("  training time  " + "  ".join(f"{k} {v:.0%}" for k, v in split.items()))
    for suffix, what in (("", "wall clock"), ("_cpu", "CPU time")):
        if f"speedup_vs_sb3{suffix}" in result:
            ratios = " / ".join(f"{r:.2f}" for r in result[f"speedup_vs_sb3{suffix}_runs"])
            print(f"  ours / SB3 ({what})  {result[f'speedup_vs_sb3{suffix}']:.2f}x (median of pairs: {ratios})")


if __name__ == "__main__":
    main()
