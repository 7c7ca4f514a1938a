"""The policy interface the managers use (:class:`Policy`), and the MLP actor-critic.

:class:`Policy` holds what every policy shares: the LSTM core stepped with episode resets,
sequence replay for training, and the heads. :class:`ActorCritic` is an MLP over flattened
observations, optionally with the LSTM core; the MettaGrid policy
(:mod:`metta_rl.core.mettagrid_policy`) and mettagrid's TokenPolicyNet adapter
(:mod:`metta_rl.core.token_policy`) are the others, built by
:func:`metta_rl.core.policy_factory.make_policy`.

ActorCritic: observations of any Box shape are flattened; uint8 observations (MettaGrid tokens, pixels)
are scaled to [0, 1]. Actions are one or more categorical heads: ``Discrete(n)`` is one head
of ``n``, ``MultiDiscrete(nvec)`` one head per entry. Actions are always carried as int64
tensors of shape ``[batch, heads]``.

Initialization follows the PPO implementation details (Huang et al. 2022): orthogonal weights,
gain sqrt(2) in hidden layers, 0.01 for the policy head (near-uniform initial policy) and 1 for
the value head; zero biases.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import torch
from torch import nn

from metta_rl.config import ConfigError, PolicyConfig
from metta_rl.core.twin_mlp import (
    NUMPY_INFERENCE_ROWS, NumpyInference, TwinMLP, twin_actor_critic, twin_forward_explicit, twin_params,
)

LSTMState = tuple[torch.Tensor, torch.Tensor]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def action_nvec(space: gymnasium.Space) -> list[int]:
    """Number of choices per categorical head, or a one-line error for unsupported spaces."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, gymnasium.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return [int(n) for n in space.nvec]
    raise ConfigError(
        f"action space {space} is not supported: expected Discrete or MultiDiscrete (one dimension)"
    )


