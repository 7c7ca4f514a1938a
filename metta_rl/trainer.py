"""The Trainer: wires the managers, owns progress, the policy, the hooks and the run directory.

    with Trainer(config) as trainer:        # setup() ... cleanup()
        trainer.train_epoch()               # one epoch, for notebooks
        result = trainer.train()            # to the step budget

Progress is one frozen :class:`TrainingProgress`, replaced once per epoch here and passed to
the managers as an argument; no manager keeps a copy, and none holds a reference to the Trainer.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from metta_rl.builtin_hooks import default_hooks
from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.environment import EnvironmentManager
from metta_rl.evaluation import EvalResult, EvaluationManager
from metta_rl.hooks import EpochReport, Hook, HookList, hook_from_spec
from metta_rl.optimizer import OptimizerManager
from metta_rl.policy import ActorCritic
from metta_rl.progress import TrainingProgress
from metta_rl.rollout import RolloutManager
from metta_rl.run_dir import RunDirectory
from metta_rl.stats import EpochTimings, StatsManager
from metta_rl.training import TrainingManager


@dataclass
class TrainResult:
    summary: dict[str, Any]
    progress: TrainingProgress
    metrics: dict[str, float] = field(default_factory=dict)
    eval: EvalResult | None = None


def default_run_name(config: TrainerConfig) -> str:
    return f"{config.env.name}-s{config.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def step_budget(config: TrainerConfig) -> int:
    """The agent steps actually trained: whole epochs, never more than ``trainer.total_timesteps``
    (CleanRL's rule; the config guarantees at least one batch)."""
    batch = config.trainer.batch_size
    return config.trainer.total_timesteps // batch * batch


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} is invalid: CUDA is not available on this machine (use 'cpu')")
    return torch.device(name)


