"""The PPO math, as pure functions of tensors. Managers call these; none re-implements them.

Buffer layout used throughout: tensors of shape ``[rows, T]``, one row per agent, time along
the second axis. ``values`` has ``T + 1`` columns: column ``T`` is the value of the observation
that follows the last stored step, the bootstrap for whatever is still running.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and value targets.

    ``rewards[:, t]``, ``terminated[:, t]`` and ``truncated[:, t]`` are the outcome of the action
    taken at step ``t``; ``values[:, t]`` is V(obs_t) and ``values[:, t + 1]`` V(obs_{t+1}).

    Truncation: when the episode is cut by a time limit at step ``t``, obs_{t+1} is the last
    observation of that episode (pufferlib delivers it before resetting the env), so the TD
    target bootstraps from its value: ``r_t + gamma * V(obs_{t+1})``. Termination: the episode
    really ended, nothing follows, the target is ``r_t``. Either way the advantage recursion is
    cut at ``t``, so nothing from the next episode leaks into this one.

    Returns ``(advantages, returns)``, both ``[rows, T]``, with ``returns = advantages + V``.
    """
    terminated = terminated.to(rewards.dtype)
    not_terminated = 1.0 - terminated
    not_done = 1.0 - torch.maximum(terminated, truncated.to(rewards.dtype))
    deltas = rewards + gamma * values[:, 1:] * not_terminated - values[:, :-1]
    decay = not_done * (gamma * gae_lambda)
    advantages = _reverse_scan(deltas, decay)
    return advantages, advantages + values[:, :-1]