def layer(in_size: int, out_size: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of ``gain`` and zero bias."""
    layer = nn.Linear(in_size, out_size)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_size: int, sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [layer(in_size, size, math.sqrt(2)), _ACTIVATIONS[activation]()]
        in_size = size
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """What the managers use of a policy: batched steps, sequence replay, the recurrent state.

    - ``obs_shape``, ``nvec`` (choices per action head), ``is_recurrent``;
    - ``lstm``: the LSTM core (``nn.LSTMCell``, or ``nn.LSTM`` with ``core_step`` and
      ``core_sequence`` overridden) or None; its ``hidden_size`` sizes the buffer's saved states;
    - ``initial_state(batch, device)``: zero ``(h, c)`` or None;
    - ``forward_step(obs, state, first)``: ``(logits, value, new_state)``;
    - ``forward_sequence(obs [rows, T, ...], state, first)``: ``(logits, values)``;
    - ``training_observations(obs)``: the batch's observations as the update should hold them
      (default: as they are; a token policy drops the padding every row shares).

    A subclass gives ``encode`` (observations -> the core's input) and the heads ``actor`` and
    ``critic``, or overrides ``forward_step`` (a feed-forward policy needs nothing else).
    """

    obs_shape: tuple[int, ...]
    nvec: list[int]
    is_recurrent: bool
    lstm: nn.LSTMCell | nn.LSTM | None

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """``[batch, *obs_shape]`` observations -> ``[batch, features]``, the core's input."""
        raise NotImplementedError

    def training_observations(self, obs: torch.Tensor) -> torch.Tensor:
        """``[rows, T, *obs_shape]``: what the update cuts into minibatches (once per update)."""
        return obs

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> LSTMState | None:
        if self.lstm is None:
            return None
        size = self.lstm.hidden_size
        return torch.zeros(batch, size, device=device), torch.zeros(batch, size, device=device)

    def forward_step(
        self, obs: torch.Tensor, state: LSTMState | None = None, first: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None]:
        """One step for a batch of agents: ``(logits, value, new_state)``.

        ``first`` (float, 1 where an episode starts) zeroes the recurrent state of those agents
        before the step, so memory never crosses an episode boundary.
        """
        hidden = self.encode(obs)
        if self.lstm is not None:
            assert state is not None
            h, c = state
            if first is not None:
                keep = (1.0 - first).unsqueeze(-1)
                h, c = h * keep, c * keep
            h, c = self.core_step(hidden, (h, c))
            hidden, state = h, (h, c)
        return self.actor(hidden), self.critic(hidden).squeeze(-1), state

    def forward_sequence(
        self, obs: torch.Tensor, state: LSTMState | None, first: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and values for ``[rows, T, ...]`` observations, replaying the recurrent state
        from ``state`` (the state before column 0) with resets where ``first`` is 1."""
        rows, steps = obs.shape[:2]
        if self.lstm is None:
            logits, values, _ = self.forward_step(obs.reshape(rows * steps, *obs.shape[2:]))
            return logits.view(rows, steps, -1), values.view(rows, steps)
        assert state is not None
        hidden = self.encode(obs.reshape(rows * steps, *obs.shape[2:])).view(rows, steps, -1)
        core = self.core_sequence(hidden, state, first)
        return self.actor(core), self.critic(core).squeeze(-1)

    def forward_explicit(self, obs: torch.Tensor):
        """``(logits, values, backward)`` of a feed-forward step with no autograd graph, where the
        policy has a hand-written backward: ``backward(g_logits, g_values)`` writes every
        parameter's ``.grad``. None where it has not (then autograd it is)."""
        return None

    def core_step(self, x: torch.Tensor, state: LSTMState) -> LSTMState:
        """One LSTM step from ``state`` (already reset where episodes start): ``(h, c)``."""
        return self.lstm(x, state)

    def core_sequence(self, x: torch.Tensor, state: LSTMState, first: torch.Tensor) -> torch.Tensor:
        """LSTM outputs ``[rows, T, hidden]`` for inputs ``[rows, T, features]`` from ``state``,
        zeroing the state of a row before each step where ``first`` is 1."""
        h, c = state
        outs = []
        for t in range(x.shape[1]):
            keep = (1.0 - first[:, t]).unsqueeze(-1)
            h, c = self.core_step(x[:, t], (h * keep, c * keep))
            outs.append(h)
        return torch.stack(outs, dim=1)


def init_lstm(lstm: nn.LSTMCell) -> nn.LSTMCell:
    """Orthogonal weights (gain 1) and zero biases, as the PPO implementation details."""
    for name, param in lstm.named_parameters():
        if "weight" in name:
            nn.init.orthogonal_(param, 1.0)
        else:
            nn.init.zeros_(param)
    return lstm


class ActorCritic(Policy):
    """Categorical actor and scalar critic over flattened observations."""

    def __init__(self, *, obs_space: gymnasium.spaces.Box, action_space: gymnasium.Space, config: PolicyConfig):
        super().__init__()
        if not isinstance(obs_space, gymnasium.spaces.Box):
            raise ConfigError(f"observation space {obs_space} is not supported: expected a Box")
        self.obs_shape = tuple(obs_space.shape)
        self.obs_size = int(np.prod(self.obs_shape))
        self.obs_scale = 1.0 / 255.0 if obs_space.dtype == np.uint8 else None
        self.nvec = action_nvec(action_space)
        self.is_recurrent = config.lstm
        hidden = config.hidden_sizes
        separate = not config.shared_trunk and not config.lstm

        # Separate actor and critic trunks (SB3's default) run as one TwinMLP.
        self.twin = TwinMLP(self.obs_size, hidden, config.activation) if separate else None
        self.encoder = None if separate else _mlp(self.obs_size, hidden, config.activation)
        core_size = hidden[-1]
        if config.lstm:
            self.lstm = init_lstm(nn.LSTMCell(core_size, config.lstm_size("mlp")))
            core_size = self.lstm.hidden_size
        else:
            self.lstm = None
        self.actor = layer(core_size, sum(self.nvec), 0.01)
        self.critic = layer(core_size, 1, 1.0)
        numpy_ok = self.twin is not None and config.activation in ("tanh", "relu")
        self._numpy = NumpyInference(self.twin, self.actor, self.critic) if numpy_ok else None

    # ------------------------------------------------------------------ features
    def _flat(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], self.obs_size)
        if self.obs_scale is not None:
            return x.float() * self.obs_scale
        return x if x.dtype == torch.float32 else x.float()

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._flat(obs))

    def forward_step(
        self, obs: torch.Tensor, state: LSTMState | None = None, first: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None]:
        if self.twin is not None:
            if (
                self._numpy is not None and obs.shape[0] < NUMPY_INFERENCE_ROWS and obs.device.type == "cpu"
                and not torch.is_grad_enabled()
            ):
                # A rollout's or an evaluation's few rows: numpy (see NumpyInference).
                logits, values = self._numpy(self._flat(obs).numpy())
                return torch.from_numpy(logits), torch.from_numpy(values), None
            # One graph node for trunks and heads (module-call and per-op overhead dominate at this size).
            logits, values = twin_actor_critic(self.twin, self.actor, self.critic, self._flat(obs))
            return logits, values, None
        return super().forward_step(obs, state, first)

    def forward_explicit(self, obs: torch.Tensor):
        """The twin trunks' hand-written forward and backward without autograd (tanh, contiguous
        CPU float32 observations, every ``.grad`` allocated, as the optimizer keeps them)."""
        x = self._flat(obs)
        if (
            self.twin is None or self.twin.activation != "tanh" or x.device.type != "cpu" or x.dtype != torch.float32
            or not x.is_contiguous()
        ):
            return None
        params = self.__dict__.get("_twin_params")
        if params is None:  # built once: a ParameterList walk costs 15 us, a twentieth of a step
            params = self.__dict__["_twin_params"] = twin_params(self.twin, self.actor, self.critic)
        return twin_forward_explicit(params, self.twin.first_size, x)


# ---------------------------------------------------------------------- action heads
def sample_actions(
    logits: torch.Tensor,
    nvec: list[int],
    *,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or take the argmax of) each head: ``(actions [B, heads] int64, logprob [B])``.
    Samples come from ``generator`` when given (evaluation's own RNG), else the global RNG.

    A sample is ``argmax(p / q)`` with ``q ~ Exp(1)``: what ``torch.multinomial(p, 1)`` computes,
    with the same draws from the generator (so the same actions), without its input checks
    (min, max and row sums, each read back with ``.item()``), which cost 3x the sampling itself
    on a batch of 8. Probabilities from a softmax of finite logits pass those checks anyway.
    """
    if len(nvec) == 1:
        logp = torch.log_softmax(logits, dim=-1)
        if deterministic:
            actions = logp.argmax(dim=-1, keepdim=True)
        else:
            probs = logp.exp()
            actions = (probs / torch.empty_like(probs).exponential_(1, generator=generator)).argmax(dim=-1, keepdim=True)
        return actions, logp.gather(-1, actions).squeeze(-1)
    acts, logps = [], []
    for head in torch.split(logits, nvec, dim=-1):
        a, lp = sample_actions(head, [head.shape[-1]], deterministic=deterministic, generator=generator)
        acts.append(a)
        logps.append(lp)
    return torch.cat(acts, dim=-1), torch.stack(logps, dim=-1).sum(-1)


def head_log_softmax(logits: torch.Tensor, nvec: list[int]) -> list[torch.Tensor]:
    """Each action head's log-probabilities (log-softmax of its slice of ``logits``): computed
    once, :func:`log_prob_from`, :func:`entropy_from` and :func:`log_prob_grad` read them."""
    if len(nvec) == 1:
        return [torch.log_softmax(logits, dim=-1)]
    return [torch.log_softmax(h, dim=-1) for h in torch.split(logits, nvec, dim=-1)]


def log_prob_from(logps: list[torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``actions`` ``[..., heads]`` under :func:`head_log_softmax`'s heads, summed."""
    if len(logps) == 1:
        return logps[0].gather(-1, actions).squeeze(-1)
    return torch.stack([lp.gather(-1, actions[..., i : i + 1]).squeeze(-1) for i, lp in enumerate(logps)], -1).sum(-1)


def entropy_from(logps: list[torch.Tensor]) -> torch.Tensor:
    """Entropy of :func:`head_log_softmax`'s heads, summed over heads."""
    if len(logps) == 1:
        return -(logps[0].exp() * logps[0]).sum(-1)
    return torch.stack([-(lp.exp() * lp).sum(-1) for lp in logps], -1).sum(-1)


def log_prob(logits: torch.Tensor, actions: torch.Tensor, nvec: list[int]) -> torch.Tensor:
    """Log-probability of ``actions`` ``[..., heads]``, summed over heads."""
    return log_prob_from(head_log_softmax(logits, nvec), actions)


def entropy(logits: torch.Tensor, nvec: list[int]) -> torch.Tensor:
    """Entropy of the action distribution, summed over heads."""
    return entropy_from(head_log_softmax(logits, nvec))


def log_prob_grad(
    logps: list[torch.Tensor], actions: torch.Tensor, g_logprob: np.ndarray, g_entropy: np.ndarray | None
) -> torch.Tensor:
    """The gradient with respect to the logits of ``sum(g_logprob * log_prob) + sum(g_entropy *
    entropy)``, analytically, in numpy (CPU), from the heads' log-probabilities ``logps``
    (:func:`head_log_softmax`, already computed for the loss): per head
    ``d log p_a / dz = onehot(a) - p`` and ``dH / dz = -p * (log p + H)``."""
    acts = actions.numpy()
    rows = np.arange(acts.shape[0])
    grads = []
    for i, head in enumerate(logps):
        logp = head.numpy()
        p = np.exp(logp)
        g = np.multiply(p, -g_logprob[:, None])
        g[rows, acts[:, i]] += g_logprob
        if g_entropy is not None:
            h = -(p * logp).sum(1, keepdims=True)
            g -= g_entropy[:, None] * p * (logp + h)
        grads.append(g)
    return torch.from_numpy(grads[0] if len(grads) == 1 else np.concatenate(grads, axis=1))
