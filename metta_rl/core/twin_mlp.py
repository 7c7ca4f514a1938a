"""TwinMLP: the actor and critic trunks (two MLPs of the same shape) evaluated as one.

Layer 1 is one matmul into both trunks' units side by side; every later layer is one batched
matmul over the pair. Same math as two ``nn.Sequential`` MLPs with
half the kernel calls and autograd nodes: for the small policies PPO is run with (64x64 on
CartPole, 20 gradient steps per 256 env steps) per-op overhead is most of an update.

For training, :func:`twin_actor_critic` runs trunks and heads as one autograd.Function with a
hand-written backward: the same kernels autograd would run (gradients bit for bit equal,
tests/test_fast_paths.py), as one graph node instead of 14, which the PPO update builds and
walks 20 times per epoch (a minibatch step 0.93x, interleaved A/B). An earlier one-Function
version, with torch's slow tanh, measured slower than autograd.

tanh on batches of 64 rows or more (the update's minibatches) is numpy's
(:class:`NumpyTanh`): torch's float32 CPU tanh kernel is ~7x slower than numpy's where
measured (AMD EPYC, torch 2.13: 85 us against 13 us on 256x128), and the two tanh layers were
about half of the update's forward pass. Both are accurate to an ulp or two but not
bit-identical to each other; the gradient is torch's own ``tanh_backward``. On a rollout's
small batches the numpy call's overhead eats the gain, so they keep torch's kernel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class NumpyTanh(torch.autograd.Function):
    """tanh of a contiguous CPU float32 tensor by numpy; backward by ``aten::tanh_backward``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = torch.from_numpy(np.tanh(x.detach().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def numpy_tanh(x: torch.Tensor) -> torch.Tensor:
    """numpy's tanh where it applies (contiguous CPU float32), else torch's."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return torch.tanh(x)
    if x.requires_grad and torch.is_grad_enabled():
        return NumpyTanh.apply(x)
    return torch.from_numpy(np.tanh(x.numpy()))


_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": nn.functional.gelu}
_NUMPY_TANH_ROWS = 64  # from this batch size on, numpy's tanh (see the module docstring)
# Below it, inference (no autograd) runs on numpy altogether (:class:`NumpyInference`).
NUMPY_INFERENCE_ROWS = _NUMPY_TANH_ROWS
_NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


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
        if act is torch.tanh and x.shape[0] >= _NUMPY_TANH_ROWS:
            act = numpy_tanh
        h = act(torch.addmm(self.b_in, x, self.w_in))
        h = h.view(x.shape[0], 2, self.first_size).transpose(0, 1)  # [2, batch, units]
        for w, b in zip(self.weights, self.biases):
            h = act(torch.baddbmm(b, h, w))
        actor, critic = h.unbind(0)
        return actor, critic


def _twin_forward(x, first_size, w_in, b_in, wa, ba, wc, bc, *layers):
    """``(logits, values, saved)``: trunks (tanh) and heads; ``saved`` is what
    :func:`_twin_backward` needs."""
    k = len(layers) // 2
    weights, biases = layers[:k], layers[k:]
    h1 = numpy_tanh(torch.addmm(b_in, x, w_in))
    h = h1.view(x.shape[0], 2, first_size).transpose(0, 1)
    outs = []
    for w, b in zip(weights, biases):
        h = numpy_tanh(torch.baddbmm(b, h, w))
        outs.append(h)
    logits = torch.addmm(ba, h[0], wa.t())
    values = torch.addmm(bc, h[1], wc.t()).squeeze(-1)
    return logits, values, (x, h1, wa, wc, *outs, *weights)


def _twin_backward(saved, first_size, g_logits, g_values, out=None):
    """The gradients of ``(w_in, b_in, wa, ba, wc, bc, *weights, *biases)``, by hand with the
    kernels autograd would use. With ``out`` (one tensor per parameter) they are written
    there (``out=`` of each kernel, no copies) and ``out`` is returned."""
    x, h1, wa, wc, *rest = saved
    k = len(rest) // 2
    outs, weights = rest[:k], rest[k:]
    o = out if out is not None else [None] * (6 + 2 * k)
    h1_pair = h1.view(x.shape[0], 2, first_size).transpose(0, 1)
    last = outs[-1] if k else h1_pair
    g_v = g_values.unsqueeze(0)  # [1, batch]
    g = [None] * (6 + 2 * k)
    g[2], g[3] = torch.mm(g_logits.t(), last[0], out=o[2]), torch.sum(g_logits, 0, out=o[3])
    g[4], g[5] = torch.mm(g_v, last[1], out=o[4]), torch.sum(g_v, 1, out=o[5])
    g_h = torch.stack([g_logits.mm(wa), g_v.t().mm(wc)])
    for i in range(k - 1, -1, -1):
        g_z = torch.ops.aten.tanh_backward(g_h, outs[i])
        inp = outs[i - 1] if i else h1_pair
        g[6 + i] = torch.bmm(inp.transpose(1, 2), g_z, out=o[6 + i])
        g[6 + k + i] = torch.sum(g_z, 1, keepdim=True, out=o[6 + k + i])
        g_h = torch.bmm(g_z, weights[i].transpose(1, 2))
    g_z1 = torch.ops.aten.tanh_backward(g_h.transpose(0, 1).reshape(h1.shape), h1)
    g[0], g[1] = torch.mm(x.t(), g_z1, out=o[0]), torch.sum(g_z1, 0, out=o[1])
    return g


class TwinActorCriticFn(torch.autograd.Function):
    """Trunks (tanh) and heads forward; backward by hand with the kernels autograd would use."""

    @staticmethod
    def forward(ctx, x, first_size, *params):  # type: ignore[override]
        logits, values, saved = _twin_forward(x, first_size, *params)
        ctx.save_for_backward(*saved)
        ctx.first_size = first_size
        return logits, values

    @staticmethod
    def backward(ctx, g_logits, g_values):  # type: ignore[override]
        return None, None, *_twin_backward(ctx.saved_tensors, ctx.first_size, g_logits, g_values)


def twin_params(twin: TwinMLP, actor: nn.Linear, critic: nn.Linear) -> list[torch.Tensor]:
    """The parameters in the order :func:`_twin_forward` takes them."""
    return [twin.w_in, twin.b_in, actor.weight, actor.bias, critic.weight, critic.bias, *twin.weights, *twin.biases]


def twin_forward_explicit(params: list[torch.Tensor], first_size: int, x: torch.Tensor):
    """``(logits, values, backward)`` without autograd for the parameters :func:`twin_params`
    lists: ``backward(g_logits, g_values)`` writes every parameter's gradient into its ``.grad``
    (overwriting it: nothing to zero, no AccumulateGrad), for an update that computes the loss
    gradient itself (:meth:`metta_rl.core.policy.ActorCritic.forward_explicit`). None if a
    ``.grad`` is missing."""
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        return None
    with torch.no_grad():
        logits, values, saved = _twin_forward(x, first_size, *params)

    def backward(g_logits: torch.Tensor, g_values: torch.Tensor) -> None:
        with torch.no_grad():
            _twin_backward(saved, first_size, g_logits, g_values, out=grads)

    return logits, values, backward


def twin_actor_critic(twin: TwinMLP, actor: nn.Linear, critic: nn.Linear, x: torch.Tensor):
    """``(logits, values)`` of the trunks and heads, as one autograd node where it applies
    (tanh, contiguous CPU float32 observations), else as plain autograd ops."""
    if twin.activation == "tanh" and x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
        return TwinActorCriticFn.apply(x, twin.first_size, *twin_params(twin, actor, critic))
    actor_in, critic_in = twin.forward(x)
    logits = nn.functional.linear(actor_in, actor.weight, actor.bias)
    return logits, nn.functional.linear(critic_in, critic.weight, critic.bias).squeeze(-1)


class NumpyInference:
    """The twin trunks and the actor and critic heads as numpy ops on views of the weights:
    inference for a rollout's or an evaluation's few rows on the CPU.

    At 8 rows every torch op's dispatch costs more than its arithmetic: the torch forward took
    ~70 us, this one ~23 us (AMD EPYC, torch 2.13). The math is the same (results agree to
    float32 rounding, tests/test_components.py). The weight views are rebuilt whenever a weight's
    storage moves (the optimizer re-points them into its flat buffer; ``.to()``, a copy), so
    they always read the live weights; in-place updates need nothing.
    """

    def __init__(self, twin: TwinMLP, actor: nn.Linear, critic: nn.Linear) -> None:
        self.act = _NUMPY_ACTIVATIONS[twin.activation]
        self.first_size = twin.first_size
        self.hidden = len(twin.weights)
        self.params = [twin.w_in, twin.b_in, *twin.weights, *twin.biases, actor.weight, actor.bias,
                       critic.weight, critic.bias]
        self._ptrs: list[int] = []
        self._views: tuple = ()

    def _weights(self) -> tuple:
        ptrs = [p.data_ptr() for p in self.params]
        if ptrs != self._ptrs:
            a = [p.detach().numpy() for p in self.params]
            k = self.hidden
            layers = list(zip(a[2 : 2 + k], a[2 + k : 2 + 2 * k]))
            wa, ba, wc, bc = a[2 + 2 * k :]
            self._views = (a[0], a[1], layers, wa.T, ba, wc.T, bc)
            self._ptrs = ptrs
        return self._views

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits [batch, actions], values [batch])`` for flat float32 observations."""
        w_in, b_in, layers, wa_t, ba, wc_t, bc = self._weights()
        act = self.act
        h = act(x @ w_in + b_in).reshape(x.shape[0], 2, self.first_size).transpose(1, 0, 2)
        for w, b in layers:
            h = act(np.matmul(h, w) + b)
        return h[0] @ wa_t + ba, (h[1] @ wc_t + bc)[:, 0]


def _orthogonal(in_size: int, out_size: int) -> torch.Tensor:
    weight = torch.empty(out_size, in_size)
    nn.init.orthogonal_(weight, math.sqrt(2))
    return weight.t().contiguous()