def _reverse_scan(deltas: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """``A[:, t] = deltas[:, t] + decay[:, t] * A[:, t + 1]`` from the last column back (A after
    the last column is 0): the recursion of GAE and of V-trace."""
    num_steps = deltas.shape[1]
    advantages = torch.zeros_like(deltas)
    if advantages.device.type == "cpu" and not (deltas.requires_grad or decay.requires_grad):
        # The same float ops through numpy views: a numpy op on a row costs a fraction of a
        # torch op, and this loop is T steps long (bit-identical: elementwise IEEE mul and add).
        d, k, a = deltas.numpy(), decay.numpy(), advantages.numpy()
        last_np = a[:, 0].copy()
        for t in range(num_steps - 1, -1, -1):
            last_np = d[:, t] + k[:, t] * last_np
            a[:, t] = last_np
        return advantages
    last = torch.zeros_like(deltas[:, 0])
    for t in range(num_steps - 1, -1, -1):
        last = deltas[:, t] + decay[:, t] * last
        advantages[:, t] = last
    return advantages


def vtrace_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    logratio: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    rho_clip: float,
    c_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE with its TD errors and traces clipped by the importance ratio (V-trace, Espeholt et al.
    2018, in the GAE form PufferLib 3 and Metta train with).

    ``logratio[:, t] = log pi(a_t | s_t) - log mu(a_t | s_t)``, the current policy against the one
    that acted (detached; the update passes 0 where a step is not valid). With
    ``r_t = exp(logratio)``, ``rho_t = min(rho_clip, r_t)`` and ``c_t = min(c_clip, r_t)``::

        delta_t = rho_t * (r_t' + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t))
        A_t     = delta_t + gamma * lambda * c_t * (1 - done_t) * A_{t+1}

    (``r_t'`` the reward), with terminations and truncations treated as in :func:`compute_gae`.
    ``A + V`` is the V-trace value target. With ``r = 1`` and both clips at least 1 this is
    exactly :func:`compute_gae`. Returns ``(advantages, returns)``, both ``[rows, T]``.
    """
    ratio = logratio.exp()
    rho = ratio.clamp(max=rho_clip)
    c = ratio.clamp(max=c_clip)
    terminated = terminated.to(rewards.dtype)
    not_done = 1.0 - torch.maximum(terminated, truncated.to(rewards.dtype))
    deltas = rho * (rewards + gamma * values[:, 1:] * (1.0 - terminated) - values[:, :-1])
    decay = not_done * (gamma * gae_lambda) * c
    advantages = _reverse_scan(deltas, decay)
    return advantages, advantages + values[:, :-1]


def segment_probabilities(advantages: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """Prioritized segment sampling: the probability of each row (segment) of ``[rows, T]``
    advantages, proportional to the mean |advantage| over its valid steps to the power ``alpha``
    (``alpha = 0``: uniform). A small floor keeps every segment drawable."""
    valid = valid.to(advantages.dtype)
    magnitude = (advantages.abs() * valid).sum(1) / valid.sum(1).clamp_min(1.0)
    priority = torch.nan_to_num(magnitude.pow(alpha), nan=0.0, posinf=0.0) + 1e-6
    return priority / priority.sum()


def importance_weights(probs: torch.Tensor, num_segments: int, beta: float) -> torch.Tensor:
    """``(N * P(i)) ** -beta`` for segments drawn with probabilities ``probs`` out of N: the
    correction of prioritized sampling's bias (Schaul et al. 2016; 1 for uniform draws, and as
    ``beta`` is annealed to 1 the full correction). Not normalized by the largest weight, as in
    PufferLib and Metta."""
    return (probs * num_segments).pow(-beta)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the entries where ``mask`` is 1 (all entries when ``mask`` is None).

    Exact sum-then-divide, so a constant input has exactly its value as mean: statistics that
    subtract the mean (std, variance) depend on that.
    """
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def mean_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``mask / mask.sum()``: a masked mean is then one dot product (computed once per minibatch)."""
    mask = mask.to(dtype)
    return mask / mask.sum().clamp_min(1.0)


def weighted_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(x * weights)`` as one dot product; with ``weights = mean_weights(mask)`` a masked mean.
    (1-D inputs are used as they are: a reshape is one more autograd node per loss term.)"""
    return torch.dot(x if x.dim() == 1 else x.reshape(-1), weights if weights.dim() == 1 else weights.reshape(-1))


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zero mean, unit (population) std over the valid entries, per minibatch as in CleanRL and SB3."""
    centered = advantages - masked_mean(advantages, mask)
    std = masked_mean(centered * centered, mask).sqrt()
    return centered / (std + 1e-8)


# Data-parallel versions of the statistics above: each rank computes the moments of its share,
# the ranks sum them (one all-reduce, metta_rl.distributed), and these turn the sums into the
# statistics of the whole (global) minibatch. In float64: a variance from sums of squares
# loses nothing that matters at float32 advantage magnitudes.


def masked_moments(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[count, sum, sum of squares]`` (float64) of the valid entries: they add up across shards."""
    x = x.reshape(-1).to(torch.float64)
    m = torch.ones_like(x) if mask is None else mask.reshape(-1).to(torch.float64)
    xm = x * m
    return torch.stack([m.sum(), xm.sum(), torch.dot(xm, x)])


def moments_mean_std(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std from :func:`masked_moments` (summed over shards)."""
    count = moments[0].clamp_min(1.0)
    mean = moments[1] / count
    var = (moments[2] / count - mean * mean).clamp_min(0.0)
    return mean, var.sqrt()


def normalize_with_moments(advantages: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """:func:`normalize_advantages` with the mean and std of the whole minibatch (all shards)."""
    mean, std = moments_mean_std(moments)
    return (advantages - mean.to(advantages.dtype)) / (std.to(advantages.dtype) + 1e-8)


def shard_weights(mask: torch.Tensor, global_count: torch.Tensor, shards: int, dtype: torch.dtype) -> torch.Tensor:
    """``mask * shards / global_count``: with these weights the mean over shards of each shard's
    weighted sum (what averaging gradients over ranks computes) is the mean over every valid
    step of the whole minibatch, however the valid steps fall between the shards."""
    return mask.to(dtype) * (shards / float(global_count.clamp_min(1.0)))


def explained_variance_from_moments(returns_moments: torch.Tensor, error_moments: torch.Tensor) -> float:
    """:func:`explained_variance` from the summed moments of the returns and of ``returns - values``."""
    _, std_ret = moments_mean_std(returns_moments)
    _, std_err = moments_mean_std(error_moments)
    var_ret = float(std_ret) ** 2
    if var_ret == 0.0:
        return float("nan")
    return 1.0 - float(std_err) ** 2 / var_ret


# Each term is a mean over valid steps, written as a dot product with ``weights``
# (``mean_weights(mask)``, computed once per minibatch): the update evaluates them 20 times
# an epoch on small batches, where every tensor op counts.


def clipped_policy_loss(
    logratio: torch.Tensor, advantages: torch.Tensor, clip_coef: float, weights: torch.Tensor
) -> torch.Tensor:
    """mean(max(-A * r, -A * clip(r, 1 - c, 1 + c))), r = exp(log pi_new - log pi_old)."""
    ratio = logratio.exp()
    neg_adv = -advantages
    return weighted_mean(torch.maximum(neg_adv * ratio, neg_adv * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)), weights)


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    weights: torch.Tensor,
    *,
    clip_vloss: bool = False,
    vf_clip_coef: float = 10.0,
) -> torch.Tensor:
    """0.5 * mean((V - R)^2); with ``clip_vloss`` the larger of that and the loss of V clipped to
    within ``vf_clip_coef`` of the value at collection time."""
    v_err = (new_values - returns).square()
    if clip_vloss:
        v_clipped = old_values + (new_values - old_values).clamp(-vf_clip_coef, vf_clip_coef)
        v_err = torch.maximum(v_err, (v_clipped - returns).square())
    return 0.5 * weighted_mean(v_err, weights)


@torch.no_grad()
def approx_kl(logratio: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean((r - 1) - log r): the low-variance k3 estimator of KL(old || new)."""
    return weighted_mean(logratio.exp() - 1.0 - logratio, weights)


@torch.no_grad()
def clip_fraction(logratio: torch.Tensor, clip_coef: float, weights: torch.Tensor) -> torch.Tensor:
    """Share of steps whose ratio left [1 - c, 1 + c]."""
    return weighted_mean(((logratio.exp() - 1.0).abs() > clip_coef).to(weights.dtype), weights)


class PPOLosses(NamedTuple):
    """The PPO objective on one minibatch: ``loss`` (what the optimizer minimizes) and its terms.

    ``entropy`` is None when no per-step entropy was given (allowed only with ``ent_coef == 0``).
    ``logratio`` (detached) and ``weights`` stay with the result so the diagnostics can be read
    when wanted: ``approx_kl`` and ``clip_fraction`` are computed on access, not on every call.
    The update never reads them per minibatch; it stacks the log-ratios and computes both once.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor | None
    logratio: torch.Tensor
    weights: torch.Tensor
    clip_coef: float

    @property
    def approx_kl(self) -> torch.Tensor:
        return approx_kl(self.logratio, self.weights)

    @property
    def clip_fraction(self) -> torch.Tensor:
        return clip_fraction(self.logratio, self.clip_coef, self.weights)


def ppo_loss(
    *,
    new_logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor | None = None,
    clip_coef: float,
    vf_coef: float,
    ent_coef: float,
    clip_vloss: bool = False,
    vf_clip_coef: float = 10.0,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> PPOLosses:
    """The PPO objective on one minibatch: ``policy_loss + vf_coef * value_loss - ent_coef * entropy``.

    Each term is a masked mean over valid steps: ``mask`` (1 = valid step) or, precomputed once
    per minibatch, ``weights = mean_weights(mask)``. ``advantages`` are used as given (the update
    normalizes them per minibatch beforehand). ``entropy`` holds the per-step entropies of the
    new policy; with ``ent_coef == 0`` it may be None, so the caller can skip computing it, and
    the term costs nothing. ``sample_weights`` (prioritized sampling's :func:`importance_weights`,
    one per step) scale each step's policy term, as in PufferLib and Metta; the value loss and
    the entropy stay plain means. This is the loss ``TrainingManager.update`` minimizes.
    """
    if weights is None:
        weights = mean_weights(mask if mask is not None else torch.ones_like(new_logprob), new_logprob.dtype)
    logratio = new_logprob - old_logprob
    pg_weights = weights if sample_weights is None else weights * sample_weights
    pg_loss = clipped_policy_loss(logratio, advantages, clip_coef, pg_weights)
    v_loss = value_loss(new_values, old_values, returns, weights, clip_vloss=clip_vloss, vf_clip_coef=vf_clip_coef)
    loss = torch.add(pg_loss, v_loss, alpha=vf_coef)  # one op for pg + vf_coef * v
    ent = None if entropy is None else weighted_mean(entropy, weights)
    if ent_coef != 0:
        if ent is None:
            raise ValueError(f"ppo_loss: ent_coef={ent_coef} needs `entropy`, the per-step entropies of the new policy")
        loss = torch.sub(loss, ent, alpha=ent_coef)  # the entropy bonus: - ent_coef * entropy
    return PPOLosses(loss, pg_loss, v_loss, ent, logratio.detach(), weights, clip_coef)


def ppo_loss_grads(
    *,
    logratio: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    weights: torch.Tensor,
    clip_coef: float,
    vf_coef: float,
    ent_coef: float,
    clip_vloss: bool = False,
    vf_clip_coef: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The gradient of :func:`ppo_loss`'s ``loss`` with respect to ``new_logprob`` (given
    ``logratio = new_logprob - old_logprob``, as :class:`PPOLosses` holds it),
    ``new_values`` and ``entropy`` (None when ``ent_coef == 0``), analytically, as numpy float32
    on CPU tensors: for an update that runs its own backward, where autograd's ~15 nodes over
    the loss terms cost more than the terms (tests/test_fast_paths.py checks these against
    autograd's through ``ppo_loss``). ``torch.maximum`` splits a tie's gradient in halves, as here.
    """
    w = weights.numpy()
    neg_adv = -advantages.numpy()
    ratio = np.exp(logratio.numpy())
    lo, hi = 1.0 - clip_coef, 1.0 + clip_coef
    unclipped = neg_adv * ratio
    # max(a, b) passes its gradient to a where a > b, to b where b > a, half to each on a tie;
    # b (clipped) has one only inside [lo, hi], where a == b exactly: so the whole of a's
    # gradient where a >= b, none elsewhere.
    g_logprob = w * unclipped * (unclipped >= neg_adv * np.clip(ratio, lo, hi))
    v, ret = new_values.numpy(), returns.numpy()
    err = v - ret
    g_values = vf_coef * w * err
    if clip_vloss:
        old = old_values.numpy()
        delta = v - old
        err_clipped = old + np.clip(delta, -vf_clip_coef, vf_clip_coef) - ret
        sq, sq_clipped = err * err, err_clipped * err_clipped
        share_v = np.where(sq > sq_clipped, 1.0, np.where(sq == sq_clipped, 0.5, 0.0)).astype(np.float32)
        inside = (delta >= -vf_clip_coef) & (delta <= vf_clip_coef)
        g_values = vf_coef * w * (share_v * err + (1.0 - share_v) * err_clipped * inside)
    g_entropy = None if ent_coef == 0 else -ent_coef * w
    return g_logprob, g_values.astype(np.float32, copy=False), g_entropy


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant, NaN if Var(R)=0."""
    ret_centered = returns - masked_mean(returns, mask)
    var_ret = masked_mean(ret_centered * ret_centered, mask)
    err = returns - values
    err_centered = err - masked_mean(err, mask)
    var_err = masked_mean(err_centered * err_centered, mask)
    if var_ret.item() == 0.0:
        return float("nan")
    return float(1.0 - var_err / var_ret)
