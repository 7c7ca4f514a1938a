"""TrainingManager: the PPO update over one epoch's buffer.

Advantages, minibatches, update epochs and the target-KL early stop live here; the loss terms
themselves come from :mod:`metta_rl.ppo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metta_rl.buffer import ExperienceBuffer
from metta_rl.config import ConfigError, PPOConfig, TrainingLoopConfig
from metta_rl.optimizer import OptimizerManager
from metta_rl.policy import ActorCritic, logprob_entropy
from metta_rl.ppo import compute_gae, explained_variance, mean_weights, normalize_advantages, ppo_loss
from metta_rl.progress import TrainingProgress


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

    def as_metrics(self) -> dict[str, float]:
        return {f"losses/{k}": float(v) for k, v in self.__dict__.items()}


class TrainingManager:
    def __init__(
        self, *, ppo: PPOConfig, loop: TrainingLoopConfig, horizon: int, recurrent: bool, device: torch.device, seed: int
    ) -> None:
        self.ppo = ppo
        self.loop = loop
        self.horizon = horizon
        self.recurrent = recurrent
        self.device = device
        if recurrent and loop.minibatch_size % horizon:
            raise ConfigError(
                f"trainer.minibatch_size={loop.minibatch_size} is invalid: with policy.lstm=true a minibatch is "
                f"whole agent rows, so it must be a multiple of the horizon ({horizon} steps per row)"
            )
        # Minibatch shuffling has its own generator: reproducible, and saved with the trainer.
        self.generator = torch.Generator().manual_seed(seed)

    def update(
        self, policy: ActorCritic, optim: OptimizerManager, buffer: ExperienceBuffer, progress: TrainingProgress
    ) -> LossStats:
        ppo = self.ppo
        T = buffer.horizon
        dev = self.device
        optim.apply_schedule(progress)
        policy.train()

        values = buffer.values[:, : T + 1].to(dev)
        advantages, returns = compute_gae(
            buffer.rewards[:, :T].to(dev),
            values,
            buffer.terminated[:, :T].to(dev),
            buffer.truncated[:, :T].to(dev),
            gamma=ppo.gamma,
            gae_lambda=ppo.gae_lambda,
        )
        data = {
            "obs": buffer.obs[:, :T].to(dev),
            "actions": buffer.actions[:, :T].to(dev),
            "old_logprobs": buffer.logprobs[:, :T].to(dev),
            "old_values": values[:, :T],
            "advantages": advantages,
            "returns": returns,
            "valid": buffer.valid[:, :T].to(dev),
        }
        rows = buffer.rows
        if self.recurrent:
            # A minibatch is whole rows: the LSTM replays each row from its saved state.
            data["first"] = buffer.first[:, :T].to(dev)
            data["h0"], data["c0"] = (s.to(dev) for s in buffer.state0)
            units, per_mb = rows, self.loop.minibatch_size // T
        else:
            data = {k: v.reshape(rows * T, *v.shape[2:]) for k, v in data.items()}
            units, per_mb = rows * T, self.loop.minibatch_size

        stats: list[torch.Tensor] = []
        epochs_run = 0
        # One minibatch: order is irrelevant, so skip the shuffle and prepare it once.
        single = [self._prepare(data)] if per_mb >= units else None
        for _ in range(self.loop.update_epochs):
            epochs_run += 1
            if single is not None:
                minibatches = single
            else:
                perm = torch.randperm(units, generator=self.generator).to(dev)
                minibatches = [self._prepare({k: v[idx] for k, v in data.items()}) for idx in perm.split(per_mb)]
            epoch_kl = []
            for mb in minibatches:
                if self.recurrent:
                    logits, new_values = policy.forward_sequence(mb["obs"], (mb["h0"], mb["c0"]), mb["first"])
                else:
                    logits, new_values, _ = policy.forward_step(mb["obs"])
                new_logprobs, entropy = logprob_entropy(
                    logits, mb["actions"], policy.nvec, entropy_grad=ppo.ent_coef > 0
                )
                terms = ppo_loss(
                    new_logprob=new_logprobs,
                    old_logprob=mb["old_logprobs"],
                    advantages=mb["advantages"],
                    entropy=entropy,
                    new_values=new_values,
                    old_values=mb["old_values"],
                    returns=mb["returns"],
                    clip_coef=ppo.clip_coef,
                    clip_vloss=ppo.clip_vloss,
                    vf_clip_coef=ppo.vf_clip_coef,
                    weights=mb["weights"],
                )
                loss = terms.policy_loss + ppo.vf_coef * terms.value_loss
                if ppo.ent_coef > 0:
                    loss = loss - ppo.ent_coef * terms.entropy
                grad_norm = optim.step(loss)
                stats.append(
                    torch.stack(
                        [
                            terms.policy_loss.detach(),
                            terms.value_loss.detach(),
                            terms.entropy.detach(),
                            terms.approx_kl,
                            terms.clip_fraction,
                            grad_norm.detach(),
                        ]
                    )
                )
                epoch_kl.append(terms.approx_kl)
            # Early stop: once the policy has moved too far from the one that collected the data.
            if ppo.target_kl is not None and torch.stack(epoch_kl).mean().item() > ppo.target_kl:
                break

        means = torch.stack(stats).mean(0).tolist()
        ev = explained_variance(data["old_values"].reshape(-1), returns.reshape(-1), data["valid"].reshape(-1))
        return LossStats(
            policy_loss=means[0],
            value_loss=means[1],
            entropy=means[2],
            approx_kl=means[3],
            clip_fraction=means[4],
            grad_norm=means[5],
            explained_variance=ev,
            update_epochs=epochs_run,
            minibatches=len(stats),
        )

    def _prepare(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add what a minibatch needs that does not depend on the policy: normalized
        advantages (per minibatch, as CleanRL and SB3) and the masked-mean weights."""
        adv = normalize_advantages(mb["advantages"], mb["valid"]) if self.ppo.norm_adv else mb["advantages"]
        return {**mb, "advantages": adv, "weights": mean_weights(mb["valid"], adv.dtype)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
