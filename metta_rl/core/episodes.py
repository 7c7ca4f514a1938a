"""Episode-boundary bookkeeping for a batch of agent rows, vectorized with numpy.

pufferlib resets an env one step *after* it reports done: the step that reports done also
delivers the episode's last observation, and the action the policy then takes is discarded
while the env resets. So every episode end leaves one "dummy" step in the stream. This class
is the one place that knows it. For each received batch it says which stored steps are real
(``valid``), which observations start an episode (``first``, where recurrent state resets),
and which episodes just finished, with their return and length. Python runs only over the
agents whose episode ended, never over every agent every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FinishedEpisodes:
    rows: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray


class EpisodeTracker:
    def __init__(self, num_rows: int) -> None:
        self.returns = np.zeros(num_rows, dtype=np.float64)
        self.lengths = np.zeros(num_rows, dtype=np.int64)
        # Was the last action of this row taken in a real state (not a final obs, not padding)?
        self.live = np.zeros(num_rows, dtype=bool)
        # Did the last received step end the episode? Then the next observation starts one.
        self.prev_done = np.ones(num_rows, dtype=bool)

    def observe(
        self,
        rows: slice,
        rewards: np.ndarray,
        terminals: np.ndarray,
        truncations: np.ndarray,
        masks: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, FinishedEpisodes | None]:
        """Take one received batch: rewards and done flags are the outcome of these rows'
        previous action; the observation that came with them is about to be acted on.

        Returns ``(valid, first, finished)`` for the observation just received:
        ``valid`` is False for a final observation (a dummy step) or an absent agent;
        ``first`` is True where this observation starts an episode.
        """
        live = self.live[rows]
        self.returns[rows] += rewards * live
        self.lengths[rows] += live
        done = terminals | truncations
        ended = done & live
        finished = None
        if ended.any():
            idx = np.flatnonzero(ended) + rows.start
            finished = FinishedEpisodes(idx, self.returns[idx].copy(), self.lengths[idx].copy())
            self.returns[idx] = 0
            self.lengths[idx] = 0
        first = self.prev_done[rows].copy()
        valid = masks & ~done
        self.live[rows] = valid
        self.prev_done[rows] = done
        return valid, first, finished


def play_episodes(
    env: Any,
    act: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    stop: Callable[[FinishedEpisodes], bool],
    max_states: int,
    on_state: Callable[[], None] | None = None,
) -> bool:
    """The one episode-playing loop (evaluation scores, replays record): reset ``env`` (an
    :class:`~metta_rl.managers.environment.EnvironmentManager`), then receive a state, act on
    it, repeat.

    ``act(obs, first)`` gives the actions for a batch (``first`` marks episode starts, where a
    recurrent actor resets its state). ``on_state`` runs once per received state, the first
    (after reset) and every final one included. After each batch that finished episodes,
    ``stop(finished)`` says whether to end. Returns True when ``stop`` ended the play, False
    when ``max_states`` states were received first.
    """
    tracker = EpisodeTracker(env.num_agents)
    env.reset()
    states = 0
    while True:
        batch = env.recv()
        states += 1
        _, first, finished = tracker.observe(batch.rows, batch.rewards, batch.terminals, batch.truncations, batch.masks)
        if on_state is not None:
            on_state()
        if finished is not None and stop(finished):
            return True
        if states >= max_states:
            return False
        env.send(act(np.asarray(batch.obs), first))
