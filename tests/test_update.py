"""TrainingManager.update itself, checked against hand computations on a tiny buffer.

The buffer is built so every input of the loss is known: ``gamma = 0`` makes the advantage of
step t ``r_t - V_old_t`` and its return ``r_t``; the stored log-probs are the policy's own minus
chosen log-ratios, and the stored values are the critic's own plus chosen offsets. The expected
loss is then written here with plain torch ops on a copy of the starting policy and compared
with what the update did: with one minibatch and one update epoch the gradient it handed to the
optimizer (left in the parameters' ``.grad``) is the gradient at the starting weights, and the
returned LossStats are the terms at those weights.
"""

from __future__ import annotations

import copy
import math

import gymnasium
import numpy as np
import pytest
import torch

from metta_rl.config import OptimizerConfig, PolicyConfig, PPOConfig, TrainingLoopConfig
from metta_rl.core.buffer import ExperienceBuffer
from metta_rl.core.policy import ActorCritic
from metta_rl.core.progress import TrainingProgress
from metta_rl.managers.optimizer import OptimizerManager
from metta_rl.managers.training import TrainingManager

ROWS, T, OBS, ACTIONS = 2, 4, 3, 3
N = ROWS * T
# Per step, row-major (row 0 is steps 0-3): pi_new / pi_old at the starting weights, the
# advantage r - V_old, and V_old - V_new (how far the critic is from its collection-time value).
RATIOS = [1.1, 1.5, 0.5, 1.5, 0.9, 1.0, 1.3, 0.7]
ADVS = [1.0, 2.0, -1.0, -0.5, 3.0, 0.25, -2.0, 0.5]
VALUE_OFFSETS = [0.5, -0.5, 0.05, -0.02, 0.3, -0.3, 0.0, 0.2]
CLIP = 0.2
GRAD_TOL = dict(rtol=1e-5, atol=1e-6)


def make_policy() -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(
        obs_space=gymnasium.spaces.Box(-1.0, 1.0, (OBS,), np.float32),
        action_space=gymnasium.spaces.Discrete(ACTIONS),
        config=PolicyConfig(hidden_sizes=[8]),
    )


def make_buffer(policy: ActorCritic, *, ratios=RATIOS, advs=ADVS, offsets=VALUE_OFFSETS) -> ExperienceBuffer:
    gen = torch.Generator().manual_seed(1)
    buf = ExperienceBuffer(rows=ROWS, horizon=T, obs_shape=(OBS,), obs_dtype=np.float32, num_heads=1)
    buf.obs[:] = torch.rand(ROWS, T + 1, OBS, generator=gen) * 2 - 1
    buf.actions[:] = torch.randint(0, ACTIONS, (ROWS, T + 1, 1), generator=gen)
    with torch.no_grad():
        logits, values, _ = policy.forward_step(buf.obs[:, :T].reshape(N, OBS))
        logp = torch.log_softmax(logits, -1).gather(-1, buf.actions[:, :T].reshape(N, 1)).squeeze(-1)
    old_values = values + torch.tensor(offsets)
    buf.logprobs[:, :T] = (logp - torch.log(torch.tensor(ratios))).view(ROWS, T)
    buf.values[:, :T] = old_values.view(ROWS, T)
    buf.values[:, T] = 7.0  # the bootstrap: gamma = 0 must ignore it
    buf.rewards[:, :T] = (old_values + torch.tensor(advs)).view(ROWS, T)
    buf.valid[:, :T] = 1.0
    return buf


def run_update(template, buf, *, lr=1e-3, minibatch_size=N, update_epochs=1, **ppo):
    """One call of the real update on a copy of ``template``: (LossStats, {param: grad})."""
    policy = copy.deepcopy(template)
    optim = OptimizerManager(policy=policy, config=OptimizerConfig(learning_rate=lr, max_grad_norm=None))
    manager = TrainingManager(
        ppo=PPOConfig(gamma=0.0, gae_lambda=0.95, clip_coef=CLIP, **ppo),
        loop=TrainingLoopConfig(total_timesteps=N, batch_size=N, minibatch_size=minibatch_size, update_epochs=update_epochs),
        horizon=T,
        recurrent=False,
        device=torch.device("cpu"),
        seed=0,
    )
    stats = manager.update(policy, optim, buf, TrainingProgress(total_timesteps=N))
    return stats, {name: p.grad.clone() for name, p in policy.named_parameters()}


