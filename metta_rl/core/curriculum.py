"""Task curriculum: which task an env plays next, from each task's episode returns.

Pure bookkeeping (numpy, no envs): :class:`~metta_rl.managers.environment.EnvironmentManager`
feeds it the returns of the episodes each task finished in an epoch and writes its
:attr:`Curriculum.probabilities` where the envs draw their next task from.

``uniform``: every task is drawn equally often, always.

``learning_progress`` follows Kanitscheider et al. 2021 (Minecraft) as Metta's curriculum
does: train where the agent is improving, not where it has mastered a task or cannot yet make
progress on it. Per task, a fast and a slow exponential moving average of its episode return;
their gap is how much the return changed lately, in either direction (forgetting counts as
progress to be made). Here:

- the averages move once per epoch in which the task finished episodes, towards the mean return
  of those episodes (``fast_rate``, ``slow_rate`` per epoch); both start at the first mean seen,
  so a task starts with no progress rather than with a jump from 0;
- learning progress ``LP = |fast - slow| / (max - min)``: the gap in units of the task's own
  return scale, the range of every episode return it has had, so that tasks scored in
  different units (CartPole's 500 against a grid's 10 hearts) compete fairly. That is the gap
  of the "success" ``(return - min) / (max - min)``, the return mapped to [0, 1], without
  re-scaling the history whenever the range grows. A task whose returns never varied (a
  mastered one) has LP 0;
- probability ``explore / N + (1 - explore) * LP / sum(LP)``: an ``explore`` share of draws is
  uniform so that no task starves and a stalled one is noticed when it moves again. Uniform
  until every task has finished an episode, and while no task shows progress.

Metta ranks tasks by a sigmoid of the z-scored LP and re-weights success rates near 0 and 1;
with two tasks a z-score is always +-1, whatever the gap, so here the shares are proportional
to LP instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CURRICULA = ("uniform", "learning_progress")


class Curriculum:
    """Per-task moving averages and the task probabilities derived from them."""

    def __init__(
        self, *, names: Sequence[str], mode: str = "uniform", fast_rate: float = 0.1, slow_rate: float = 0.02,
        explore: float = 0.2,
    ) -> None:
        if mode not in CURRICULA:
            raise ValueError(f"mode={mode!r} is invalid: expected one of {', '.join(CURRICULA)}")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"names={list(names)!r} is invalid: expected distinct task names")
        if not 0 < slow_rate < fast_rate <= 1 or not 0 <= explore <= 1:
            raise ValueError("expected 0 < slow_rate < fast_rate <= 1 and explore in [0, 1]")
        self.names = tuple(names)
        self.mode = mode
        self.fast_rate, self.slow_rate, self.explore = fast_rate, slow_rate, explore
        n = len(self.names)
        self.fast = np.full(n, math.nan)
        self.slow = np.full(n, math.nan)
        self.low = np.full(n, math.inf)
        self.high = np.full(n, -math.inf)
        self.episodes = np.zeros(n, dtype=np.int64)

    def update(self, returns: Mapping[str, Sequence[float]]) -> None:
        """One epoch's finished episodes: ``returns[name]`` lists the returns of that task's
        episodes (a task absent or with none keeps its averages)."""
        for i, name in enumerate(self.names):
            values = np.asarray(returns.get(name, ()), dtype=np.float64)
            if values.size == 0:
                continue
            m = float(values.mean())
            if self.episodes[i] == 0:
                self.fast[i] = self.slow[i] = m
            else:
                self.fast[i] += self.fast_rate * (m - self.fast[i])
                self.slow[i] += self.slow_rate * (m - self.slow[i])
            self.low[i] = min(self.low[i], float(values.min()))
            self.high[i] = max(self.high[i], float(values.max()))
            self.episodes[i] += values.size

    @property
    def learning_progress(self) -> np.ndarray:
        """``|fast - slow| / (max - min)`` per task; 0 for a task without data or range."""
        span = self.high - self.low
        lp = np.zeros(len(self.names))
        ok = (self.episodes > 0) & (span > 0)
        lp[ok] = np.abs(self.fast[ok] - self.slow[ok]) / span[ok]
        return lp

    @property
    def success(self) -> np.ndarray:
        """The fast average mapped to [0, 1] by the task's return range (NaN without data,
        1 for a task whose returns never varied)."""
        span = self.high - self.low
        out = np.full(len(self.names), math.nan)
        has = self.episodes > 0
        out[has] = 1.0
        ok = has & (span > 0)
        out[ok] = (self.fast[ok] - self.low[ok]) / span[ok]
        return out

    @property
    def probabilities(self) -> np.ndarray:
        n = len(self.names)
        uniform = np.full(n, 1.0 / n)
        if self.mode == "uniform" or (self.episodes == 0).any():
            return uniform
        lp = self.learning_progress
        total = lp.sum()
        if not total > 0:
            return uniform
        return self.explore * uniform + (1.0 - self.explore) * lp / total

    def metrics(self) -> dict[str, float]:
        """``curriculum/<task>/{prob,lp,success,episodes}``: what the curriculum sees."""
        out: dict[str, float] = {}
        for i, (p, lp, s) in enumerate(zip(self.probabilities, self.learning_progress, self.success)):
            name = self.names[i]
            out[f"curriculum/{name}/prob"] = float(p)
            out[f"curriculum/{name}/lp"] = float(lp)
            out[f"curriculum/{name}/success"] = float(s)
            out[f"curriculum/{name}/episodes"] = int(self.episodes[i])
        return out

    def state_dict(self) -> dict[str, Any]:
        """Primitives only (loads with ``torch.load(weights_only=True)``), keyed by task name."""
        return {
            name: {
                "fast": float(self.fast[i]), "slow": float(self.slow[i]), "low": float(self.low[i]),
                "high": float(self.high[i]), "episodes": int(self.episodes[i]),
            }
            for i, name in enumerate(self.names)
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the tasks of ``state``; the task list must be the same (by name)."""
        if sorted(state) != sorted(self.names):
            raise ValueError(f"curriculum tasks {sorted(state)} do not match this run's {sorted(self.names)}")
        for i, name in enumerate(self.names):
            s = state[name]
            self.fast[i], self.slow[i] = float(s["fast"]), float(s["slow"])
            self.low[i], self.high[i] = float(s["low"]), float(s["high"])
            self.episodes[i] = int(s["episodes"])
