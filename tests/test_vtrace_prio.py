"""V-trace-clipped advantages and prioritized segment sampling (ppo.vtrace_*, trainer.prio_*).

The math against hand computations; the update against a hand-written V-trace loss on the
tiny buffer of tests/test_update.py (whose stored log-probs are the policy's own minus chosen
log-ratios, so the fresh ratios of the first minibatch are known); the sampler's empirical
distribution and its state across a checkpoint.
"""

from __future__ import annotations

import copy

import pytest
import torch

from metta_rl.config import ConfigError, OptimizerConfig, PPOConfig, TrainingLoopConfig
from metta_rl.core.ppo import (
    compute_gae,
    importance_weights,
    ppo_loss,
    segment_probabilities,
    vtrace_advantages,
)
from metta_rl.core.progress import TrainingProgress
from metta_rl.managers.optimizer import OptimizerManager
from metta_rl.managers.training import TrainingManager
from tests.test_update import CLIP, N, OBS, RATIOS, ROWS, T, assert_grads_close, make_buffer, make_policy


def random_rollout(rows=3, steps=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(rows, steps, generator=g)
    values = torch.randn(rows, steps + 1, generator=g)
    terminated = (torch.rand(rows, steps, generator=g) < 0.15).float()
    truncated = (torch.rand(rows, steps, generator=g) < 0.15).float() * (1 - terminated)
    return rewards, values, terminated, truncated


def hand_vtrace(rewards, values, terminated, truncated, ratio, gamma, lam, rho_clip, c_clip):
    """The V-trace recursion written out step by step, one row at a time, in Python floats."""
    rows, steps = rewards.shape
    adv = [[0.0] * steps for _ in range(rows)]
    for i in range(rows):
        nxt = 0.0
        for t in reversed(range(steps)):
            r = float(ratio[i, t])
            rho, c = min(rho_clip, r), min(c_clip, r)
            boot = 0.0 if terminated[i, t] else gamma * float(values[i, t + 1])
            delta = rho * (float(rewards[i, t]) + boot - float(values[i, t]))
            cont = 0.0 if (terminated[i, t] or truncated[i, t]) else gamma * lam * c
            nxt = delta + cont * nxt
            adv[i][t] = nxt
    return torch.tensor(adv)


# ----------------------------------------------------------------------------------- the math
def test_vtrace_with_ratio_one_is_exactly_gae():
    rewards, values, terminated, truncated = random_rollout()
    gae, gae_ret = compute_gae(rewards, values, terminated, truncated, gamma=0.99, gae_lambda=0.95)
    for rho_clip, c_clip in ((1.0, 1.0), (2.0, 1.5)):
        adv, ret = vtrace_advantages(
            rewards, values, terminated, truncated, torch.zeros_like(rewards),
            gamma=0.99, gae_lambda=0.95, rho_clip=rho_clip, c_clip=c_clip,
        )
        assert torch.equal(adv, gae) and torch.equal(ret, gae_ret)


def test_vtrace_matches_the_hand_recursion_with_clipped_ratios():
    rewards, values, terminated, truncated = random_rollout(seed=1)
    ratio = torch.rand(rewards.shape, generator=torch.Generator().manual_seed(2)) * 2.5 + 0.1  # 0.1 .. 2.6
    adv, ret = vtrace_advantages(
        rewards, values, terminated, truncated, ratio.log(), gamma=0.9, gae_lambda=0.8, rho_clip=1.2, c_clip=0.7
    )
    expected = hand_vtrace(rewards, values, terminated, truncated, ratio, 0.9, 0.8, 1.2, 0.7)
    assert torch.allclose(adv, expected, atol=1e-5)
    assert torch.allclose(ret, expected + values[:, :-1], atol=1e-5)


def test_vtrace_hand_example():
    """One row, three steps, no episode end: gamma = 1, lambda = 1, rho_clip = 1, c_clip = 0.5."""
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 0.0, 3.0]])  # V(s0..s2) and the bootstrap V(s3)
    ratio = torch.tensor([[2.0, 0.5, 1.0]])
    zeros = torch.zeros(1, 3)
    adv, _ = vtrace_advantages(rewards, values, zeros, zeros, ratio.log(), gamma=1.0, gae_lambda=1.0,
                               rho_clip=1.0, c_clip=0.5)
    # deltas: rho=(1, .5, 1) * (1+1-.5, 0+0-1, 2+3-0) = (1.5, -0.5, 5); traces c=(.5, .5, .5)
    # A2 = 5; A1 = -0.5 + 0.5 * 5 = 2; A0 = 1.5 + 0.5 * 2 = 2.5
    assert adv.tolist() == [[2.5, 2.0, 5.0]]


