"""TrainingManager: the PPO update over one epoch's buffer.

Advantages, minibatches, update epochs and the target-KL early stop live here; the loss the
update minimizes is :func:`metta_rl.core.ppo.ppo_loss`, the tested function, not a second
assembly of its terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metta_rl.core.buffer import ExperienceBuffer
from metta_rl.config import ConfigError, PPOConfig, TrainingLoopConfig
from metta_rl.core.device import autocast
from metta_rl.distributed import SINGLE, Distributed
from metta_rl.managers.optimizer import OptimizerManager
from metta_rl.core.policy import Policy, entropy, entropy_from, head_log_softmax, log_prob, log_prob_from, log_prob_grad
from metta_rl.core.ppo import (
    approx_kl,
    clip_fraction,
    compute_gae,
    explained_variance,
    explained_variance_from_moments,
    importance_weights,
    masked_moments,
    mean_weights,
    normalize_advantages,
    normalize_with_moments,
    ppo_loss,
    ppo_loss_grads,
    segment_probabilities,
    shard_weights,
    vtrace_advantages,
    weighted_mean,
)
from metta_rl.core.progress import TrainingProgress


@dataclass(frozen=True)
class LossStats:
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    grad_norm: float
    explained_variance: float
    update_epochs: int
    minibatches: int
    skipped_steps: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {f"losses/{k}": float(v) for k, v in self.__dict__.items()}


class TrainingManager:
    """``loop`` gives this process's sizes: under torchrun each rank's share of the batch and
    minibatch (the Trainer's :func:`metta_rl.distributed.rank_batch`). With ``dist`` enabled a
    minibatch is the union of every rank's share: advantages are normalized with its global
    mean and std, the loss is its global mean (the optimizer averages the gradients), and the
    KL early stop and the statistics are the global ones, so every rank makes the same steps."""

    def __init__(
        self, *, ppo: PPOConfig, loop: TrainingLoopConfig, horizon: int, recurrent: bool, device: torch.device, seed: int,
        dist: Distributed = SINGLE,
    ) -> None:
        self.ppo = ppo
        self.loop = loop
        self.horizon = horizon
        self.recurrent = recurrent
        self.device = device
        self.dist = dist
        # V-trace and prioritized sampling work on segments (whole agent rows), as the LSTM does.
        self.vtrace = ppo.vtrace
        self.prioritized = loop.prioritized
        self.segments = recurrent or self.vtrace or self.prioritized
        if self.segments and loop.minibatch_size % horizon:
            why = (
                "a recurrent policy (policy.lstm=true, policy.kind=mettagrid)" if recurrent
                else "ppo.vtrace_rho_clip" if self.vtrace else "trainer.prio_alpha"
            )
            raise ConfigError(
                f"trainer.minibatch_size={loop.minibatch_size} is invalid: with {why} a minibatch is "
                f"whole agent rows, so it must be a multiple of the horizon ({horizon} steps per row)"
            )
        # Minibatch shuffling has its own generator: reproducible, and saved with the trainer.
        self.generator = torch.Generator().manual_seed(seed)

    def update(
        self, policy: Policy, optim: OptimizerManager, buffer: ExperienceBuffer, progress: TrainingProgress
    ) -> LossStats:
        threads = self.loop.update_threads
        if not threads or threads == torch.get_num_threads():
            return self._update(policy, optim, buffer, progress)
        rollout_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self._update(policy, optim, buffer, progress)
        finally:
            torch.set_num_threads(rollout_threads)

    def _update(
        self, policy: Policy, optim: OptimizerManager, buffer: ExperienceBuffer, progress: TrainingProgress
    ) -> LossStats:
        ppo = self.ppo
        T = buffer.horizon
        dev = self.device
        optim.apply_schedule(progress)
        policy.train()

        values = buffer.values[:, : T + 1].to(dev, non_blocking=True)
        rewards = buffer.rewards[:, :T].to(dev, non_blocking=True)
        terminated = buffer.terminated[:, :T].to(dev, non_blocking=True)
        truncated = buffer.truncated[:, :T].to(dev, non_blocking=True)
        if self.vtrace:  # as collected (ratio 1); each minibatch recomputes its own
            advantages, returns = vtrace_advantages(
                rewards, values, terminated, truncated, torch.zeros_like(rewards), **self._vtrace_args()
            )
        else:
            advantages, returns = compute_gae(
                rewards, values, terminated, truncated, gamma=ppo.gamma, gae_lambda=ppo.gae_lambda
            )
        data = {
            "obs": policy.training_observations(buffer.obs[:, :T]).to(dev, non_blocking=True),
            "actions": buffer.actions[:, :T].to(dev, non_blocking=True),
            "old_logprobs": buffer.logprobs[:, :T].to(dev, non_blocking=True),
            "old_values": values[:, :T],
            "advantages": advantages,
            "returns": returns,
            "valid": buffer.valid[:, :T].to(dev, non_blocking=True),
        }
        rows = buffer.rows
        if self.recurrent:
            # A minibatch is whole rows: the LSTM replays each row from its saved state.
            data["first"] = buffer.first[:, :T].to(dev, non_blocking=True)
            data["h0"], data["c0"] = (s.to(dev, non_blocking=True) for s in buffer.state0)
        if self.vtrace:  # what the per-minibatch V-trace recomputation reads, per row
            data.update(rewards=rewards, terminated=terminated, truncated=truncated, values=values)
        if self.segments:
            units, per_mb = rows, self.loop.minibatch_size // T
        else:
            data = {k: v.reshape(rows * T, *v.shape[2:]) for k, v in data.items()}
            units, per_mb = rows * T, self.loop.minibatch_size

        coefs = dict(
            clip_coef=ppo.clip_coef, vf_coef=ppo.vf_coef, ent_coef=ppo.ent_coef,
            clip_vloss=ppo.clip_vloss, vf_clip_coef=ppo.vf_clip_coef,
        )
        # Per step only what the gradient needs; diagnostics (KL, clip fraction, entropy) are
        # computed from the detached log-ratios and logits, batched once per epoch / update.
        logratios: list[torch.Tensor] = []
        logits_seen: list[torch.Tensor] = []
        weights_seen: list[torch.Tensor] = []
        scalars: list[torch.Tensor] = []
        epochs_run = 0
        skipped_before = optim.skipped_steps
        # One minibatch: order is irrelevant, so skip the shuffle and prepare it once.
        # With V-trace a minibatch is prepared after its forward pass (_vtrace_minibatch).
        prepare = (lambda mbs: mbs) if self.vtrace else self._prepare_all
        single = prepare([data]) if per_mb >= units and not self.prioritized else None
        if self.prioritized:
            probs = segment_probabilities(advantages, data["valid"], self.loop.prio_alpha)
            beta = self.loop.prio_beta0 + (1.0 - self.loop.prio_beta0) * progress.fraction
        for _ in range(self.loop.update_epochs):
            epochs_run += 1
            if single is not None:
                minibatches = single
            elif self.prioritized:
                minibatches = prepare(self._prioritized_minibatches(data, probs, per_mb, beta))
            else:
                perm = torch.randperm(units, generator=self.generator).to(dev, non_blocking=True)
                minibatches = prepare([{k: v[idx] for k, v in data.items()} for idx in perm.split(per_mb)])
            for mb in minibatches:
                # A policy with a hand-written backward runs without autograd (forward_explicit);
                # not on segments (rows x horizon), whose losses carry V-trace or sample weights.
                explicit = None if self.segments or self.loop.amp else policy.forward_explicit(mb["obs"])
                with autocast(dev, self.loop.amp):
                    if explicit is not None:
                        logits, new_values, backward = explicit
                    elif self.recurrent:
                        logits, new_values = policy.forward_sequence(mb["obs"], (mb["h0"], mb["c0"]), mb["first"])
                    elif self.segments:
                        logits, new_values = policy.forward_sequence(mb["obs"], None, None)
                    else:
                        logits, new_values, _ = policy.forward_step(mb["obs"])
                if self.loop.amp:  # the loss in float32
                    logits, new_values = logits.float(), new_values.float()
                if explicit is not None:  # the heads' log-softmax once, for the loss and its gradient
                    logps = head_log_softmax(logits, policy.nvec)
                    new_logprob = log_prob_from(logps, mb["actions"])
                    ent = entropy_from(logps) if ppo.ent_coef else None
                else:
                    new_logprob = log_prob(logits, mb["actions"], policy.nvec)
                    # With ent_coef == 0 the entropy (a softmax over every step) is not computed.
                    ent = entropy(logits, policy.nvec) if ppo.ent_coef else None
                if self.vtrace:
                    mb = self._vtrace_minibatch(mb, new_logprob)
                weights = mb["weights"]
                out = ppo_loss(
                    new_logprob=new_logprob,
                    old_logprob=mb["old_logprobs"],
                    advantages=mb["advantages"],
                    new_values=new_values,
                    old_values=mb["old_values"],
                    returns=mb["returns"],
                    entropy=ent,
                    weights=weights,
                    sample_weights=mb.get("sample_weights"),
                    **coefs,
                )
                if explicit is not None:  # the loss gradient, by hand (ppo_loss_grads), through that backward
                    g_logprob, g_values, g_entropy = ppo_loss_grads(
                        logratio=out.logratio, advantages=mb["advantages"], new_values=new_values,
                        old_values=mb["old_values"], returns=mb["returns"], weights=weights, **coefs,
                    )
                    g_logits = log_prob_grad(logps, mb["actions"], g_logprob, g_entropy)
                    grad_norm = optim.step(out.loss, backward=lambda: backward(g_logits, torch.from_numpy(g_values)))
                else:
                    grad_norm = optim.step(out.loss)
                scalars.append(torch.stack([out.policy_loss.detach(), out.value_loss.detach(), grad_norm]))
                logratios.append(out.logratio)
                logits_seen.append(logits.detach())
                weights_seen.append(weights)
            # Early stop once the policy has moved too far from the one that collected the data.
            if ppo.target_kl is not None:
                n = len(minibatches)
                kl = approx_kl(torch.stack(logratios[-n:]), torch.stack(weights_seen[-n:]) / n)
                if self.dist.mean_(kl.detach().clone()).item() > ppo.target_kl:  # the same stop on every rank
                    break

        steps = len(scalars)
        all_weights = torch.stack(weights_seen) / steps
        all_logratios = torch.stack(logratios)
        with torch.no_grad():
            ent = weighted_mean(entropy(torch.stack(logits_seen), policy.nvec), all_weights)
        means = torch.stack(scalars).mean(0)
        diag = torch.stack(
            [ent, approx_kl(all_logratios, all_weights), clip_fraction(all_logratios, ppo.clip_coef, all_weights)]
        )
        if self.dist.enabled:
            means, diag, ev = self._global_stats(means, diag, data, returns)
        else:
            ev = explained_variance(data["old_values"].reshape(-1), returns.reshape(-1), data["valid"].reshape(-1))
        means, diag = means.tolist(), diag.tolist()
        return LossStats(
            policy_loss=means[0],
            value_loss=means[1],
            entropy=diag[0],
            approx_kl=diag[1],
            clip_fraction=diag[2],
            grad_norm=means[2],
            explained_variance=ev,
            update_epochs=epochs_run,
            minibatches=steps,
            skipped_steps=optim.skipped_steps - skipped_before,
        )

    def _prepare_all(self, minibatches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """:meth:`_prepare` every minibatch of one update epoch; under torchrun with the global
        advantage moments and valid counts of each, summed over ranks in one all-reduce."""
        if not self.dist.enabled:
            return [self._prepare(mb) for mb in minibatches]
        moments = self.dist.sum_(torch.stack([masked_moments(mb["advantages"], mb["valid"]) for mb in minibatches]))
        world = self.dist.world_size
        out = []
        for mb, m in zip(minibatches, moments):
            adv = normalize_with_moments(mb["advantages"], m) if self.ppo.norm_adv else mb["advantages"]
            out.append({**mb, "advantages": adv, "weights": shard_weights(mb["valid"], m[0], world, adv.dtype)})
        return out

    def _vtrace_args(self) -> dict[str, float]:
        ppo = self.ppo
        return dict(gamma=ppo.gamma, gae_lambda=ppo.gae_lambda, rho_clip=ppo.vtrace_rho_clip, c_clip=ppo.vtrace_c_clip)

    def _prioritized_minibatches(
        self, data: dict[str, torch.Tensor], probs: torch.Tensor, per_mb: int, beta: float
    ) -> list[dict[str, torch.Tensor]]:
        """One update epoch's minibatches of ``per_mb`` rows each, drawn with replacement by
        priority (as many rows in all as the batch has), each row's steps weighted by its
        importance weight."""
        rows = probs.numel()
        drawn = torch.multinomial(probs.cpu(), rows, replacement=True, generator=self.generator).to(self.device)
        weights = importance_weights(probs[drawn], rows, beta)
        minibatches = []
        for idx, w in zip(drawn.split(per_mb), weights.split(per_mb)):
            mb = {k: v[idx] for k, v in data.items()}
            mb["sample_weights"] = w.unsqueeze(1).expand_as(mb["valid"])
            minibatches.append(mb)
        return minibatches

    def _vtrace_minibatch(self, mb: dict[str, torch.Tensor], new_logprob: torch.Tensor) -> dict[str, torch.Tensor]:
        """The minibatch's advantages and value targets recomputed by V-trace from the fresh
        log-ratios of its rows (0 at steps that are not valid), then prepared as usual."""
        with torch.no_grad():
            logratio = (new_logprob.detach() - mb["old_logprobs"]) * mb["valid"]
            advantages, returns = vtrace_advantages(
                mb["rewards"], mb["values"], mb["terminated"], mb["truncated"], logratio, **self._vtrace_args()
            )
        return self._prepare_all([{**mb, "advantages": advantages, "returns": returns}])[0]

    def _global_stats(
        self, means: torch.Tensor, diag: torch.Tensor, data: dict[str, torch.Tensor], returns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The logged statistics over every rank's data, in one all-reduce: the loss means and
        diagnostics are means of the ranks' shard-weighted sums (global means, see
        :func:`~metta_rl.core.ppo.shard_weights`), explained variance from summed moments."""
        valid = data["valid"].reshape(-1)
        ret = returns.reshape(-1)
        ret_m = masked_moments(ret, valid)
        err_m = masked_moments(ret - data["old_values"].reshape(-1), valid)
        world = self.dist.world_size
        # Means are summed, then divided by the world size; moments are summed as they are.
        packed = torch.cat([means.double() / world, diag.double() / world, ret_m, err_m])
        self.dist.sum_(packed)
        n, k = means.numel(), diag.numel()
        ev = explained_variance_from_moments(packed[n + k : n + k + 3], packed[n + k + 3 :])
        return packed[:n], packed[n : n + k], ev

    def _prepare(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add what a minibatch needs that does not depend on the policy: normalized
        advantages (per minibatch, as CleanRL and SB3) and the masked-mean weights."""
        adv = normalize_advantages(mb["advantages"], mb["valid"]) if self.ppo.norm_adv else mb["advantages"]
        return {**mb, "advantages": adv, "weights": mean_weights(mb["valid"], adv.dtype)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