def hand_loss(policy, buf, *, vf_coef, ent_coef, clip_vloss=False, vf_clip_coef=10.0):
    """The PPO objective written out with plain torch ops (not metta_rl.core.ppo)."""
    obs = buf.obs[:, :T].reshape(N, OBS)
    logits, new_v, _ = policy.forward_step(obs)
    logp_all = torch.log_softmax(logits, -1)
    new_logp = logp_all.gather(-1, buf.actions[:, :T].reshape(N, 1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1).mean()
    ratio = torch.exp(new_logp - buf.logprobs[:, :T].reshape(N))
    old_v = buf.values[:, :T].reshape(N)
    ret = buf.rewards[:, :T].reshape(N)  # gamma = 0: the return is the reward
    adv = ret - old_v
    adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)  # one minibatch: normalized over it
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
    err = (new_v - ret) ** 2
    if clip_vloss:
        err = torch.max(err, (old_v + (new_v - old_v).clamp(-vf_clip_coef, vf_clip_coef) - ret) ** 2)
    vl = 0.5 * err.mean()
    terms = dict(policy_loss=pg, value_loss=vl, entropy=ent, ratio=ratio.detach(), old_v=old_v, ret=ret)
    return pg + vf_coef * vl - ent_coef * ent, terms


def hand_grads(template, buf, **coefs):
    policy = copy.deepcopy(template)
    loss, terms = hand_loss(policy, buf, **coefs)
    loss.backward()
    return {name: p.grad for name, p in policy.named_parameters()}, terms


