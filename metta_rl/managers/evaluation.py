"""EvaluationManager: scores the policy on envs of its own, never the training envs.

One score per eval task (``evaluation.tasks``; none listed means the training env, or each task
of its curriculum, ``env.tasks``). Each task
has its own Serial vector env on the evaluation seed stream, reset with the same seeds at every
evaluation, and sampled actions come from a generator of its own, re-seeded at every
evaluation: the same policy always gets the same score, scores across a run are comparable, and
evaluating never touches the training envs or the global RNGs (so never the training).

Env ``i`` of ``E`` plays a fixed quota of the ``N`` episodes (its first ``N // E`` or
``N // E + 1``), not "whichever N finish first", which would favour short episodes. In a
multi-agent env every agent's episode counts.

The primary score (``EvalResult.mean_return``, what the best policy is chosen by) is the mean
over tasks of each task's mean return: every task weighs the same, whatever its episode count
(a multi-agent task has one episode per agent). With one task it is the mean episode return.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metta_rl.config import EnvConfig, EvaluationConfig, VectorizationConfig
from metta_rl.managers.environment import EVAL_STREAM, EnvironmentManager
from metta_rl.managers.stats import mean
from metta_rl.core.episodes import FinishedEpisodes, play_episodes
from metta_rl.core.policy import Policy, action_nvec, sample_actions
from metta_rl.core.progress import crossed
from metta_rl.records.replay import Act, record_replay

log = logging.getLogger(__name__)

_ACTION_SEED_TAG = 0xAC710  # separates the action-sampling seeds from the env reset seeds


class EvalError(RuntimeError):
    """An evaluation failed; the message is one line naming the task. The manager stays usable."""


@dataclass(frozen=True)
class TaskResult:
    """The episodes of one eval task."""

    name: str
    returns: tuple[float, ...]
    lengths: tuple[int, ...]

    @property
    def mean_return(self) -> float:
        return mean(self.returns)

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns)) if self.returns else math.nan

    @property
    def mean_length(self) -> float:
        return mean(self.lengths)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "returns": list(self.returns), "lengths": list(self.lengths)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskResult:
        return cls(str(d["name"]), tuple(float(r) for r in d["returns"]), tuple(int(n) for n in d["lengths"]))


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: every episode of every task (``returns``/``lengths``, in task order),
    the per-task results, and the replay written, if any.

    Primary score: ``mean_return`` is the mean over tasks of each task's mean return;
    ``std_return`` the root mean square of the tasks' standard deviations (the typical spread
    within a task); ``mean_length`` the mean over tasks of each task's mean length. With one
    task these are the plain mean, standard deviation and mean length of its episodes.
    """

    agent_step: int
    epoch: int
    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    tasks: tuple[TaskResult, ...] = ()
    replay_path: str | None = None

    @classmethod
    def from_tasks(
        cls, tasks: tuple[TaskResult, ...], *, agent_step: int, epoch: int, replay_path: str | None = None
    ) -> EvalResult:
        returns = tuple(r for t in tasks for r in t.returns)
        lengths = tuple(n for t in tasks for n in t.lengths)
        return cls(agent_step, epoch, returns, lengths, tuple(tasks), replay_path)

    @property
    def task_results(self) -> tuple[TaskResult, ...]:
        """The per-task results (a result built from bare returns is one task, ``eval``)."""
        return self.tasks or (TaskResult("eval", self.returns, self.lengths),)

    def task(self, name: str) -> TaskResult:
        for t in self.task_results:
            if t.name == name:
                return t
        raise KeyError(f"no eval task {name!r}: expected one of {[t.name for t in self.task_results]}")

    @property
    def mean_return(self) -> float:
        return mean([t.mean_return for t in self.task_results])

    @property
    def std_return(self) -> float:
        tasks = self.task_results
        if len(tasks) == 1:
            return tasks[0].std_return
        return math.sqrt(mean([t.std_return**2 for t in tasks]))

    @property
    def mean_length(self) -> float:
        return mean([t.mean_length for t in self.task_results])

    def as_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {
            "eval/mean_return": self.mean_return,
            "eval/std_return": self.std_return,
            "eval/mean_length": self.mean_length,
            "eval/episodes": len(self.returns),
        }
        if len(self.task_results) > 1:
            for t in self.task_results:
                metrics[f"eval/{t.name}/mean_return"] = t.mean_return
                metrics[f"eval/{t.name}/std_return"] = t.std_return
                metrics[f"eval/{t.name}/mean_length"] = t.mean_length
                metrics[f"eval/{t.name}/episodes"] = len(t.returns)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (loads with ``torch.load(weights_only=True)`` and as JSON)."""
        return {
            "agent_step": int(self.agent_step),
            "epoch": int(self.epoch),
            "returns": [float(r) for r in self.returns],
            "lengths": [int(n) for n in self.lengths],
            "tasks": [t.to_dict() for t in self.tasks],
            "replay_path": self.replay_path,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            agent_step=int(d["agent_step"]),
            epoch=int(d["epoch"]),
            returns=tuple(float(r) for r in d["returns"]),
            lengths=tuple(int(n) for n in d["lengths"]),
            tasks=tuple(TaskResult.from_dict(t) for t in d.get("tasks", ())),
            replay_path=d.get("replay_path"),
        )


@dataclass
class PolicyTracker:
    """The best evaluation so far (by primary score, the earliest on a tie) and the latest."""

    best: EvalResult | None = None
    latest: EvalResult | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, result: EvalResult) -> bool:
        """Record ``result``; True when it is the new best."""
        self.latest = result
        self.history.append({"agent_step": result.agent_step, "epoch": result.epoch, "mean_return": result.mean_return})
        if self.best is None or result.mean_return > self.best.mean_return:
            self.best = result
            return True
        return False


class _PolicyActor:
    """The policy acting on one env's agent rows: its recurrent state and its action RNG."""

    def __init__(
        self, policy: Policy, rows: int, device: torch.device, deterministic: bool, generator: torch.Generator
    ) -> None:
        self.policy = policy
        self.device = device
        self.deterministic = deterministic
        self.generator = generator
        self.state = policy.initial_state(rows, device)

    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        obs_t = torch.from_numpy(obs).to(self.device)
        first_t = torch.from_numpy(first.astype(np.float32)).to(self.device) if self.state is not None else None
        logits, _, self.state = self.policy.forward_step(obs_t, self.state, first_t)
        actions, _ = sample_actions(
            logits, self.policy.nvec, deterministic=self.deterministic, generator=self.generator
        )
        return actions.cpu().numpy()


