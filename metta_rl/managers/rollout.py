"""RolloutManager: fills the experience buffer from the env with the current policy.

It owns the buffer, the recurrent state of every agent row and the episode accumulators.
One ``collect`` is one epoch of experience; it returns what happened (steps, finished
episodes, env info stats, time split) and leaves the data in ``buffer`` for the update.

With ``overlap=True`` (``trainer.overlap_rollout``) it keeps a second buffer and a copy of the
policy (the behaviour policy): :meth:`start_next` fills the second buffer in a background
thread with the weights as they are now, while the caller updates the policy on ``buffer``; the
next :meth:`collect` waits for that thread and swaps the buffers. Torch releases the GIL in its
kernels, so the update's heavy ops run beside the rollout (MettaGrid arena on two cores: 1.8x
the training throughput); a cheap env's Python loop contends for the GIL instead (CartPole ran
slower). The data of an update is then one update old (the PPO ratio is taken against the
log-probs stored at collection, as always).
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from dataclasses import dataclass, field
from numbers import Number
from typing import Any

import numpy as np
import torch

from metta_rl.core.buffer import ExperienceBuffer
from metta_rl.core.device import autocast
from metta_rl.managers.environment import EnvironmentManager
from metta_rl.core.episodes import EpisodeTracker
from metta_rl.core.policy import Policy, sample_actions
from metta_rl.core.progress import TrainingProgress


@dataclass
class RolloutResult:
    agent_steps: int
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    env_info: dict[str, list[float]] = field(default_factory=dict)
    env_seconds: float = 0.0
    inference_seconds: float = 0.0

    @property
    def episodes(self) -> int:
        return len(self.episode_returns)

    @staticmethod
    def combined(parts: list[RolloutResult], *, local: RolloutResult) -> RolloutResult:
        """Every rank's rollout as one (torchrun): steps summed, episodes and env stats pooled
        in rank order; the time split is this process's own (``local``)."""
        info: dict[str, list[float]] = {}
        for part in parts:
            for key, values in part.env_info.items():
                info.setdefault(key, []).extend(values)
        return RolloutResult(
            agent_steps=sum(p.agent_steps for p in parts),
            episode_returns=[r for p in parts for r in p.episode_returns],
            episode_lengths=[n for p in parts for n in p.episode_lengths],
            env_info=info,
            env_seconds=local.env_seconds,
            inference_seconds=local.inference_seconds,
        )


_OVERLAP_SWITCH_INTERVAL_S = 1e-4  # sys.setswitchinterval while a background collection runs


