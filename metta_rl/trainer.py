"""The Trainer: wires the managers, owns progress, the policy, the hooks and the run directory.

    with Trainer(config) as trainer:        # setup() ... cleanup()
        trainer.train_epoch()               # one epoch, for notebooks
        result = trainer.train()            # to the step budget, or trainer.target_return

Training stops at the first of: an evaluation of the current policy reaching
``trainer.target_return``, the step budget, a hook's :class:`~metta_rl.hooks.StopTraining`, a
signal; ``summary.json`` says which (``stop_reason``) and where (``agent_steps``, ``epochs``).
The first two are read from what a checkpoint restores (progress, the latest evaluation), so a
run that stopped is still stopped when the same command runs again, and goes on when the
budget or the target is raised.

Progress is one frozen :class:`TrainingProgress`, replaced once per epoch here and passed to
the managers as an argument; no manager keeps a copy, and none holds a reference to the Trainer.

A checkpoint is the union of every manager's ``state_dict`` plus progress and RNG states:
:meth:`Trainer.checkpoint_state` is the one place that gathers it and
:meth:`Trainer.load_checkpoint` the one place that puts it back (resume, rollback, notebooks).
When, where and which one is the :class:`~metta_rl.records.checkpointer.Checkpointer`'s.
The run record (metrics.jsonl, summary.json) is written here, not by a hook: a record that
cannot be written stops the run (:class:`~metta_rl.records.run_dir.RunRecordError`).

Under torchrun (:mod:`metta_rl.distributed`) every rank runs this same loop on envs of its own
and the update averages gradients, so the weights stay identical; agent steps are counted over
all ranks. Rank 0 alone has side effects: hooks (console, W&B, TensorBoard...), the run record,
checkpoints, evaluation and replays. It finds the checkpoint to resume and every rank loads
that same state; it decides when to stop (budget, target, a hook), every rank's signals count,
and all ranks stop after the same epoch.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from metta_rl.records import checkpoint as ckpt_files
from metta_rl.hooks.builtin import default_hooks
from metta_rl.records.checkpoint import Checkpoint, CheckpointError
from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.envs.checks import check_runtime
from metta_rl.managers.environment import EnvironmentManager
from metta_rl.managers.evaluation import EvalResult, EvaluationManager
from metta_rl.managers.guard import NonFiniteGuard, TrainingError
from metta_rl.hooks import EpochReport, Hook, HookList, hook_from_spec
from metta_rl.managers.optimizer import OptimizerManager
from metta_rl.core.policy import Policy
from metta_rl.core.policy_factory import make_policy
from metta_rl.core.device import compile_policy, keep_freed_memory
from metta_rl.core.progress import TrainingProgress, steps_per_second
from metta_rl.distributed import SINGLE, Distributed, global_batch, rank_batch
from metta_rl.managers.rollout import RolloutManager, RolloutResult
from metta_rl.records.checkpointer import Checkpointer
from metta_rl.records.run_dir import RunDirectory
from metta_rl.signals import StopSignals, TrainingInterrupted
from metta_rl.managers.stats import EpochTimings, StatsManager
from metta_rl.managers.training import TrainingManager

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    summary: dict[str, Any]
    progress: TrainingProgress
    metrics: dict[str, float] = field(default_factory=dict)
    eval: EvalResult | None = None


def default_run_name(config: TrainerConfig) -> str:
    return f"{config.env.name}-s{config.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def step_budget(config: TrainerConfig, world_size: int = 1) -> int:
    """The agent steps actually trained (over all ranks): whole epochs, never more than
    ``trainer.total_timesteps`` (CleanRL's rule; the config guarantees at least one batch)."""
    batch = global_batch(config.trainer, world_size)
    if batch > config.trainer.total_timesteps:
        raise ConfigError(
            f"trainer.total_timesteps={config.trainer.total_timesteps} is invalid: expected at least one "
            f"batch of {world_size} ranks x trainer.batch_size={config.trainer.batch_size} (batch_scope=per_rank)"
        )
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
        self.policy: Policy | None = None
        self.env: EnvironmentManager | None = None
        self.evaluator: EvaluationManager | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval: EvalResult | None = None
        self.checkpointer = Checkpointer(run_path=self.run_dir.path, config=self.config.checkpoint)
        self.guard = NonFiniteGuard(self.config.guard)
        self.eval_failures = 0
        self.dist: Distributed = SINGLE
        self._signals: StopSignals | None = None
        self._agreed_stop: str | None = None  # rank 0's stop decision, on the other ranks
        self._setup_done = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def setup(self) -> Trainer:
        """Build envs, policy and managers; only then create the run directory."""
        if self._setup_done:
            return self
        cfg = self.config
        # Rules across sections (trainer.target_return needs periodic evaluations) again: an
        # assignment to a nested section (config.trainer.target_return = 475) validates only it.
        TrainerConfig.from_dict(cfg.to_dict())
        check_runtime(cfg)
        self.dist = dist = Distributed.from_env(
            device_type=cfg.trainer.device.split(":")[0], timeout_s=cfg.trainer.dist_timeout_s
        )
        try:
            self._setup(cfg, dist)
        except BaseException:
            self.cleanup()
            raise
        if dist.is_main:
            # User hooks run first, so their custom metrics and checks see each epoch before the
            # sinks (console, files, loggers) write it.
            for hook in self._user_hooks:
                self.hooks.add(hook)
            for hook in default_hooks(cfg, self.run_dir, console=self._console):
                self.hooks.add(hook)
        self._setup_done = True
        # A resumed run may be finished already: rank 0 knows, and stop_reason() agrees everywhere.
        self._agree_on_stop()
        return self

    def _setup(self, cfg: TrainerConfig, dist: Distributed) -> None:
        if dist.enabled:
            run_path = Path(dist.agree_on_run(str(self.run_dir.path), cfg.to_dict()))
            self.run_dir = RunDirectory(run_path)
            self.checkpointer = Checkpointer(run_path=run_path, config=cfg.checkpoint)
        self.progress = TrainingProgress(total_timesteps=step_budget(cfg, dist.world_size))
        if cfg.resume == "never" and dist.is_main:
            self.run_dir.check_new()
        self.device = resolve_device(str(dist.device(cfg.trainer.device)))
        if cfg.trainer.torch_threads > 0:
            torch.set_num_threads(cfg.trainer.torch_threads)
        if cfg.trainer.reuse_memory:
            keep_freed_memory()
        # The same seed on every rank: the same initial weights (rank 0's are broadcast anyway).
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.env = EnvironmentManager(env=cfg.env, vectorization=cfg.vectorization, seed=cfg.seed, rank=dist.rank)
        batch, minibatch = rank_batch(cfg.trainer, dist.world_size)
        split = dist.world_size if cfg.trainer.batch_scope == "global" else 1
        horizon = self.env.horizon(batch, ranks=split)
        self.policy = make_policy(
            obs_space=self.env.observation_space, action_space=self.env.action_space, config=cfg.policy,
            token_layout=self.env.token_layout, env_kind=cfg.env.kind,
        ).to(self.device)
        dist.broadcast_module(self.policy)
        dist.seed_rank(cfg.seed, start=0)
        if cfg.trainer.compile:
            compile_policy(self.policy)
        self.optimizer = OptimizerManager(policy=self.policy, config=cfg.optimizer, dist=dist)
        self.rollout = RolloutManager(
            env=self.env, policy=self.policy, horizon=horizon, device=self.device, amp=cfg.trainer.amp,
            overlap=cfg.trainer.overlap_rollout,
        )
        loop = cfg.trainer if (batch, minibatch) == (cfg.trainer.batch_size, cfg.trainer.minibatch_size) else \
            cfg.trainer.replace(batch_size=batch, minibatch_size=minibatch)
        self.training = TrainingManager(
            ppo=cfg.ppo, loop=loop, horizon=horizon, recurrent=self.policy.is_recurrent, device=self.device,
            seed=cfg.seed, dist=dist,
        )
        self.stats = StatsManager()
        if cfg.evaluation.enabled and dist.is_main:
            self.evaluator = EvaluationManager(
                env=cfg.env, config=cfg.evaluation, seed=cfg.seed, device=self.device,
                target=cfg.trainer.target_return is not None,
            )
        resumed = self.checkpointer.resume(cfg.resume, restore=self.load_checkpoint, map_location=self.device, dist=dist)
        if resumed is not None:
            dist.seed_rank(cfg.seed, start=resumed.epoch)  # not rank 0's restored RNG streams
        if dist.is_main:
            self.run_dir.open(cfg.to_dict(), resume_step=resumed.progress.agent_step if resumed else None)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoints_dir(self) -> Path:
        return self.checkpointer.dir

    @property
    def resumed_from(self) -> Path | None:
        return self.checkpointer.resumed_from

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpointer.last

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything that must survive a restart: the one place a checkpoint is gathered."""
        assert self.policy is not None
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "training": self.training.state_dict(),
            "stats": self.stats.state_dict(),
            "evaluation": self.evaluator.state_dict() if self.evaluator is not None else None,
            "guard": self.guard.state_dict(),
            "environment": self.env.state_dict() if self.env is not None else {},
            "eval_failures": self.eval_failures,
            "progress": asdict(self.progress),
            "rng": ckpt_files.capture_rng(),
        }

    def _spaces(self) -> dict[str, Any]:
        assert self.env is not None and self.policy is not None
        space = self.env.observation_space
        return {
            "observation": {"shape": list(space.shape), "dtype": str(space.dtype)},
            "action": {"nvec": [int(n) for n in self.policy.nvec]},
        }

    def load_checkpoint(self, checkpoint: Checkpoint | str | Path, *, weights_only: bool = False) -> Checkpoint:
        """Put a checkpoint back: the one place a checkpoint is restored (set-up trainer).

        ``weights_only=True`` restores just the policy, optimizer and minibatch RNG (the
        non-finite guard's rollback: progress and statistics keep counting).
        """
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = ckpt_files.load_checkpoint(checkpoint, map_location=self.device)
        assert self.policy is not None
        ckpt_files.check_spaces(checkpoint, self._spaces())
        state = checkpoint.state
        ckpt_files.load_policy_state(self.policy, checkpoint)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.training.load_state_dict(state["training"])
            if not weights_only:
                self.stats.load_state_dict(state["stats"])
                if self.evaluator is not None and state["evaluation"] is not None:
                    self.evaluator.load_state_dict(state["evaluation"])
                # Checkpoints from before these counters were saved load them as 0.
                self.guard.load_state_dict(state.get("guard", {}))
                if self.env is not None:  # the curriculum, if any
                    self.env.load_state_dict(state.get("environment", {}))
                self.eval_failures = int(state.get("eval_failures", 0))
                saved_progress = TrainingProgress(**state["progress"])
                # The step budget is this config's: a resumed run may be extended.
                self.progress = replace(saved_progress, total_timesteps=step_budget(self.config, self.dist.world_size))
                ckpt_files.restore_rng(state["rng"])
                # The summary of a run resumed when already finished reports its last epoch.
                self.last_metrics = dict(checkpoint.metadata.get("metrics") or {})
                self.last_eval = self.evaluator.tracker.latest if self.evaluator is not None else None
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise CheckpointError(
                f"checkpoint {checkpoint.path} does not fit this trainer: {type(exc).__name__}: {detail}"
            ) from None
        if not weights_only:
            self.checkpointer.loaded(self.progress.epoch)
        return checkpoint

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current state; keep the last N and the best. Under
        torchrun only rank 0 writes (the others return None): the weights are the same."""
        assert self.policy is not None
        if not self.dist.is_main:
            return None
        if not self.optimizer.weights_finite():
            raise TrainingError(
                f"policy weights are not finite at epoch {self.progress.epoch}: refusing to write a checkpoint"
            )
        p, ev = self.progress, self.last_eval
        best = self.evaluator.tracker.best if self.evaluator is not None else None
        path = self.checkpointer.save(
            progress=p,
            state=self.checkpoint_state(),
            metadata={
                "config": self.config.to_dict(),
                "spaces": self._spaces(),
                "metrics": dict(self.last_metrics),
                "eval": None if ev is None else {
                    "mean_return": ev.mean_return, "agent_step": ev.agent_step, "epoch": ev.epoch
                },
            },
            best=best is not None and best.epoch == p.epoch,
        )
        self.hooks.call("on_checkpoint", progress=p, path=path)
        return path

    def _restore_last_good(self) -> Path:
        """The guard's rollback: weights, optimizer and minibatch RNG of this run's newest
        checkpoint; progress and statistics keep counting (those env steps did happen)."""
        restore = lambda c: self.load_checkpoint(c, weights_only=True)  # noqa: E731
        return self.checkpointer.restore_last_good(restore=restore, map_location=self.device, dist=self.dist)

    def add_hook(self, hook: Hook) -> None:
        self.hooks.add(hook)

    def cleanup(self) -> None:
        """Close envs and hooks, and leave the process group. Safe to call more than once, and
        after a failed setup."""
        if getattr(self, "rollout", None) is not None:
            self.rollout.wait()  # a background collection still stepping the env
        for closer in (self.env, self.evaluator):
            if closer is not None:
                closer.close()
        self.hooks.close()
        self.dist.close()

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
            self.hooks.call("on_train_start", progress=self.progress, config=self.config, run_dir=self.run_dir,
                            resumed_from=self.resumed_from)
            if self.checkpointer.rollback_target is None and self.dist.is_main:
                # The initial policy (fresh, or resumed from another run's checkpoint): a resume
                # point before the first interval, and the non-finite guard's rollback target.
                self.save_checkpoint()

    def train_epoch(self) -> dict[str, float]:
        """Collect one batch, update once, evaluate if due; returns the epoch's metrics."""
        self._start()
        assert self.policy is not None and self.env is not None
        t0 = time.perf_counter()
        rollout = self.rollout.collect(self.policy, self.progress)
        if self.dist.enabled:  # agent steps and episodes of every rank
            rollout = RolloutResult.combined(self.dist.all_gather_object(rollout), local=rollout)
        # Before the next collection starts: its resets draw tasks with the new probabilities.
        # From the pooled episodes, so every rank's curriculum stays the same.
        self.env.update_curriculum(rollout.env_info)
        self.hooks.call("on_rollout_end", progress=self.progress, rollout=rollout)
        prev = self.progress
        step_after, epoch_after = prev.agent_step + rollout.agent_steps, prev.epoch + 1
        if self.rollout.overlap and step_after < prev.total_timesteps:
            # The next batch, with these weights, while the update below runs.
            self.rollout.start_next(self.policy, prev)
        t1 = time.perf_counter()
        losses = self.training.update(self.policy, self.optimizer, self.rollout.buffer, self.progress)
        self.guard.after_update(self.optimizer, losses, restore=self._restore_last_good)
        t2 = time.perf_counter()

        eval_metrics: dict[str, float] = {}
        epoch_eval: EvalResult | None = None
        new_best = False
        final = step_after >= prev.total_timesteps  # the last epoch is always evaluated
        if self.evaluator is not None and (self.evaluator.due(prev.epoch, epoch_after) or final):
            epoch_eval = self._evaluate(agent_step=step_after, epoch=epoch_after)
            if epoch_eval is not None:
                eval_metrics = epoch_eval.as_metrics()
                new_best = self.evaluator.tracker.best is epoch_eval
            eval_metrics["eval/failures"] = self.eval_failures
        t3 = time.perf_counter()
        self.progress = progress = prev.advance(
            agent_steps=rollout.agent_steps, episodes=rollout.episodes, wall_seconds=t3 - t0
        )
        timings = EpochTimings(
            env=rollout.env_seconds, inference=rollout.inference_seconds, update=t2 - t1, total=t3 - t0
        )
        metrics = self.stats.record(progress, rollout, losses, timings, self.optimizer.lr)
        metrics.update(self.env.curriculum_metrics())
        metrics.update(eval_metrics)
        metrics["losses/rollbacks"] = self.guard.rollbacks
        report = EpochReport(progress=progress, rollout=rollout, losses=losses, timings=timings, eval=epoch_eval)
        metrics.update(self.hooks.custom_metrics(report))
        self.last_metrics = metrics
        if self.dist.is_main:
            self.run_dir.append_metrics(metrics)  # the run record first; a failed write stops the run
        self.hooks.call("on_epoch_end", progress=progress, metrics=MappingProxyType(metrics), report=report)
        self._agree_on_stop()
        # After the metrics line is written: a resume truncates metrics.jsonl to its checkpoint.
        # A run that stops here (budget, target, a hook) ends with a checkpoint of this epoch.
        done = self.stop_reason() is not None
        if self.dist.is_main and self.checkpointer.due(prev.epoch, progress.epoch, done=done, new_best=new_best):
            self.save_checkpoint()
        return metrics

    def _agree_on_stop(self) -> None:
        """Under torchrun: every rank learns rank 0's stop decision (it alone evaluates and runs
        the hooks) and whether any rank got a signal, so all stop after the same epoch."""
        if not self.dist.enabled:
            return
        signals = self._signals
        mine = (self.stop_reason() if self.dist.is_main else None, signals.signum if signals is not None else None)
        votes = self.dist.all_gather_object(mine)
        self._agreed_stop = votes[0][0]
        signum = next((sig for _, sig in votes if sig is not None), None)
        if signals is not None and signals.signum is None and signum is not None:
            signals.signum = signum

    @property
    def target_reached(self) -> bool:
        """The latest evaluation is of the current policy (this epoch's) and reached
        ``trainer.target_return``. An older one does not count: the policy has changed since."""
        target = self.config.trainer.target_return
        latest = self.evaluator.tracker.latest if self.evaluator is not None else None
        return (
            target is not None
            and latest is not None
            and latest.epoch == self.progress.epoch
            and latest.mean_return >= target
        )

    def stop_reason(self) -> str | None:
        """Why training is over now, or None while it goes on: ``"target_return"``,
        ``"total_timesteps"`` (the step budget is spent), or a hook's
        :class:`~metta_rl.hooks.StopTraining` reason (e.g. ``"pruned"``)."""
        if not self.dist.is_main:
            return self._agreed_stop  # rank 0's (see _agree_on_stop)
        if self.target_reached:
            return "target_return"
        if self.progress.done:
            return "total_timesteps"
        return self.hooks.stop_requested

    def train(self) -> TrainResult:
        """Train until :meth:`stop_reason` says stop; writes ``summary.json``.

        SIGINT/SIGTERM stop after the current epoch with a checkpoint and a summary
        (``stop_reason="interrupted"``) and raise :class:`TrainingInterrupted`; a second one
        raises ``KeyboardInterrupt`` at once.
        """
        self.hooks.stop_requested = None  # a hook's stop ended the previous call, not this one
        self._start()
        try:
            with StopSignals() as stop:
                self._signals = stop
                self._agree_on_stop()  # a resumed run may be finished already (rank 0 knows)
                while self.stop_reason() is None:
                    self.train_epoch()
                    if stop.signum is not None and self.stop_reason() is None:
                        path = self.checkpointer.saved_at(self.progress.epoch) or self.save_checkpoint()
                        if self.dist.is_main:
                            self.run_dir.write_summary(self.summary(stop_reason="interrupted"))
                        raise TrainingInterrupted(stop.signum, path, self.progress.agent_step)
            summary = self.summary()
            if self.dist.is_main:
                self.run_dir.write_summary(summary)
        except BaseException as exc:
            self.hooks.call("on_failure", progress=self.progress, error=exc)
            raise
        finally:
            self._signals = None
        self.hooks.call("on_train_end", progress=self.progress, summary=summary)
        return TrainResult(summary=summary, progress=self.progress, metrics=self.last_metrics, eval=self.last_eval)

    def _evaluate_now(self, *, agent_step: int, epoch: int) -> EvalResult:
        """The evaluator writes a replay to ``replays/`` only when evaluation.replay is on."""
        assert self.evaluator is not None and self.policy is not None
        self.last_eval = self.evaluator.evaluate(
            self.policy, agent_step=agent_step, epoch=epoch, replay_dir=self.run_dir.path / "replays"
        )
        return self.last_eval

    def _evaluate(self, *, agent_step: int, epoch: int) -> EvalResult | None:
        """A scheduled evaluation. One that fails is reported and counted; training goes on."""
        try:
            return self._evaluate_now(agent_step=agent_step, epoch=epoch)
        except Exception as exc:  # noqa: BLE001 - an eval env's failure must not end training
            self.eval_failures += 1
            log.warning("evaluation at epoch %d failed and was skipped (training goes on): %s", epoch, exc)
            return None

    def evaluate(self) -> EvalResult:
        """Evaluate the current policy now (as configured in ``evaluation``), outside the schedule.
        Unlike a scheduled one, a failure here raises."""
        self._start()
        if not self.dist.is_main:
            raise RuntimeError("Trainer.evaluate() under torchrun runs on rank 0 only (the weights are the same)")
        if self.evaluator is None:
            raise ConfigError("evaluation.enabled=False is invalid for Trainer.evaluate(): expected true")
        return self._evaluate_now(agent_step=self.progress.agent_step, epoch=self.progress.epoch)

    def summary(self, *, stop_reason: str | None = None) -> dict[str, Any]:
        """The run's summary (``summary.json``); ``agent_steps`` and ``epochs`` are where it
        stopped, ``stop_reason`` why (:meth:`stop_reason`, or ``stop_reason`` given)."""
        p, ev = self.progress, self.last_eval
        best = self.evaluator.tracker.best if self.evaluator is not None else None
        return {
            "run": self.run_dir.path.name,
            "env": self.config.env.name,
            "seed": self.config.seed,
            "stop_reason": stop_reason or self.stop_reason(),
            "target_return": self.config.trainer.target_return,
            "agent_steps": p.agent_step,
            "epochs": p.epoch,
            "episodes": p.episodes,
            "wall_seconds": p.wall_seconds,
            "sps": steps_per_second(p.agent_step, p.wall_seconds),
            "episode_return": self.last_metrics.get("overview/episode_return"),
            "eval_mean_return": ev.mean_return if ev else None,
            "eval_std_return": ev.std_return if ev else None,
            "eval_episodes": len(ev.returns) if ev else 0,
            "best_eval_mean_return": best.mean_return if best else None,
            "best_eval_agent_step": best.agent_step if best else None,
            "time_split": self.stats.time_split(),
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "skipped_steps": self.optimizer.skipped_steps,
            "rollbacks": self.guard.rollbacks,
        }
