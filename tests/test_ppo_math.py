"""Hand-computed checks of the PPO math in metta_rl.core.ppo.

Every expected number below is written out (with the arithmetic in comments); the tests never
re-implement GAE or the loss, so a shared mistake between test and code cannot hide a bug.
"""

from __future__ import annotations

import math

import pytest
import torch

from metta_rl.core.ppo import (
    compute_gae,
    explained_variance,
    masked_mean,
    normalize_advantages,
    ppo_loss,
)

torch.set_num_threads(1)

F64 = torch.float64
F32 = torch.float32
TOL = dict(rtol=0.0, atol=1e-10)
# The loss terms are checked in float32, the dtype the trainer uses.
TOL32 = dict(rtol=0.0, atol=1e-6)
# compute_gae builds its done masks with ``.float()`` (float32), so gamma * lambda is rounded to
# float32 (0.72 -> 0.7200000286) even for float64 inputs: its results are float32-accurate only
# (see test_gae_float64_inputs_keep_float64_precision). Tight, but float32-level, tolerance:
GAE_TOL = dict(rtol=0.0, atol=1e-6)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def t32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F32)


# ---------------------------------------------------------------------------------- GAE
# Row with T = 5, gamma = 0.9, lambda = 0.8 (gamma * lambda = 0.72).
#   t:           0    1      2     3     4   | bootstrap
#   rewards:     1    2      0.5   1     3   |
#   values:      1    1.5    10    1     4   | 2
#   terminated:  -    yes    -     -     -
#   truncated:   -    -      -     yes   -
GAMMA, LAMBDA = 0.9, 0.8
ROW_REWARDS = [1.0, 2.0, 0.5, 1.0, 3.0]
ROW_VALUES = [1.0, 1.5, 10.0, 1.0, 4.0, 2.0]
ROW_TERMINATED = [False, True, False, False, False]
ROW_TRUNCATED = [False, False, False, True, False]

# TD errors delta_t = r_t + gamma * V_{t+1} * (1 - terminated_t) - V_t:
#   delta_4 = 3   + 0.9 * 2   - 4   =  0.8
#   delta_3 = 1   + 0.9 * 4   - 1   =  3.6    (truncated: bootstraps from V(obs_4) = 4)
#   delta_2 = 0.5 + 0.9 * 1   - 10  = -8.6
#   delta_1 = 2   + 0         - 1.5 =  0.5    (terminated: no bootstrap)
#   delta_0 = 1   + 0.9 * 1.5 - 1   =  1.35
# Advantages A_t = delta_t + 0.72 * A_{t+1} * (1 - done_t):
#   A_4 = 0.8
#   A_3 = 3.6                       (done at 3: A_4 is not added)
#   A_2 = -8.6 + 0.72 * 3.6 = -6.008
#   A_1 = 0.5                       (done at 1: A_2 is not added)
#   A_0 = 1.35 + 0.72 * 0.5 = 1.71
EXPECTED_ADV = [1.71, 0.5, -6.008, 3.6, 0.8]
# Returns = A + V[:-1] = [2.71, 2.0, 3.992, 4.6, 4.8]
EXPECTED_RET = [2.71, 2.0, 3.992, 4.6, 4.8]


def _row_inputs():
    return (
        t64([ROW_REWARDS]),
        t64([ROW_VALUES]),
        torch.tensor([ROW_TERMINATED]),
        torch.tensor([ROW_TRUNCATED]),
    )


