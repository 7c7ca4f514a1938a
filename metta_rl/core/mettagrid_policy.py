"""The MettaGrid policy: token scatter -> CNN, own-cell and global encoder -> LSTM -> heads.

MettaGrid observations are tokens whose array index is not a cell (see
:mod:`metta_rl.core.token_grid`); flattening them into an MLP reads noise. Here they are
scattered into a ``[C, H, W]`` grid of the egocentric window (one channel per feature that
can appear there) and a vector of global tokens, then:

- a small CNN over the grid (``cnn_channels`` / ``cnn_kernels`` / ``cnn_strides``, no
  padding, ReLU) and one fully connected layer of ``fc_size``;
- an encoder of the agent's own cell (the center cell's channels: its inventory, group,
  vibe) together with the global vector (episode progress, last action and reward), one
  fully connected layer of ``fc_size``;
- their concatenation feeds an LSTM core of ``lstm_hidden_size`` (default 64; reset at
  episode starts), and the actor and critic heads read its output.

The grid is channels-last in memory and the convolutions are too (about 2x faster on CPU).

Initialization as the PPO implementation details: orthogonal weights with gain sqrt(2) in the
encoders, 1 in the LSTM, 0.01 for the policy head and 1 for the value head; zero biases.
"""

from __future__ import annotations

import math

import gymnasium
import torch
from torch import nn

from metta_rl.config import ConfigError, PolicyConfig
from metta_rl.core.policy import LSTMState, Policy, action_nvec, init_lstm, layer
from metta_rl.core.token_grid import TokenLayout, TokenScatter, used_tokens


def conv_output_size(size: int, kernels: list[int], strides: list[int]) -> int:
    """Side of a square (or one axis of) input after unpadded convolutions; <= 0: too small."""
    for kernel, stride in zip(kernels, strides):
        size = (size - kernel) // stride + 1 if size >= kernel else 0
    return size


class MettaGridPolicy(Policy):
    def __init__(
        self,
        *,
        obs_space: gymnasium.spaces.Box,
        action_space: gymnasium.Space,
        config: PolicyConfig,
        layout: TokenLayout,
    ) -> None:
        super().__init__()
        if not (isinstance(obs_space, gymnasium.spaces.Box) and len(obs_space.shape) == 2 and obs_space.shape[1] == 3):
            raise ConfigError(
                f"policy.kind=mettagrid needs MettaGrid token observations [tokens, 3]; this env's are {obs_space}"
            )
        self.obs_shape = tuple(obs_space.shape)
        self.nvec = action_nvec(action_space)
        self.is_recurrent = True
        self.scatter = TokenScatter(layout)
        channels = self.scatter.num_channels
        self.center = (layout.height // 2, layout.width // 2)

        out_h = conv_output_size(layout.height, config.cnn_kernels, config.cnn_strides)
        out_w = conv_output_size(layout.width, config.cnn_kernels, config.cnn_strides)
        if out_h < 1 or out_w < 1:
            raise ConfigError(
                f"policy.cnn_kernels={config.cnn_kernels} with policy.cnn_strides={config.cnn_strides} is invalid: "
                f"the convolutions do not fit the {layout.height}x{layout.width} observation window"
            )
        convs: list[nn.Module] = []
        in_channels = channels
        for out_channels, kernel, stride in zip(config.cnn_channels, config.cnn_kernels, config.cnn_strides):
            conv = nn.Conv2d(in_channels, out_channels, kernel, stride)
            nn.init.orthogonal_(conv.weight, math.sqrt(2))
            nn.init.zeros_(conv.bias)
            convs += [conv, nn.ReLU()]
            in_channels = out_channels
        self.cnn = nn.Sequential(*convs, nn.Flatten(), layer(in_channels * out_h * out_w, config.fc_size, math.sqrt(2)), nn.ReLU())
        self.self_encoder = nn.Sequential(
            layer(channels + self.scatter.num_globals, config.fc_size, math.sqrt(2)), nn.ReLU()
        )
        self.cnn.to(memory_format=torch.channels_last)  # the scatter's grid is channels-last
        core = config.lstm_size("mettagrid")
        self.lstm = init_lstm(nn.LSTM(2 * config.fc_size, core, batch_first=True))
        self.actor = layer(core, sum(self.nvec), 0.01)
        self.critic = layer(core, 1, 1.0)

    def training_observations(self, obs: torch.Tensor) -> torch.Tensor:
        """Only the token positions some step of the batch uses (arena: ~60 of 500): the
        minibatch gathers then copy a tenth of the bytes, and the scatter sees the same tokens."""
        return obs[..., : used_tokens(obs), :]

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        grid, globals_ = self.scatter(obs)
        row, col = self.center
        own = torch.cat([grid[:, :, row, col], globals_], dim=1)
        return torch.cat([self.cnn(grid), self.self_encoder(own)], dim=1)

    # The core is an nn.LSTM: a step is one fused cell on its weights, and the training replay
    # runs the whole stretch between episode starts in one call (about 3x faster than a
    # Python loop of cells on CPU), zeroing the state of the rows that start an episode.
    def core_step(self, x: torch.Tensor, state: LSTMState) -> LSTMState:
        lstm = self.lstm
        return torch.lstm_cell(x, state, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)

    def core_sequence(self, x: torch.Tensor, state: LSTMState, first: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        starts = [0] + [t for t in first[:, 1:].any(0).nonzero().view(-1).add(1).tolist()] + [steps]
        h, c = state[0].unsqueeze(0), state[1].unsqueeze(0)
        outs = []
        for begin, end in zip(starts[:-1], starts[1:]):
            keep = (1.0 - first[:, begin]).view(1, -1, 1)
            out, (h, c) = self.lstm(x[:, begin:end], (h * keep, c * keep))
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
