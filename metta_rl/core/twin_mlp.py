"""TwinMLP: the actor and critic trunks (two MLPs of the same shape) evaluated as one.

Layer 1 is one matmul into both trunks' units side by side; every later layer is one batched
matmul over the pair. Same math as two ``nn.Sequential`` MLPs with
half the kernel calls and autograd nodes: for the small policies PPO is run with (64x64 on
CartPole, 20 gradient steps per 256 env steps) per-op overhead is most of an update.

(A hand-written backward as one autograd.Function was tried and measured slower: its Python
backward costs more than the autograd nodes it replaces.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": nn.functional.gelu}


class TwinMLP(nn.Module):
    def __init__(self, in_size: int, sizes: list[int], activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.first_size = sizes[0]
        # Weights stored as [in, out], so the forward is addmm/baddbmm with no transposes;
        # each trunk's layer is initialized as its own orthogonal matrix (gain sqrt 2).
        self.w_in = nn.Parameter(torch.cat([_orthogonal(in_size, sizes[0]) for _ in range(2)], dim=1))
        self.b_in = nn.Parameter(torch.zeros(2 * sizes[0]))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            self.weights.append(nn.Parameter(torch.stack([_orthogonal(a, b) for _ in range(2)])))
            self.biases.append(nn.Parameter(torch.zeros(2, 1, b)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(actor_features, critic_features)``, each ``[batch, sizes[-1]]``."""
        act = _ACTIVATIONS[self.activation]
        h = act(torch.addmm(self.b_in, x, self.w_in))
        h = h.view(x.shape[0], 2, self.first_size).transpose(0, 1)  # [2, batch, units]
        for w, b in zip(self.weights, self.biases):
            h = act(torch.baddbmm(b, h, w))
        return h[0], h[1]


def _orthogonal(in_size: int, out_size: int) -> torch.Tensor:
    weight = torch.empty(out_size, in_size)
    nn.init.orthogonal_(weight, math.sqrt(2))
    return weight.t().contiguous()