def test_segment_probabilities_follow_mean_absolute_advantage():
    adv = torch.tensor([[1.0, -3.0, 100.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # 100 is not a valid step
    probs = segment_probabilities(adv, valid, alpha=1.0)
    expected = torch.tensor([2.0, 0.5, 0.0]) + 1e-6
    assert torch.allclose(probs, expected / expected.sum())
    assert torch.allclose(segment_probabilities(adv, valid, alpha=2.0)[:2], torch.tensor([4.0, 0.25]) / 4.25, atol=1e-6)
    assert torch.allclose(segment_probabilities(adv, valid, alpha=0.0), torch.full((3,), 1 / 3))


def test_importance_weights_correct_the_sampling_bias():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    w = importance_weights(probs, 4, beta=1.0)
    assert torch.allclose(w, torch.tensor([0.5, 1.0, 2.0, 2.0]))
    assert torch.allclose(importance_weights(probs, 4, beta=0.0), torch.ones(4))
    # Expected weighted value under P equals the uniform mean (beta = 1): E_P[w x] = mean(x).
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float((probs * w * x).sum()) == pytest.approx(float(x.mean()))
    assert torch.equal(importance_weights(torch.full((5,), 0.2), 5, beta=0.4), torch.ones(5))


def test_sample_weights_scale_only_the_policy_term():
    g = torch.Generator().manual_seed(3)
    args = dict(
        new_logprob=torch.randn(6, generator=g), old_logprob=torch.randn(6, generator=g),
        advantages=torch.randn(6, generator=g), new_values=torch.randn(6, generator=g),
        old_values=torch.randn(6, generator=g), returns=torch.randn(6, generator=g),
        clip_coef=0.2, vf_coef=0.5, ent_coef=0.0,
    )
    plain = ppo_loss(**args)
    assert torch.equal(ppo_loss(**args, sample_weights=torch.ones(6)).loss, plain.loss)
    sw = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.1, 1.0])
    weighted = ppo_loss(**args, sample_weights=sw)
    ratio = (args["new_logprob"] - args["old_logprob"]).exp()
    adv = args["advantages"]
    per_step = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    assert float(weighted.policy_loss) == pytest.approx(float((per_step * sw).mean()), rel=1e-6)
    assert torch.equal(weighted.value_loss, plain.value_loss)


# ---------------------------------------------------------------------------------- the update
def manager(*, ppo=None, loop=None, recurrent=False, horizon=T, seed=0):
    return TrainingManager(
        ppo=ppo or PPOConfig(), loop=loop or TrainingLoopConfig(total_timesteps=N, batch_size=N, minibatch_size=N),
        horizon=horizon, recurrent=recurrent, device=torch.device("cpu"), seed=seed,
    )


def test_each_minibatch_recomputes_vtrace_from_its_fresh_ratios():
    """One minibatch, one epoch: the gradient the update hands the optimizer is that of the PPO
    loss whose advantages are V-trace of the ratios at the starting weights (RATIOS, built into
    the buffer), normalized; the value target is the V-trace target."""
    gamma, lam, rho_clip, c_clip = 0.9, 0.95, 1.0, 0.9
    template = make_policy()
    buf = make_buffer(template)
    buf.terminated[0, 1] = 1.0  # an episode ends in row 0
    policy = copy.deepcopy(template)
    optim = OptimizerManager(policy=policy, config=OptimizerConfig(learning_rate=1e-3, max_grad_norm=None))
    ppo = PPOConfig(gamma=gamma, gae_lambda=lam, clip_coef=CLIP, vtrace_rho_clip=rho_clip, vtrace_c_clip=c_clip)
    loop = TrainingLoopConfig(total_timesteps=N, batch_size=N, minibatch_size=N, update_epochs=1)
    stats = manager(ppo=ppo, loop=loop).update(policy, optim, buf, TrainingProgress(total_timesteps=N))
    grads = {name: p.grad.clone() for name, p in policy.named_parameters()}

    ref = copy.deepcopy(template)
    logits, new_v, _ = ref.forward_step(buf.obs[:, :T].reshape(N, OBS))
    new_logp = torch.log_softmax(logits, -1).gather(-1, buf.actions[:, :T].reshape(N, 1)).squeeze(-1)
    ratio = torch.exp(new_logp - buf.logprobs[:, :T].reshape(N))
    assert torch.allclose(ratio, torch.tensor(RATIOS), atol=1e-5)
    adv = hand_vtrace(buf.rewards[:, :T], buf.values, buf.terminated[:, :T], buf.truncated[:, :T],
                      ratio.detach().view(ROWS, T), gamma, lam, rho_clip, c_clip).reshape(N)
    ret = adv + buf.values[:, :T].reshape(N)
    adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
    vl = 0.5 * ((new_v - ret) ** 2).mean()
    (pg + 0.5 * vl).backward()
    assert_grads_close(grads, {name: p.grad for name, p in ref.named_parameters()})
    assert stats.policy_loss == pytest.approx(pg.item(), abs=1e-5)
    assert stats.value_loss == pytest.approx(vl.item(), abs=1e-5)


def test_vtrace_and_prio_need_whole_rows_per_minibatch():
    loop = TrainingLoopConfig(total_timesteps=N, batch_size=N, minibatch_size=2)
    with pytest.raises(ConfigError, match=r"trainer.minibatch_size=2 is invalid: with ppo.vtrace_rho_clip .*multiple of the horizon \(4"):
        manager(ppo=PPOConfig(vtrace_rho_clip=1.0, vtrace_c_clip=1.0), loop=loop)
    prio = TrainingLoopConfig(total_timesteps=N, batch_size=N, minibatch_size=2, prio_alpha=0.5, prio_beta0=0.5)
    with pytest.raises(ConfigError, match=r"with trainer.prio_alpha a minibatch is whole agent rows"):
        manager(loop=prio)
    manager(loop=loop)  # plain PPO: any minibatch size


def test_prioritized_minibatches_draw_rows_by_priority_with_their_weights():
    rows, steps = 4, 3
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    data = {"valid": torch.ones(rows, steps), "advantages": torch.randn(rows, steps),
            "row": torch.arange(rows).unsqueeze(1).expand(rows, steps).clone()}
    mgr = manager(
        loop=TrainingLoopConfig(total_timesteps=12, batch_size=12, minibatch_size=6, prio_alpha=1.0, prio_beta0=0.5),
        horizon=steps,
    )
    counts = torch.zeros(rows)
    for _ in range(2000):
        mbs = mgr._prioritized_minibatches(data, probs, 2, beta=0.5)
        assert len(mbs) == 2 and all(mb["row"].shape == (2, steps) for mb in mbs)
        for mb in mbs:
            drawn = mb["row"][:, 0]
            counts += torch.bincount(drawn, minlength=rows)
            expected_w = (probs[drawn] * rows) ** -0.5
            assert torch.allclose(mb["sample_weights"], expected_w.unsqueeze(1).expand(2, steps))
    freq = counts / counts.sum()  # 8000 draws: std of each share <= 0.0055
    assert torch.allclose(freq, probs, atol=0.02), freq


def test_the_sampler_state_travels_with_the_checkpoint():
    loop = TrainingLoopConfig(total_timesteps=12, batch_size=12, minibatch_size=6, prio_alpha=1.0, prio_beta0=0.5)
    data = {"valid": torch.ones(4, 3), "advantages": torch.randn(4, 3),
            "row": torch.arange(4).unsqueeze(1).expand(4, 3).clone()}
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    a = manager(loop=loop, horizon=3, seed=5)
    for _ in range(3):
        a._prioritized_minibatches(data, probs, 2, beta=0.5)
    b = manager(loop=loop, horizon=3, seed=99)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for _ in range(3):
        da = [mb["row"][:, 0].tolist() for mb in a._prioritized_minibatches(data, probs, 2, beta=0.5)]
        db = [mb["row"][:, 0].tolist() for mb in b._prioritized_minibatches(data, probs, 2, beta=0.5)]
        assert da == db


def test_prioritized_update_weights_the_policy_loss_and_anneals_beta(monkeypatch):
    """The update hands ppo_loss importance weights from the row probabilities of its advantages,
    with beta moved from prio_beta0 towards 1 by the share of the run done."""
    seen = []
    import metta_rl.managers.training as training

    real = training.ppo_loss

    def spy(**kwargs):
        seen.append(kwargs["sample_weights"].clone())
        return real(**kwargs)

    monkeypatch.setattr(training, "ppo_loss", spy)
    template = make_policy()
    buf = make_buffer(template)
    loop = TrainingLoopConfig(total_timesteps=4 * N, batch_size=N, minibatch_size=T, update_epochs=1,
                              prio_alpha=1.0, prio_beta0=0.2)
    mgr = manager(ppo=PPOConfig(gamma=0.0, clip_coef=CLIP), loop=loop)
    policy = copy.deepcopy(template)
    optim = OptimizerManager(policy=policy, config=OptimizerConfig(learning_rate=1e-3, max_grad_norm=None))
    progress = TrainingProgress(total_timesteps=4 * N, agent_step=2 * N)
    mgr.update(policy, optim, buf, progress)
    beta = 0.2 + 0.8 * 0.5
    adv = (buf.rewards[:, :T] - buf.values[:, :T])  # gamma = 0
    probs = segment_probabilities(adv, buf.valid[:, :T], 1.0)
    allowed = {round(float((p * ROWS) ** -beta), 5) for p in probs}
    assert len(seen) == ROWS  # one row per minibatch, as many draws as rows
    for w in seen:
        assert w.shape == (1, T) and len(set(w.flatten().tolist())) == 1
        assert round(float(w[0, 0]), 5) in allowed


def test_config_needs_both_clips_and_both_prio_settings():
    with pytest.raises(ConfigError, match=r"^ppo.vtrace_c_clip=None is invalid: expected a number > 0 with ppo.vtrace_rho_clip set"):
        PPOConfig(vtrace_rho_clip=1.0)
    with pytest.raises(ConfigError, match=r"^trainer.prio_alpha=None is invalid: expected a number with trainer.prio_beta0 set"):
        TrainingLoopConfig(prio_beta0=0.4)
    assert not PPOConfig().vtrace and not TrainingLoopConfig().prioritized