class Trainer:
    def __init__(
        self,
        config: TrainerConfig | dict[str, Any],
        *,
        run_dir: str | Path | None = None,
        hooks: tuple[Hook, ...] | list[Hook] = (),
        console: bool = True,
    ) -> None:
        self.config = config if isinstance(config, TrainerConfig) else TrainerConfig.from_dict(config)
        if run_dir is None:
            run_dir = Path(self.config.runs_dir) / (self.config.run or default_run_name(self.config))
        self.run_dir = RunDirectory(run_dir)
        self.hooks = HookList()
        # Config hooks are built here, so an unimportable one fails before anything runs.
        self._user_hooks = [hook_from_spec(spec, i) for i, spec in enumerate(self.config.hooks)] + list(hooks)
        self._console = console
        self.progress = TrainingProgress(total_timesteps=step_budget(self.config))
        self.policy: ActorCritic | None = None
        self.env: EnvironmentManager | None = None
        self.evaluator: EvaluationManager | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval: EvalResult | None = None
        self._setup_done = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def setup(self) -> Trainer:
        """Build envs, policy and managers; only then create the run directory."""
        if self._setup_done:
            return self
        cfg = self.config
        self.run_dir.check_new()
        self.device = resolve_device(cfg.trainer.device)
        if cfg.trainer.torch_threads > 0:
            torch.set_num_threads(cfg.trainer.torch_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        try:
            self.env = EnvironmentManager(env=cfg.env, vectorization=cfg.vectorization, seed=cfg.seed)
            horizon = self.env.horizon(cfg.trainer.batch_size)
            self.policy = ActorCritic(
                obs_space=self.env.observation_space, action_space=self.env.action_space, config=cfg.policy
            ).to(self.device)
            self.optimizer = OptimizerManager(policy=self.policy, config=cfg.optimizer)
            self.rollout = RolloutManager(env=self.env, policy=self.policy, horizon=horizon, device=self.device)
            self.training = TrainingManager(
                ppo=cfg.ppo,
                loop=cfg.trainer,
                horizon=horizon,
                recurrent=cfg.policy.lstm,
                device=self.device,
                seed=cfg.seed,
            )
            self.stats = StatsManager()
            if cfg.evaluation.enabled:
                self.evaluator = EvaluationManager(
                    env=cfg.env, config=cfg.evaluation, seed=cfg.seed, device=self.device
                )
            self.run_dir.create(cfg.to_dict())
        except BaseException:
            self.cleanup()
            raise
        # User hooks run first, so their custom metrics and checks see each epoch before the
        # sinks (console, files, loggers) write it.
        for hook in self._user_hooks:
            self.hooks.add(hook)
        for hook in default_hooks(cfg, self.run_dir, console=self._console):
            self.hooks.add(hook)
        self._setup_done = True
        return self

    def add_hook(self, hook: Hook) -> None:
        self.hooks.add(hook)

    def cleanup(self) -> None:
        """Close envs and hooks. Safe to call more than once, and after a failed setup."""
        for closer in (self.env, self.evaluator):
            if closer is not None:
                closer.close()
        self.hooks.close()

    def __enter__(self) -> Trainer:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ training
    def _start(self) -> None:
        if not self._setup_done:
            self.setup()
        if not self._started:
            self._started = True
            self.hooks.call("on_train_start", progress=self.progress, config=self.config, run_dir=self.run_dir)

    def train_epoch(self) -> dict[str, float]:
        """Collect one batch, update once, evaluate if due; returns the epoch's metrics."""
        self._start()
        assert self.policy is not None
        t0 = time.perf_counter()
        rollout = self.rollout.collect(self.policy, self.progress)
        self.hooks.call("on_rollout_end", progress=self.progress, rollout=rollout)
        t1 = time.perf_counter()
        losses = self.training.update(self.policy, self.optimizer, self.rollout.buffer, self.progress)
        t2 = time.perf_counter()

        prev = self.progress
        step_after, epoch_after = prev.agent_step + rollout.agent_steps, prev.epoch + 1
        eval_metrics: dict[str, float] = {}
        epoch_eval: EvalResult | None = None
        final = step_after >= prev.total_timesteps
        if self.evaluator is not None and (self.evaluator.due(prev.epoch, epoch_after) or final):
            self.last_eval = epoch_eval = self.evaluator.evaluate(
                self.policy, agent_step=step_after, epoch=epoch_after
            )
            eval_metrics = epoch_eval.as_metrics()
        t3 = time.perf_counter()
        self.progress = progress = prev.advance(
            agent_steps=rollout.agent_steps, episodes=rollout.episodes, wall_seconds=t3 - t0
        )
        timings = EpochTimings(
            env=rollout.env_seconds, inference=rollout.inference_seconds, update=t2 - t1, total=t3 - t0
        )
        metrics = self.stats.record(progress, rollout, losses, timings, self.optimizer.lr)
        metrics.update(eval_metrics)
        report = EpochReport(progress=progress, rollout=rollout, losses=losses, timings=timings, eval=epoch_eval)
        metrics.update(self.hooks.custom_metrics(report))
        self.last_metrics = metrics
        self.hooks.call("on_epoch_end", progress=progress, metrics=MappingProxyType(metrics), report=report)
        return metrics

    def train(self) -> TrainResult:
        """Train until ``trainer.total_timesteps`` agent steps; writes ``summary.json``."""
        self._start()
        try:
            while not self.progress.done:
                self.train_epoch()
        except BaseException as exc:
            self.hooks.call("on_failure", progress=self.progress, error=exc)
            raise
        summary = self.summary()
        self.run_dir.write_summary(summary)
        self.hooks.call("on_train_end", progress=self.progress, summary=summary)
        return TrainResult(summary=summary, progress=self.progress, metrics=self.last_metrics, eval=self.last_eval)

    def evaluate(self) -> EvalResult:
        """Evaluate the current policy now (as configured in ``evaluation``), outside the schedule."""
        self._start()
        if self.evaluator is None:
            raise ConfigError("evaluation.enabled=False is invalid for Trainer.evaluate(): expected true")
        assert self.policy is not None
        self.last_eval = self.evaluator.evaluate(
            self.policy, agent_step=self.progress.agent_step, epoch=self.progress.epoch
        )
        return self.last_eval

    def summary(self) -> dict[str, Any]:
        p = self.progress
        ev = self.last_eval
        best = self.evaluator.tracker.best if self.evaluator is not None else None
        return {
            "run": self.run_dir.path.name,
            "env": self.config.env.name,
            "seed": self.config.seed,
            "agent_steps": p.agent_step,
            "epochs": p.epoch,
            "episodes": p.episodes,
            "wall_seconds": p.wall_seconds,
            "sps": p.agent_step / p.wall_seconds if p.wall_seconds > 0 else 0.0,
            "episode_return": self.last_metrics.get("overview/episode_return"),
            "eval_mean_return": ev.mean_return if ev else None,
            "eval_std_return": ev.std_return if ev else None,
            "eval_episodes": len(ev.returns) if ev else 0,
            "best_eval_mean_return": best.mean_return if best else None,
            "best_eval_agent_step": best.agent_step if best else None,
            "time_split": self.stats.time_split(),
        }