class RolloutManager:
    """On a CUDA device the buffer is pinned host memory: observations go to the GPU and
    actions, log-probs and values come back with non-blocking copies straight into the buffer,
    and one stream synchronization per env batch replaces three blocking ones. On the CPU the
    loop is the plain one. ``amp``: the policy's forward under bf16 autocast."""

    def __init__(
        self, *, env: EnvironmentManager, policy: Policy, horizon: int, device: torch.device, amp: bool = False,
        overlap: bool = False,
    ) -> None:
        self.env = env
        self.device = device
        self.amp = amp
        self.nvec = policy.nvec

        def buffer() -> ExperienceBuffer:
            return ExperienceBuffer(
                rows=env.num_agents,
                horizon=horizon,
                obs_shape=tuple(env.observation_space.shape),
                obs_dtype=env.observation_space.dtype,
                num_heads=len(policy.nvec),
                lstm_size=policy.lstm.hidden_size if policy.lstm is not None else None,
                pin=device.type == "cuda",
            )

        self.buffer = buffer()
        self.episodes = EpisodeTracker(env.num_agents)
        self.state = policy.initial_state(env.num_agents, device)
        self._started = False
        # overlap: the buffer the background collection fills, the weights it acts with, and
        # the thread with its outcome (a RolloutResult or the exception it raised).
        self._spare = buffer() if overlap else None
        self._behaviour = copy.deepcopy(policy) if overlap else None
        self._thread: threading.Thread | None = None
        self._outcome: RolloutResult | BaseException | None = None
        self._switch_interval = sys.getswitchinterval()

    @property
    def overlap(self) -> bool:
        return self._spare is not None

    def collect(self, policy: Policy, progress: TrainingProgress) -> RolloutResult:
        """Step the env until every row holds ``horizon + 1`` steps; or, after
        :meth:`start_next`, wait for the background collection (whose data the behaviour
        policy collected) and make its buffer ``buffer``.

        The first collect starts the envs from ``progress``: a resumed run gets fresh episodes
        for its resume point, not a replay of epoch 0's.
        """
        if self._thread is not None:
            return self._finish()
        if self.buffer.full:
            self.buffer.carry_last_column()
        return self._fill(self.buffer, policy, progress)

    def start_next(self, policy: Policy, progress: TrainingProgress) -> None:
        """Collect the next batch in the background with ``policy``'s weights as they are now,
        into the spare buffer; ``buffer`` (this batch) is left alone for the update."""
        if self._spare is None or self._behaviour is None:
            raise RuntimeError("start_next needs a RolloutManager built with overlap=True")
        if self._thread is not None:
            raise RuntimeError("a background collection is already running")
        with torch.no_grad():
            for mine, theirs in zip(self._behaviour.parameters(), policy.parameters()):
                mine.copy_(theirs)
        spare, behaviour = self._spare, self._behaviour
        spare.carry_from(self.buffer)

        def run() -> None:
            try:
                self._outcome = self._fill(spare, behaviour, progress)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of collect()
                self._outcome = exc

        self._thread = threading.Thread(target=run, name="metta_rl-rollout", daemon=True)
        # The threads hand the GIL back and forth between torch ops; Python's default 5 ms
        # switch interval leaves one waiting that long. Arena bench train_sps: 5 ms 19.6-20.9k,
        # 0.5 ms 22.1-22.3k, 0.1 ms 24.8k. Restored when the collection is joined.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(_OVERLAP_SWITCH_INTERVAL_S)
        self._thread.start()

    def wait(self) -> None:
        """Let a background collection finish (before closing the env); its batch stays the
        next :meth:`collect`'s, so no env step is lost."""
        if self._thread is not None:
            self._join()

    def _join(self) -> None:
        assert self._thread is not None
        self._thread.join()
        sys.setswitchinterval(self._switch_interval)

    def _finish(self) -> RolloutResult:
        assert self._thread is not None and self._spare is not None
        self._join()
        outcome, self._thread, self._outcome = self._outcome, None, None
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        self.buffer, self._spare = self._spare, self.buffer
        return outcome

    def _fill(self, buf: ExperienceBuffer, policy: Policy, progress: TrainingProgress) -> RolloutResult:
        env = self.env
        if not self._started:
            env.reset(start=progress.epoch)
            self._started = True
        result = RolloutResult(agent_steps=buf.rows * buf.horizon)
        horizon = buf.horizon
        on_cpu = self.device.type == "cpu"
        env_s = infer_s = 0.0
        policy.eval()
        rows_left = int((buf.col <= horizon).sum())
        tick = time.perf_counter()
        while rows_left:
            batch = env.recv()
            now = time.perf_counter()
            env_s += now - tick
            tick = now
            rows = batch.rows
            col = int(buf.col[rows.start])
            if col > horizon:
                raise RuntimeError(
                    f"agent rows {rows.start}-{rows.stop - 1} returned after their buffer rows were full; "
                    "the vector env must return batches round-robin (pufferlib sync_traj)"
                )
            if col > 0:
                buf.np_rewards[rows, col - 1] = batch.rewards
                buf.np_terminated[rows, col - 1] = batch.terminals
                buf.np_truncated[rows, col - 1] = batch.truncations
            valid, first, finished = self.episodes.observe(
                rows, batch.rewards, batch.terminals, batch.truncations, batch.masks
            )
            if finished is not None:
                result.episode_returns.extend(finished.returns.tolist())
                result.episode_lengths.extend(finished.lengths.tolist())
            if batch.infos:
                _collect_infos(batch.infos, result.env_info)
            buf.np_obs[rows, col] = batch.obs
            buf.np_valid[rows, col] = valid
            buf.np_first[rows, col] = first
            with torch.inference_mode():
                obs = torch.from_numpy(buf.np_obs[rows, col])
                state = first_t = None
                if self.state is not None:
                    state = (self.state[0][rows], self.state[1][rows])
                    # State before column 0 is what training replays from; the state before
                    # column T is that of the carried column, i.e. next epoch's column 0.
                    target = buf.state0 if col == 0 else buf.next_state0 if col == horizon else None
                    if target is not None:
                        target[0][rows] = state[0].cpu()
                        target[1][rows] = state[1].cpu()
                    first_t = buf.first[rows, col].to(self.device)
                if not on_cpu:
                    obs = buf.obs[rows, col].to(self.device, non_blocking=True)  # pinned: asynchronous
                with autocast(self.device, self.amp):
                    logits, value, new_state = policy.forward_step(obs, state, first_t)
                if self.amp:
                    logits, value = logits.float(), value.float()
                actions, logprob = sample_actions(logits, self.nvec)
                if new_state is not None:
                    self.state[0][rows] = new_state[0]
                    self.state[1][rows] = new_state[1]
                if on_cpu:
                    actions = actions.numpy()
                    buf.np_actions[rows, col] = actions
                    buf.np_logprobs[rows, col] = logprob.numpy()
                    buf.np_values[rows, col] = value.numpy()
                else:
                    buf.actions[rows, col].copy_(actions, non_blocking=True)
                    buf.logprobs[rows, col].copy_(logprob, non_blocking=True)
                    buf.values[rows, col].copy_(value, non_blocking=True)
                    torch.cuda.current_stream(self.device).synchronize()  # the three copies have landed
                    actions = buf.np_actions[rows, col]
            buf.col[rows] = col + 1
            if col == horizon:
                rows_left -= rows.stop - rows.start
            now = time.perf_counter()
            infer_s += now - tick
            tick = now
            env.send(actions)
        env_s += time.perf_counter() - tick
        result.env_seconds = env_s
        result.inference_seconds = infer_s
        return result


def _collect_infos(infos: list[dict[str, Any]], into: dict[str, list[float]]) -> None:
    """Numeric entries of the envs' info dicts (nested keys joined by '/'), for env/ stats."""
    for info in infos:
        for key, value in _flatten(info, ""):
            into.setdefault(key, []).append(float(value))


def _flatten(d: dict[str, Any], prefix: str):
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + "/")
        elif isinstance(value, (Number, np.number)) and not isinstance(value, bool):
            yield name, value
        elif isinstance(value, np.ndarray) and value.size and value.dtype.kind in "fiu":
            yield name, float(value.mean())
