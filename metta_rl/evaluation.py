"""EvaluationManager: scores the policy on its own envs, never the training envs.

Each evaluation resets its envs with the same seeds, so the same policy always gets the same
score, and scores across a run are comparable. Env ``i`` of ``E`` plays a fixed quota of the
``N`` episodes (its first ``N // E`` or ``N // E + 1``), not "whichever N finish first", which
would favour short episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metta_rl.config import EnvConfig, EvaluationConfig, VectorizationConfig
from metta_rl.environment import EVAL_STREAM, EnvironmentManager
from metta_rl.episodes import EpisodeTracker
from metta_rl.policy import ActorCritic, sample_actions
from metta_rl.progress import crossed


@dataclass(frozen=True)
class EvalResult:
    agent_step: int
    epoch: int
    returns: tuple[float, ...]
    lengths: tuple[int, ...]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns)) if self.returns else math.nan

    def as_metrics(self) -> dict[str, float]:
        return {
            "eval/mean_return": self.mean_return,
            "eval/std_return": self.std_return,
            "eval/mean_length": float(np.mean(self.lengths)) if self.lengths else math.nan,
            "eval/episodes": len(self.returns),
        }


@dataclass
class PolicyTracker:
    """The best evaluation so far (by mean return) and the latest one."""

    best: EvalResult | None = None
    latest: EvalResult | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, result: EvalResult) -> bool:
        self.latest = result
        self.history.append({"agent_step": result.agent_step, "mean_return": result.mean_return})
        if self.best is None or result.mean_return > self.best.mean_return:
            self.best = result
            return True
        return False


class EvaluationManager:
    def __init__(self, *, env: EnvConfig, config: EvaluationConfig, seed: int, device: torch.device) -> None:
        self.config = config
        self.device = device
        num_envs = min(config.num_envs, config.num_episodes)
        self.env = EnvironmentManager(
            env=env,
            vectorization=VectorizationConfig(backend="serial", num_envs=num_envs, num_workers=1),
            seed=seed,
            stream=EVAL_STREAM,
        )
        self.tracker = PolicyTracker()

    def due(self, prev_epoch: int, epoch: int) -> bool:
        return self.config.enabled and crossed(prev_epoch, epoch, self.config.evaluate_interval)

    @torch.inference_mode()
    def evaluate(self, policy: ActorCritic, *, agent_step: int, epoch: int) -> EvalResult:
        cfg = self.config
        env = self.env
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
        tracker = EpisodeTracker(rows)
        state = policy.initial_state(rows, self.device)
        was_training = policy.training
        policy.eval()
        env.reset()
        steps = 0
        try:
            while (done_per_env < quota).any():
                if steps >= cfg.max_steps:
                    raise RuntimeError(
                        f"evaluation did not finish {cfg.num_episodes} episodes within evaluation.max_steps={cfg.max_steps}"
                    )
                batch = env.recv()
                _, first, finished = tracker.observe(
                    batch.rows, batch.rewards, batch.terminals, batch.truncations, batch.masks
                )
                if finished is not None:
                    for row, ret, length in zip(finished.rows, finished.returns, finished.lengths):
                        e = env_of_row[row]
                        if done_per_env[e] < quota[e]:
                            done_per_env[e] += 1
                            returns.append(float(ret))
                            lengths.append(int(length))
                obs = torch.from_numpy(np.asarray(batch.obs)).to(self.device)
                first_t = torch.from_numpy(first.astype(np.float32)).to(self.device) if state is not None else None
                logits, _, state = policy.forward_step(obs, state, first_t)
                actions, _ = sample_actions(logits, policy.nvec, deterministic=cfg.deterministic)
                env.send(actions.cpu().numpy())
                steps += 1
        finally:
            policy.train(was_training)
        result = EvalResult(agent_step, epoch, tuple(returns), tuple(lengths))
        self.tracker.update(result)
        return result

    def close(self) -> None:
        self.env.close()

    def state_dict(self) -> dict[str, Any]:
        t = self.tracker
        return {
            "best": None if t.best is None else t.best.__dict__,
            "latest": None if t.latest is None else t.latest.__dict__,
            "history": list(t.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker = PolicyTracker(
            best=EvalResult(**state["best"]) if state["best"] else None,
            latest=EvalResult(**state["latest"]) if state["latest"] else None,
            history=list(state["history"]),
        )