def test_gae_hand_computed_row_with_termination_and_truncation():
    rewards, values, terminated, truncated = _row_inputs()
    adv, ret = compute_gae(rewards, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    assert adv.shape == (1, 5) and ret.shape == (1, 5)
    assert torch.allclose(adv, t64([EXPECTED_ADV]), **GAE_TOL)
    assert torch.allclose(ret, t64([EXPECTED_RET]), **GAE_TOL)


def test_gae_terminated_step_target_is_reward_only():
    rewards, values, terminated, truncated = _row_inputs()
    _, ret = compute_gae(rewards, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    # Terminated at t=1: target = r_1 = 2, not 2 + 0.9 * V_2 = 11.
    assert ret[0, 1].item() == pytest.approx(2.0, abs=1e-6)


def test_gae_truncated_step_bootstraps_from_last_observation():
    rewards, values, terminated, truncated = _row_inputs()
    _, ret = compute_gae(rewards, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    # Truncated at t=3: target = r_3 + gamma * V(obs_4) = 1 + 0.9 * 4 = 4.6
    # (not r_3 = 1 as for a termination, and not 4.6 + 0.72 * 0.8 = 5.176 as if the trace continued).
    assert ret[0, 3].item() == pytest.approx(4.6, abs=1e-6)


def test_gae_recursion_does_not_cross_either_boundary():
    rewards, values, terminated, truncated = _row_inputs()
    adv, _ = compute_gae(rewards, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    # Changing anything after a boundary (rewards/values of steps 2.. and 4..) must leave the
    # advantages at and before the boundary unchanged, except through the bootstrap V(obs_{t+1})
    # of the truncated step, which is V_4 and is kept fixed here.
    rewards2 = rewards.clone()
    rewards2[0, 4] = 100.0  # after the truncation at 3
    values2 = values.clone()
    values2[0, 5] = -50.0  # bootstrap after step 4
    adv2, _ = compute_gae(rewards2, values2, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    assert torch.allclose(adv2[0, :4], adv[0, :4], **GAE_TOL)

    rewards3 = rewards.clone()
    rewards3[0, 2] = -100.0  # after the termination at 1
    adv3, _ = compute_gae(rewards3, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    assert torch.allclose(adv3[0, :2], adv[0, :2], **GAE_TOL)
    # ... while the change does flow into A_2 itself: (-100 + 0.9 * 1 - 10) + 0.72 * 3.6 = -106.508
    assert adv3[0, 2].item() == pytest.approx(-106.508, abs=1e-6)


def test_gae_returns_equal_advantages_plus_values():
    rewards, values, terminated, truncated = _row_inputs()
    adv, ret = compute_gae(rewards, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    assert torch.allclose(ret, adv + values[:, :-1], **GAE_TOL)


# Row without dones, T = 5, gamma = 0.9, lambda = 1: A_t = G_t - V_t with
# G_t = sum_k gamma^k r_{t+k} + gamma^(T-t) * bootstrap.
#   rewards: 1  0  2  0  1       values: 0.5  1  0  2  1 | bootstrap 10
#   G_4 = 1 + 0.9 * 10   = 10     A_4 = 10    - 1   = 9
#   G_3 = 0 + 0.9 * 10   = 9      A_3 = 9     - 2   = 7
#   G_2 = 2 + 0.9 * 9    = 10.1   A_2 = 10.1  - 0   = 10.1
#   G_1 = 0 + 0.9 * 10.1 = 9.09   A_1 = 9.09  - 1   = 8.09
#   G_0 = 1 + 0.9 * 9.09 = 9.181  A_0 = 9.181 - 0.5 = 8.681
# Check G_0 directly: 1 + 0 + 0.81 * 2 + 0 + 0.6561 * 1 + 0.59049 * 10 = 1 + 1.62 + 0.6561 + 5.9049 = 9.181
NODONE_REWARDS = [1.0, 0.0, 2.0, 0.0, 1.0]
NODONE_VALUES = [0.5, 1.0, 0.0, 2.0, 1.0, 10.0]
NODONE_ADV = [8.681, 8.09, 10.1, 7.0, 9.0]


def test_gae_lambda_one_without_dones_is_discounted_return_minus_value():
    no = torch.zeros(1, 5, dtype=torch.bool)
    adv, ret = compute_gae(t64([NODONE_REWARDS]), t64([NODONE_VALUES]), no, no, gamma=0.9, gae_lambda=1.0)
    assert torch.allclose(adv, t64([NODONE_ADV]), **GAE_TOL)
    assert torch.allclose(ret, t64([[9.181, 9.09, 10.1, 9.0, 10.0]]), **GAE_TOL)


def test_gae_rows_are_independent():
    # Stack the boundary row and the no-done row: each row's result equals its own single-row result.
    rewards, values, terminated, truncated = _row_inputs()
    rewards2 = torch.cat([rewards, t64([NODONE_REWARDS])])
    values2 = torch.cat([values, t64([NODONE_VALUES])])
    no = torch.zeros(1, 5, dtype=torch.bool)
    term2 = torch.cat([terminated, no])
    trunc2 = torch.cat([truncated, no])
    adv, _ = compute_gae(rewards2, values2, term2, trunc2, gamma=GAMMA, gae_lambda=LAMBDA)
    single_adv, _ = compute_gae(t64([NODONE_REWARDS]), t64([NODONE_VALUES]), no, no, gamma=GAMMA, gae_lambda=LAMBDA)
    assert torch.allclose(adv[0], t64(EXPECTED_ADV), **GAE_TOL)
    assert torch.allclose(adv[1], single_adv[0], **GAE_TOL)


def test_gae_float64_inputs_keep_float64_precision():
    rewards, values, terminated, truncated = _row_inputs()
    adv, _ = compute_gae(rewards, values, terminated, truncated, gamma=GAMMA, gae_lambda=LAMBDA)
    assert adv.dtype == F64
    # A_2 = -8.6 + 0.72 * 3.6 = -6.008 exactly in float64 arithmetic (to ~1e-15)
    assert torch.allclose(adv, t64([EXPECTED_ADV]), rtol=0.0, atol=1e-12)


def test_gae_accepts_float_done_flags_like_the_buffer():
    # The experience buffer stores terminated/truncated as float tensors.
    rewards, values, terminated, truncated = _row_inputs()
    adv, _ = compute_gae(
        rewards.float(), values.float(), terminated.float(), truncated.float(), gamma=GAMMA, gae_lambda=LAMBDA
    )
    assert adv.dtype == torch.float32
    assert torch.allclose(adv, torch.tensor([EXPECTED_ADV]), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- PPO loss
# clip_coef = 0.2, ratios r = exp(new_lp - old_lp):
#   i  r     A    -A*r    -A*clip(r, 0.8, 1.2)   max     case
#   0  1.1   1    -1.1    -1.1                   -1.1    inside the clip range
#   1  1.5   2    -3.0    -2.4                   -2.4    A>0, r>1+c: clipped
#   2  0.5  -1     0.5     0.8                    0.8    A<0, r<1-c: clipped
#   3  1.5  -1     1.5     1.2                    1.5    A<0, r>1+c: unclipped (pessimistic)
# policy_loss = (-1.1 - 2.4 + 0.8 + 1.5) / 4 = -1.2 / 4 = -0.3
RATIOS = [1.1, 1.5, 0.5, 1.5]
ADVS = [1.0, 2.0, -1.0, -1.0]
# (r - 1) - log r:
#   1.1: 0.1 - 0.09531017980432486 = 0.004689820195675071
#   1.5: 0.5 - 0.4054651081081644  = 0.09453489189183562
#   0.5: -0.5 + 0.6931471805599453 = 0.1931471805599453
KL_TERMS = [0.004689820195675071, 0.09453489189183562, 0.1931471805599453, 0.09453489189183562]
# value loss: new V = [1, 2, 3, 4], returns = [0, 2, 5, 4.5]
#   (V - R)^2 = [1, 0, 4, 0.25]  -> 0.5 * 5.25 / 4 = 0.65625
# clipped (vf_clip_coef = 0.5), old V = [-1, 2.5, 2, 3]:
#   V_clip = old + clamp(new - old, -0.5, 0.5) = [-0.5, 2.0, 2.5, 3.5]
#   (V_clip - R)^2 = [0.25, 0, 6.25, 1]
#   max          = [1, 0, 6.25, 1]  (i0: unclipped larger; i2, i3: clipped larger)
#   -> 0.5 * 8.25 / 4 = 1.03125
NEW_V = [1.0, 2.0, 3.0, 4.0]
OLD_V = [-1.0, 2.5, 2.0, 3.0]
RETURNS = [0.0, 2.0, 5.0, 4.5]
ENTROPY = [0.5, 1.0, 1.5, 2.0]  # mean 1.25


def _loss(**overrides):
    kwargs = dict(
        new_logprob=torch.log(t32(RATIOS)),
        old_logprob=torch.zeros(4, dtype=F32),
        advantages=t32(ADVS),
        entropy=t32(ENTROPY),
        new_values=t32(NEW_V),
        old_values=t32(OLD_V),
        returns=t32(RETURNS),
        clip_coef=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
    )
    kwargs.update(overrides)
    return ppo_loss(**kwargs)


def test_ppo_policy_loss_clipping_hand_computed():
    out = _loss()
    assert out.policy_loss.item() == pytest.approx(-0.3, abs=1e-6)


def test_ppo_policy_loss_uses_log_prob_difference_not_absolute_values():
    # Same ratios from different absolute log-probs give the same loss.
    old = t32([-2.0, -0.3, -1.7, -5.0])
    out = _loss(new_logprob=old + torch.log(t32(RATIOS)), old_logprob=old)
    assert out.policy_loss.item() == pytest.approx(-0.3, abs=1e-6)


def test_ppo_policy_loss_pessimistic_unclipped_side():
    # A>0 with r<1-c and A<0 with r>1+c are NOT clipped (the min of the surrogates):
    #   r=0.5, A=1:  max(-0.5, -0.8) = -0.5;   r=1.5, A=-1: max(1.5, 1.2) = 1.5
    #   policy_loss = (-0.5 + 1.5) / 2 = 0.5
    out = ppo_loss(
        new_logprob=torch.log(t32([0.5, 1.5])),
        old_logprob=torch.zeros(2, dtype=F32),
        advantages=t32([1.0, -1.0]),
        entropy=torch.zeros(2, dtype=F32),
        new_values=torch.zeros(2, dtype=F32),
        old_values=torch.zeros(2, dtype=F32),
        returns=torch.zeros(2, dtype=F32),
        clip_coef=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
    )
    assert out.policy_loss.item() == pytest.approx(0.5, abs=1e-6)


def test_ppo_value_loss_unclipped():
    out = _loss()
    assert out.value_loss.item() == pytest.approx(0.65625, abs=1e-6)


def test_ppo_value_loss_clipped_takes_elementwise_max():
    out = _loss(clip_vloss=True, vf_clip_coef=0.5)
    assert out.value_loss.item() == pytest.approx(1.03125, abs=1e-6)


def test_ppo_value_loss_clip_with_large_coef_equals_unclipped():
    out = _loss(clip_vloss=True, vf_clip_coef=100.0)
    assert out.value_loss.item() == pytest.approx(0.65625, abs=1e-6)


def test_ppo_entropy_is_mean():
    assert _loss().entropy.item() == pytest.approx(1.25, abs=1e-6)


def test_ppo_approx_kl_k3_estimator():
    # sum(KL_TERMS) / 4 = 0.3869067845392916 / 4 = 0.0967266961348229
    assert _loss().approx_kl.item() == pytest.approx(0.0967266961348229, abs=1e-6)


def test_ppo_clip_fraction():
    # |r - 1| > 0.2 for r = 1.5, 0.5, 1.5, not for 1.1  -> 3 / 4
    assert _loss().clip_fraction.item() == pytest.approx(0.75, abs=1e-6)


def test_ppo_identical_policies_give_zero_kl_and_no_clipping():
    out = _loss(new_logprob=torch.zeros(4, dtype=F32))
    assert out.approx_kl.item() == 0.0
    assert out.clip_fraction.item() == 0.0
    # r = 1 everywhere: policy_loss = -mean(A) = -(1 + 2 - 1 - 1) / 4 = -0.25
    assert out.policy_loss.item() == pytest.approx(-0.25, abs=1e-6)


def test_ppo_mask_excludes_elements():
    # mask out element 2 (r=0.5, A=-1):
    #   policy_loss   = (-1.1 - 2.4 + 1.5) / 3 = -2/3
    #   value_loss    = 0.5 * (1 + 0 + 0.25) / 3 = 0.2083333...
    #   clipped value = 0.5 * (1 + 0 + 1) / 3 = 1/3
    #   entropy       = (0.5 + 1 + 2) / 3 = 7/6
    #   clip_fraction = (0 + 1 + 1) / 3 = 2/3
    #   approx_kl     = (0.00468982... + 2 * 0.09453489...) / 3
    mask = t32([1.0, 1.0, 0.0, 1.0])
    out = _loss(mask=mask)
    assert out.policy_loss.item() == pytest.approx(-2.0 / 3.0, abs=1e-6)
    assert out.value_loss.item() == pytest.approx(1.25 / 6.0, abs=1e-6)
    assert out.entropy.item() == pytest.approx(7.0 / 6.0, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(2.0 / 3.0, abs=1e-6)
    expected_kl = (KL_TERMS[0] + KL_TERMS[1] + KL_TERMS[3]) / 3
    assert out.approx_kl.item() == pytest.approx(expected_kl, abs=1e-6)
    out_clip = _loss(mask=mask, clip_vloss=True, vf_clip_coef=0.5)
    assert out_clip.value_loss.item() == pytest.approx(1.0 / 3.0, abs=1e-6)


def test_ppo_masked_elements_have_no_influence_even_when_extreme():
    mask = t32([1.0, 1.0, 0.0, 1.0])
    base = _loss(mask=mask, vf_coef=2.0, ent_coef=0.1)
    wild = _loss(
        vf_coef=2.0,
        ent_coef=0.1,
        mask=mask,
        new_logprob=torch.log(t32([1.1, 1.5, 1e6, 1.5])),
        advantages=t32([1.0, 2.0, 1e9, -1.0]),
        entropy=t32([0.5, 1.0, 1e9, 2.0]),
        new_values=t32([1.0, 2.0, 1e9, 4.0]),
        returns=t32([0.0, 2.0, -1e9, 4.5]),
    )
    for name in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert getattr(base, name).item() == pytest.approx(getattr(wild, name).item(), abs=1e-6), name


def test_ppo_policy_and_value_loss_carry_gradients_stats_do_not():
    new_lp = torch.log(t32(RATIOS)).requires_grad_(True)
    new_v = t32(NEW_V).requires_grad_(True)
    out = _loss(new_logprob=new_lp, new_values=new_v)
    assert out.policy_loss.requires_grad and out.value_loss.requires_grad
    assert not out.approx_kl.requires_grad and not out.clip_fraction.requires_grad
    out.value_loss.backward()
    # d/dV 0.5 * mean((V - R)^2) = (V - R) / 4 = [1, 0, -2, -0.5] / 4
    assert torch.allclose(new_v.grad, t32([0.25, 0.0, -0.5, -0.125]), **TOL32)


# The total: loss = policy_loss + vf_coef * value_loss - ent_coef * entropy.
#   vf_coef = 2, ent_coef = 0.1:  -0.3 + 2 * 0.65625 - 0.1 * 1.25 = -0.3 + 1.3125 - 0.125 = 0.8875
def test_ppo_total_loss_hand_computed():
    out = _loss(vf_coef=2.0, ent_coef=0.1)
    assert out.loss.item() == pytest.approx(0.8875, abs=1e-6)
    # the terms are unchanged by the coefficients
    assert out.policy_loss.item() == pytest.approx(-0.3, abs=1e-6)
    assert out.value_loss.item() == pytest.approx(0.65625, abs=1e-6)
    assert out.entropy.item() == pytest.approx(1.25, abs=1e-6)
    # vf_coef = 0.5, ent_coef = 0: -0.3 + 0.328125 = 0.028125
    assert _loss().loss.item() == pytest.approx(0.028125, abs=1e-6)


def test_ppo_total_loss_gradients_carry_the_coefficients_and_the_entropy_bonus_sign():
    # d loss / d entropy_i = -ent_coef / 4: more entropy lowers the loss (a bonus, not a penalty).
    # d loss / d V_i = vf_coef * (V_i - R_i) / 4 = 2 * [1, 0, -2, -0.5] / 4
    ent = t32(ENTROPY).requires_grad_(True)
    new_v = t32(NEW_V).requires_grad_(True)
    _loss(entropy=ent, new_values=new_v, vf_coef=2.0, ent_coef=0.1).loss.backward()
    assert torch.allclose(ent.grad, torch.full((4,), -0.025), **TOL32)
    assert torch.allclose(new_v.grad, t32([0.5, 0.0, -1.0, -0.25]), **TOL32)


def test_ppo_entropy_may_be_omitted_only_without_entropy_bonus():
    out = _loss(entropy=None)
    assert out.entropy is None
    assert out.loss.item() == pytest.approx(0.028125, abs=1e-6)  # -0.3 + 0.5 * 0.65625
    with pytest.raises(ValueError, match="ent_coef=0.1 needs `entropy`"):
        _loss(entropy=None, ent_coef=0.1)


# ---------------------------------------------------------------------------------- helpers
def test_ppo_loss_accepts_float64_inputs():
    out = ppo_loss(
        new_logprob=torch.log(t64(RATIOS)),
        old_logprob=torch.zeros(4, dtype=F64),
        advantages=t64(ADVS),
        entropy=t64(ENTROPY),
        new_values=t64(NEW_V),
        old_values=t64(OLD_V),
        returns=t64(RETURNS),
        clip_coef=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
    )
    assert out.policy_loss.item() == pytest.approx(-0.3, abs=1e-10)
    assert out.clip_fraction.item() == pytest.approx(0.75, abs=1e-12)


def test_masked_mean():
    x = t32([1.0, 2.0, 3.0, 10.0])
    assert masked_mean(x, None).item() == pytest.approx(4.0)
    assert masked_mean(x, t32([1.0, 1.0, 1.0, 0.0])).item() == pytest.approx(2.0)
    # an all-zero mask does not divide by zero
    assert masked_mean(x, torch.zeros(4, dtype=F32)).item() == 0.0


# [1, 2, 3, 4]: mean 2.5, population var (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25,
# std = sqrt(1.25) = 1.118033988749895, so the normalized values are
# [-1.5, -0.5, 0.5, 1.5] / 1.118033988749895 = [-1.3416407865, -0.4472135955, 0.4472135955, 1.3416407865]
NORMALIZED_1234 = [-1.3416407865, -0.4472135955, 0.4472135955, 1.3416407865]


def test_normalize_advantages_without_mask():
    out = normalize_advantages(t32([1.0, 2.0, 3.0, 4.0]))
    assert torch.allclose(out, t32(NORMALIZED_1234), **TOL32)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)


def test_normalize_advantages_with_mask_ignores_masked_entries():
    # The same valid entries plus masked outliers: the valid entries normalize exactly as above.
    adv = t32([1.0, 1000.0, 2.0, 3.0, -77.0, 4.0])
    mask = t32([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    out = normalize_advantages(adv, mask)
    valid = out[mask.bool()]
    assert torch.allclose(valid, t32(NORMALIZED_1234), **TOL32)
    # masked entries are transformed with the same mean/std (they are excluded later by the mask)
    assert out[1].item() == pytest.approx((1000.0 - 2.5) / 1.118033988749895, rel=1e-6)
    # the valid part has zero mean and unit (population) std
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # without the mask the outliers would dominate
    assert not torch.allclose(normalize_advantages(adv)[mask.bool()], t32(NORMALIZED_1234), **TOL32)


def test_normalize_advantages_constant_power_of_two_count_is_zero():
    # 4 equal entries: 1/4 is exact in binary, the mean is exactly 3, everything centers to 0.
    out = normalize_advantages(t32([3.0, 3.0, 3.0, 3.0]))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.zeros(4), rtol=0, atol=1e-6)


def test_normalize_advantages_constant_is_zero():
    # Constant advantages carry no preference between actions: they must normalize to ~0,
    # not to a spurious -1 that pushes every action's probability down.
    out = normalize_advantages(t32([7.0, 7.0, 7.0]))
    assert torch.allclose(out, torch.zeros(3), rtol=0, atol=1e-3)
    out = normalize_advantages(torch.full((5,), 0.1))
    assert torch.allclose(out, torch.zeros(5), rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------- explained variance
def test_explained_variance_perfect_critic_is_one():
    returns = t32([1.0, -2.0, 3.5, 0.25])
    assert explained_variance(returns.clone(), returns) == pytest.approx(1.0, abs=1e-6)


def test_explained_variance_constant_mean_critic_is_zero():
    returns = t32([1.0, -2.0, 3.5, 0.25])  # mean (1 - 2 + 3.5 + 0.25) / 4 = 0.6875
    assert explained_variance(torch.full((4,), 0.6875), returns) == pytest.approx(0.0, abs=1e-6)
    # any constant critic: Var(R - c) = Var(R)
    assert explained_variance(torch.full((4,), -5.0), returns) == pytest.approx(0.0, abs=1e-6)


def test_explained_variance_hand_computed():
    # R = [0, 2, 4, 6] -> mean 3, Var(R) = (9 + 1 + 1 + 9) / 4 = 5
    # V = [1, 1, 5, 5] -> R - V = [-1, 1, -1, 1], Var = 1  -> EV = 1 - 1/5 = 0.8
    ev = explained_variance(t32([1.0, 1.0, 5.0, 5.0]), t32([0.0, 2.0, 4.0, 6.0]))
    assert isinstance(ev, float)
    assert ev == pytest.approx(0.8, abs=1e-6)


def test_explained_variance_zero_return_variance_is_nan_power_of_two_count():
    ev = explained_variance(t32([0.0, 1.0, 2.0, 3.0]), torch.full((4,), 7.0))
    assert math.isnan(ev)


def test_explained_variance_zero_return_variance_is_nan():
    ev = explained_variance(t32([0.0, 1.0, 2.0]), torch.full((3,), 7.0))
    assert math.isnan(ev)


def test_explained_variance_mask():
    # the masked entry (index 2) would otherwise ruin the perfect fit
    returns = t32([1.0, 2.0, 100.0, 4.0])
    values = t32([1.0, 2.0, -100.0, 4.0])
    mask = t32([1.0, 1.0, 0.0, 1.0])
    assert explained_variance(values, returns, mask) == pytest.approx(1.0, abs=1e-6)
    # R = [0, 2, 4, 6] with a masked outlier: still 0.8 as in the hand-computed case
    returns = t32([0.0, 2.0, 50.0, 4.0, 6.0])
    values = t32([1.0, 1.0, -50.0, 5.0, 5.0])
    mask = t32([1.0, 1.0, 0.0, 1.0, 1.0])
    assert explained_variance(values, returns, mask) == pytest.approx(0.8, abs=1e-6)