def assert_grads_close(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(actual[name], expected[name], **GRAD_TOL), name


def test_update_minimizes_the_hand_computed_loss_and_reports_its_terms():
    template = make_policy()
    buf = make_buffer(template)
    stats, grads = run_update(template, buf, vf_coef=0.5, ent_coef=0.01)
    expected, terms = hand_grads(template, buf, vf_coef=0.5, ent_coef=0.01)
    assert_grads_close(grads, expected)

    ratio = terms["ratio"]
    assert torch.allclose(ratio, torch.tensor(RATIOS), atol=1e-5)  # the buffer is what it claims
    assert stats.policy_loss == pytest.approx(terms["policy_loss"].item(), abs=1e-6)
    assert stats.value_loss == pytest.approx(terms["value_loss"].item(), abs=1e-6)
    assert stats.entropy == pytest.approx(terms["entropy"].item(), abs=1e-6)
    # k3 estimator mean((r - 1) - log r); |r - 1| > 0.2 for 1.5, 0.5, 1.5, 1.3, 0.7: 5 of 8 steps
    assert stats.approx_kl == pytest.approx(sum((r - 1) - math.log(r) for r in RATIOS) / N, abs=1e-5)
    assert stats.clip_fraction == pytest.approx(5 / 8)
    grad_norm = torch.cat([g.reshape(-1) for g in expected.values()]).norm().item()
    assert stats.grad_norm == pytest.approx(grad_norm, rel=1e-5)
    ret, old_v = terms["ret"], terms["old_v"]
    ev = 1 - (ret - old_v).var(unbiased=False) / ret.var(unbiased=False)
    assert stats.explained_variance == pytest.approx(ev.item(), abs=1e-5)
    assert (stats.update_epochs, stats.minibatches, stats.skipped_steps) == (1, 1, 0)


def test_vf_coef_scales_the_value_term():
    template = make_policy()
    buf = make_buffer(template)
    grads = {}
    for vf_coef in (0.5, 2.0):
        _, grads[vf_coef] = run_update(template, buf, vf_coef=vf_coef, ent_coef=0.0)
        assert_grads_close(grads[vf_coef], hand_grads(template, buf, vf_coef=vf_coef, ent_coef=0.0)[0])
    # The critic head sees only the value term: 4x the coefficient, 4x its gradient.
    # The actor head sees only the policy term: unchanged.
    for name in ("critic.weight", "critic.bias"):
        assert grads[0.5][name].abs().max() > 1e-3
        assert torch.allclose(grads[2.0][name], 4.0 * grads[0.5][name], **GRAD_TOL), name
    for name in ("actor.weight", "actor.bias"):
        assert torch.allclose(grads[2.0][name], grads[0.5][name], **GRAD_TOL), name


def test_entropy_is_a_bonus_the_update_maximizes():
    template = make_policy()
    buf = make_buffer(template)
    _, without = run_update(template, buf, vf_coef=0.5, ent_coef=0.0)
    _, with_bonus = run_update(template, buf, vf_coef=0.5, ent_coef=0.1)
    assert_grads_close(with_bonus, hand_grads(template, buf, vf_coef=0.5, ent_coef=0.1)[0])
    # loss(0.1) - loss(0) = -0.1 * H, so the gradients differ by -0.1 * dH/dtheta: a step
    # against the gradient raises the entropy.
    policy = copy.deepcopy(template)
    _, terms = hand_loss(policy, buf, vf_coef=0.0, ent_coef=0.0)
    terms["entropy"].backward()
    for name, p in policy.named_parameters():
        d_entropy = torch.zeros_like(p) if p.grad is None else p.grad  # the critic head: no entropy
        assert torch.allclose(with_bonus[name] - without[name], -0.1 * d_entropy, **GRAD_TOL), name
    assert policy.actor.bias.grad.abs().max() > 1e-4  # the entropy does depend on the actor


def test_advantages_are_normalized_per_minibatch():
    # Four minibatches of two steps, all ratios 1.5 (outside the 0.2 clip range), a learning rate
    # too small to move them. Normalized within a minibatch of two distinct values, the
    # advantages are exactly -1 and +1 whatever the shuffle pairs up, so each minibatch's loss is
    #   (max(-1.5, -1.2) + max(1.5, 1.2)) / 2 = (-1.2 + 1.5) / 2 = 0.15.
    template = make_policy()
    buf = make_buffer(template, ratios=[1.5] * N)
    stats, _ = run_update(template, buf, lr=1e-9, minibatch_size=2, vf_coef=0.5, ent_coef=0.0)
    assert stats.minibatches == 4
    assert stats.policy_loss == pytest.approx(0.15, abs=1e-5)
    # Normalized over the whole batch instead, the loss would differ.
    adv = torch.tensor(ADVS)
    whole = (adv - adv.mean()) / adv.std(unbiased=False)
    whole_loss = torch.where(whole > 0, -1.2 * whole, -1.5 * whole).mean().item()
    assert abs(whole_loss - 0.15) > 0.01


def test_value_clipping():
    # vf_clip_coef = 0.1 and collection-time values up to 0.5 away from the critic: the clipped
    # error is the larger one on several steps (e.g. step 1: V_old = V - 0.5, R = V_old + 2).
    template = make_policy()
    buf = make_buffer(template)
    coefs = dict(vf_coef=0.5, ent_coef=0.0, clip_vloss=True, vf_clip_coef=0.1)
    stats, grads = run_update(template, buf, **coefs)
    expected, terms = hand_grads(template, buf, **coefs)
    _, unclipped = hand_grads(template, buf, vf_coef=0.5, ent_coef=0.0)
    assert terms["value_loss"].item() - unclipped["value_loss"].item() > 0.05  # the clip matters here
    assert stats.value_loss == pytest.approx(terms["value_loss"].item(), abs=1e-6)
    assert_grads_close(grads, expected)
    # clip_vloss off: the plain squared error
    stats, _ = run_update(template, buf, vf_coef=0.5, ent_coef=0.0, vf_clip_coef=0.1)
    assert stats.value_loss == pytest.approx(unclipped["value_loss"].item(), abs=1e-6)


def test_target_kl_stops_after_the_first_epoch_that_exceeds_it():
    template = make_policy()
    # Ratios far from 1: KL = mean((r - 1) - log r) ~ 0.08 > 0.01 already in epoch 1.
    far = make_buffer(template)
    stats, _ = run_update(template, far, update_epochs=5, target_kl=0.01)
    assert (stats.update_epochs, stats.minibatches) == (1, 1)
    # A large target never stops; no target never stops.
    for target_kl in (10.0, None):
        stats, _ = run_update(template, far, update_epochs=5, target_kl=target_kl)
        assert (stats.update_epochs, stats.minibatches) == (5, 5)
    # Ratios exactly 1: epoch 1 measures KL 0 (it is evaluated before its own step), so it goes
    # on; after one Adam step of lr 0.05 the KL of epoch 2 exceeds 1e-6, and it stops there.
    same = make_buffer(template, ratios=[1.0] * N)
    stats, _ = run_update(template, same, lr=0.05, update_epochs=5, target_kl=1e-6)
    assert (stats.update_epochs, stats.minibatches) == (2, 2)


def test_update_threads_apply_to_the_update_only(monkeypatch):
    """trainer.update_threads: the update runs with that many torch threads, the rollout's
    count is back afterwards (also when the update raises), and the math is the same."""
    template = make_policy()
    buf = make_buffer(template)
    seen: list[int] = []
    real = TrainingManager._update

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TrainingManager, "_update", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = copy.deepcopy(template)
        optim = OptimizerManager(policy=policy, config=OptimizerConfig(learning_rate=1e-3, max_grad_norm=None))
        manager = TrainingManager(
            ppo=PPOConfig(gamma=0.0, clip_coef=CLIP),
            loop=TrainingLoopConfig(total_timesteps=N, batch_size=N, minibatch_size=N, update_epochs=1, update_threads=2),
            horizon=T, recurrent=False, device=torch.device("cpu"), seed=0,
        )
        stats = manager.update(policy, optim, buf, TrainingProgress(total_timesteps=N))
        assert seen == [2] and torch.get_num_threads() == 1
        expected, _ = run_update(template, buf)
        assert stats.policy_loss == pytest.approx(expected.policy_loss, rel=1e-6)
        monkeypatch.setattr(TrainingManager, "_update", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            manager.update(policy, optim, buf, TrainingProgress(total_timesteps=N))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