class EvaluationManager:
    """Owns the eval envs (one Serial vector env per task), the scores and the best-policy record.

    ``evaluate`` raises :class:`EvalError` when a task fails; that task's env is then rebuilt
    at the next call, so one failed evaluation never breaks the next.
    """

    def __init__(
        self, *, env: EnvConfig, config: EvaluationConfig, seed: int, device: torch.device, target: bool = False
    ) -> None:
        self.config = config
        # Epochs between evaluations: ``target_interval`` while the run has a target return.
        self.interval = config.target_interval if target and config.target_interval else config.evaluate_interval
        self.device = torch.device(device)
        self.seed = seed
        self.tasks: list[EnvConfig] = list(config.tasks) or list(env.tasks) or [env]
        self.tracker = PolicyTracker()
        self._envs: dict[str, EnvironmentManager | None] = {t.name: None for t in self.tasks}
        self._replay_warned: set[str] = set()
        try:
            for task in self.tasks:
                self._envs[task.name] = self._build(task)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ envs
    def _build(self, task: EnvConfig) -> EnvironmentManager:
        num_envs = min(self.config.num_envs, self.config.num_episodes)
        return EnvironmentManager(
            env=task,
            vectorization=VectorizationConfig(backend="serial", num_envs=num_envs, num_workers=1),
            seed=self.seed,
            stream=EVAL_STREAM,
        )

    def _env(self, task: EnvConfig) -> EnvironmentManager:
        env = self._envs.get(task.name)
        if env is None:
            env = self._envs[task.name] = self._build(task)
        return env

    @property
    def env(self) -> EnvironmentManager:
        """The first task's env (its spaces are the ones the policy must match)."""
        return self._env(self.tasks[0])

    def _discard(self, task: EnvConfig) -> None:
        env = self._envs.get(task.name)
        self._envs[task.name] = None
        if env is not None:
            env.close()

    def _generator(self, task: EnvConfig) -> torch.Generator:
        """The action-sampling RNG of one task, seeded afresh at every evaluation from the run
        seed and the task's name (not its position: a task scores the same in any task list)."""
        name_key = zlib.crc32(task.name.encode())
        state = np.random.SeedSequence([self.seed, EVAL_STREAM, _ACTION_SEED_TAG, name_key]).generate_state(2)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(state[0]) << 32 | int(state[1]))
        return generator

    # ------------------------------------------------------------------ evaluation
    def due(self, prev_epoch: int, epoch: int) -> bool:
        return self.config.enabled and crossed(prev_epoch, epoch, self.interval)

    @torch.inference_mode()
    def evaluate(
        self, policy: Policy, *, agent_step: int, epoch: int, replay_dir: str | Path | None = None
    ) -> EvalResult:
        """Score every task; with ``evaluation.replay`` and a ``replay_dir``, also write a replay
        of one episode of the first task as ``<replay_dir>/epoch_<epoch:06d>.gif`` (MettaGrid:
        ``.json.z``). Raises :class:`EvalError` naming the task that failed."""
        was_training = policy.training
        policy.eval()
        try:
            results = tuple(self._score_task(policy, task) for task in self.tasks)
            replay_path = None
            if self.config.replay and replay_dir is not None:
                replay_path = self._record(policy, Path(replay_dir) / f"epoch_{epoch:06d}")
        finally:
            policy.train(was_training)
        result = EvalResult.from_tasks(results, agent_step=agent_step, epoch=epoch, replay_path=replay_path)
        self.tracker.update(result)
        return result

    def _score_task(self, policy: Policy, task: EnvConfig) -> TaskResult:
        try:
            env = self._env(task)
            _check_spaces(env, policy)
            returns, lengths = self._play(env, policy, self._generator(task))
        except Exception as exc:  # any failure, named by task; the env is rebuilt at the next call
            self._discard(task)
            what = _one_line(exc) if isinstance(exc, EvalError) else f"{type(exc).__name__}: {_one_line(exc)}"
            raise EvalError(f"evaluation of task {task.name!r} ({task.kind}:{task.id}) failed: {what}") from exc
        return TaskResult(task.name, tuple(returns), tuple(lengths))

    def _play(
        self, env: EnvironmentManager, policy: Policy, generator: torch.Generator
    ) -> tuple[list[float], list[int]]:
        cfg = self.config
        rows = env.num_agents
        num_envs = len(env.vecenv.envs)
        agents_per_env = rows // num_envs
        quota = np.array([cfg.num_episodes // num_envs + (i < cfg.num_episodes % num_envs) for i in range(num_envs)])
        # Multi-agent envs: every agent's episode counts towards its env's quota.
        quota = quota * agents_per_env
        env_of_row = np.repeat(np.arange(num_envs), agents_per_env)
        done_per_env = np.zeros(num_envs, dtype=np.int64)
        returns: list[float] = []
        lengths: list[int] = []

        def tally(finished: FinishedEpisodes) -> bool:
            for row, ret, length in zip(finished.rows, finished.returns, finished.lengths):
                e = env_of_row[row]
                if done_per_env[e] < quota[e]:
                    done_per_env[e] += 1
                    returns.append(float(ret))
                    lengths.append(int(length))
            return bool((done_per_env >= quota).all())

        act = _PolicyActor(policy, rows, self.device, cfg.deterministic, generator)
        if not play_episodes(env, act, stop=tally, max_states=cfg.max_steps):
            raise EvalError(f"did not finish {cfg.num_episodes} episodes within evaluation.max_steps={cfg.max_steps}")
        return returns, lengths

    def _record(self, policy: Policy, stem: Path) -> str | None:
        """A replay of the first task's env 0, on an env of its own (see metta_rl.records.replay).

        The acting RNG is seeded like the first task's, so a replay is reproducible too. A
        replay is a side effect: one that cannot be made is a warning (once per task), never
        an eval failure.
        """
        task = self.tasks[0]

        def make_actor(rows: int) -> Act:
            return _PolicyActor(policy, rows, self.device, self.config.deterministic, self._generator(task))

        try:
            path, reason = record_replay(
                task,
                seed=self.seed,
                stream=EVAL_STREAM,
                act=make_actor,
                max_frames=self.config.replay_max_frames,
                path_stem=stem,
            )
        except Exception as exc:  # noqa: BLE001 - a replay never fails the evaluation
            path, reason = None, f"{type(exc).__name__}: {_one_line(exc)}"
        if reason is not None and task.name not in self._replay_warned:
            self._replay_warned.add(task.name)
            log.warning("evaluation replay of task %r skipped: %s", task.name, reason)
        return None if path is None else str(path)

    # ------------------------------------------------------------------ lifecycle, state
    def close(self) -> None:
        for task in self.tasks:
            self._discard(task)

    def state_dict(self) -> dict[str, Any]:
        """The tracker as primitives only: loads with ``torch.load(weights_only=True)``."""
        t = self.tracker
        return {
            "best": None if t.best is None else t.best.to_dict(),
            "latest": None if t.latest is None else t.latest.to_dict(),
            "history": [{k: _primitive(v) for k, v in h.items()} for h in t.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = EvalResult.from_dict(state["best"]) if state.get("best") else None
        latest = EvalResult.from_dict(state["latest"]) if state.get("latest") else None
        if latest is not None and latest == best:
            latest = best  # the latest evaluation was the best: one object, as before saving
        self.tracker = PolicyTracker(best=best, latest=latest, history=[dict(h) for h in state.get("history", [])])


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _primitive(value: Any) -> int | float:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else float(value)


def _check_spaces(env: EnvironmentManager, policy: Policy) -> None:
    obs_shape = tuple(env.observation_space.shape)
    if obs_shape != tuple(policy.obs_shape):
        raise EvalError(f"observation shape {obs_shape} does not match the policy's {tuple(policy.obs_shape)}")
    nvec = action_nvec(env.action_space)
    if nvec != list(policy.nvec):
        raise EvalError(f"action space {env.action_space} does not match the policy's action heads {policy.nvec}")
