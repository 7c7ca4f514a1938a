"""The experience buffer: preallocated ``[rows, T + 1]`` tensors, one row per agent.

Column ``T`` holds the step that follows the last trained one: its value is the bootstrap for
GAE, and after the update it moves to column 0, because the env already acted on it. So no
observation is evaluated twice and no step is lost between epochs.

The tensors live on the CPU (the rollout writes them through numpy views, which costs a
fraction of a torch indexing call) and are copied to the training device once per epoch.
With ``pin=True`` (a CUDA device) they are in pinned (page-locked) host memory, so those copies,
and the rollout's per-step ones, can be asynchronous (``non_blocking``).
"""

from __future__ import annotations

import numpy as np
import torch

_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float32,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}


class ExperienceBuffer:
    def __init__(
        self,
        *,
        rows: int,
        horizon: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        num_heads: int,
        lstm_size: int | None = None,
        pin: bool = False,
    ) -> None:
        self.rows = rows
        self.horizon = horizon
        cols = horizon + 1
        torch_obs = _TORCH_DTYPES.get(np.dtype(obs_dtype), torch.float32)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, pin_memory=pin) if pin else torch.zeros(*shape, dtype=dtype)

        self.obs = zeros(rows, cols, *obs_shape, dtype=torch_obs)
        self.actions = zeros(rows, cols, num_heads, dtype=torch.int64)
        self.logprobs = zeros(rows, cols)
        self.values = zeros(rows, cols)
        self.rewards = zeros(rows, cols)
        self.terminated = zeros(rows, cols)
        self.truncated = zeros(rows, cols)
        self.valid = zeros(rows, cols)
        self.first = zeros(rows, cols)
        # Recurrent state before column 0 of each row (what training replays from).
        self.state0 = (zeros(rows, lstm_size), zeros(rows, lstm_size)) if lstm_size else None
        # Recurrent state before column T: becomes ``state0`` when column T is carried over.
        self.next_state0 = (zeros(rows, lstm_size), zeros(rows, lstm_size)) if lstm_size else None
        # Numpy views for the per-step writes of the rollout loop.
        self.np_obs = self.obs.numpy()
        self.np_actions = self.actions.numpy()
        self.np_logprobs = self.logprobs.numpy()
        self.np_values = self.values.numpy()
        self.np_rewards = self.rewards.numpy()
        self.np_terminated = self.terminated.numpy()
        self.np_truncated = self.truncated.numpy()
        self.np_valid = self.valid.numpy()
        self.np_first = self.first.numpy()
        # Next column to fill, per row; a row is full at ``horizon + 1``.
        self.col = np.zeros(rows, dtype=np.int64)

    @property
    def full(self) -> bool:
        return bool((self.col > self.horizon).all())

    def carry_last_column(self) -> None:
        """After an update: the step in column T becomes column 0 of the next epoch."""
        self.carry_from(self)

    def carry_from(self, other: ExperienceBuffer) -> None:
        """Column 0 (and the state before it) becomes ``other``'s column T: the next epoch
        goes on from the step the env already acted on (``other`` may be this buffer)."""
        for dst, src in (
            (self.obs, other.obs), (self.actions, other.actions), (self.logprobs, other.logprobs),
            (self.values, other.values), (self.valid, other.valid), (self.first, other.first),
        ):
            dst[:, 0] = src[:, other.horizon]
        if self.state0 is not None:
            for dst, src in zip(self.state0, other.next_state0):
                dst.copy_(src)
        self.col[:] = 1
