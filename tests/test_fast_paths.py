"""The CPU fast paths compute what the plain torch code computes: numpy inference for a few
rows, numpy's tanh in the update, action sampling without multinomial's checks, the numpy
GAE loop. Each is checked against the torch path it replaces (bit for bit where it promises
that, to float32 rounding where it does not)."""

from __future__ import annotations

import copy

import gymnasium
import pytest
import torch
from torch.nn import functional as F

from metta_rl.config import OptimizerConfig, PolicyConfig
from metta_rl.core.policy import ActorCritic, sample_actions
from metta_rl.core.ppo import compute_gae
from metta_rl.core.twin_mlp import NUMPY_INFERENCE_ROWS, numpy_tanh
from metta_rl.managers.optimizer import OptimizerManager

torch.set_num_threads(1)


def _policy(activation="tanh", hidden=(64, 64), actions=3, obs_dtype="float32"):
    torch.manual_seed(0)
    low, high = (0, 255) if obs_dtype == "uint8" else (-1.0, 1.0)
    return ActorCritic(
        obs_space=gymnasium.spaces.Box(low, high, (4,), dtype=obs_dtype),
        action_space=gymnasium.spaces.Discrete(actions),
        config=PolicyConfig(hidden_sizes=list(hidden), activation=activation),
    )


def _torch_forward(policy, obs):
    """The autograd path of forward_step (what training runs)."""
    with torch.enable_grad():
        actor_in, critic_in = policy.twin.forward(policy._flat(obs))
        logits = F.linear(actor_in, policy.actor.weight, policy.actor.bias)
        values = F.linear(critic_in, policy.critic.weight, policy.critic.bias).squeeze(-1)
    return logits.detach(), values.detach()


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("hidden", [(64, 64), (32,), (16, 16, 16)])
def test_numpy_inference_matches_the_torch_forward(activation, hidden):
    policy = _policy(activation, hidden)
    obs = torch.randn(8, 4)
    with torch.inference_mode():
        logits, values, state = policy.forward_step(obs)
    ref_logits, ref_values = _torch_forward(policy, obs)
    assert state is None and logits.shape == (8, 3) and values.shape == (8,)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-6)


def test_numpy_inference_reads_the_live_weights():
    """After the optimizer re-points the weights into its flat buffer, after in-place steps, in a
    deep copy and after load_state_dict, inference sees the current weights, never a stale copy."""
    policy = _policy()
    obs = torch.randn(8, 4)
    with torch.no_grad():
        policy.forward_step(obs)  # builds the numpy views of the original storage
    optim = OptimizerManager(policy=policy, config=OptimizerConfig(learning_rate=0.1))
    for _ in range(3):
        out_logits, out_values, _ = policy.forward_step(obs)
        optim.step(out_logits.square().sum() + out_values.square().sum())
        with torch.no_grad():
            fast = policy.forward_step(obs)
        ref = _torch_forward(policy, obs)
        torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=1e-6)
    twin = copy.deepcopy(policy)
    with torch.no_grad():
        twin.actor.bias.add_(1.0)
        moved, _, _ = twin.forward_step(obs)
        torch.testing.assert_close(moved, policy.forward_step(obs)[0] + 1.0, rtol=1e-5, atol=1e-5)
    fresh = _policy()
    fresh.load_state_dict(twin.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_step(obs)[0], moved)


def test_numpy_inference_only_for_few_rows_without_autograd():
    policy = _policy()
    few, many = torch.randn(NUMPY_INFERENCE_ROWS - 1, 4), torch.randn(NUMPY_INFERENCE_ROWS, 4)
    assert policy.forward_step(few)[0].requires_grad  # autograd on: torch
    with torch.no_grad():
        assert policy.forward_step(few)[0].grad_fn is None
        torch.testing.assert_close(policy.forward_step(many)[0], _torch_forward(policy, many)[0], rtol=1e-5, atol=1e-6)
    uint8 = _policy(obs_dtype="uint8")
    obs = torch.randint(0, 256, (8, 4), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(uint8.forward_step(obs)[0], _torch_forward(uint8, obs)[0], rtol=1e-5, atol=1e-6)


def test_numpy_tanh_matches_torch_tanh_and_its_gradient():
    torch.manual_seed(0)
    x = (torch.randn(256, 128) * 3).requires_grad_(True)
    y = numpy_tanh(x)
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == "NumpyTanhBackward"
    ref = torch.tanh(x.detach())
    torch.testing.assert_close(y.detach(), ref, rtol=0, atol=2e-7)
    grad = torch.randn(256, 128)
    y.backward(grad)
    # torch's own tanh gradient formula, at numpy's output.
    assert torch.equal(x.grad, torch.ops.aten.tanh_backward(grad, y.detach()))
    torch.testing.assert_close(x.grad, grad * (1 - ref**2), rtol=1e-4, atol=1e-6)
    # Non-contiguous or non-float32 inputs keep torch's tanh.
    t = torch.randn(4, 6).t()
    assert torch.equal(numpy_tanh(t), torch.tanh(t))
    d = torch.randn(5, dtype=torch.float64)
    assert torch.equal(numpy_tanh(d), torch.tanh(d))


def test_the_update_forward_uses_numpy_tanh_and_matches_torch():
    policy = _policy()
    obs = torch.randn(256, 4)
    logits, values, _ = policy.forward_step(obs)
    with torch.no_grad():
        h = torch.tanh(torch.addmm(policy.twin.b_in, obs, policy.twin.w_in)).view(256, 2, 64).transpose(0, 1)
        h = torch.tanh(torch.baddbmm(policy.twin.biases[0], h, policy.twin.weights[0]))
        ref = F.linear(h[0], policy.actor.weight, policy.actor.bias)
    torch.testing.assert_close(logits.detach(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nvec", [[2], [5], [3, 4]])
def test_sampling_draws_what_multinomial_draws(nvec):
    torch.manual_seed(1)
    logits = torch.randn(500, sum(nvec))
    for seed in range(3):
        actions, logprob = sample_actions(logits, nvec, generator=torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)
        heads = torch.split(logits, nvec, dim=-1)
        expected = torch.cat([torch.multinomial(torch.softmax(h, -1), 1, generator=gen) for h in heads], dim=-1)
        assert torch.equal(actions, expected)
        # The global RNG too (the rollout's).
        torch.manual_seed(seed)
        ours = sample_actions(logits, nvec)[0]
        torch.manual_seed(seed)
        theirs = torch.cat([torch.multinomial(torch.softmax(h, -1), 1) for h in heads], dim=-1)
        assert torch.equal(ours, theirs)


def test_gae_numpy_loop_is_bit_identical_to_the_torch_loop():
    torch.manual_seed(0)
    rows, steps = 8, 32
    rewards, values = torch.randn(rows, steps), torch.randn(rows, steps + 1)
    terminated = (torch.rand(rows, steps) < 0.1).float()
    truncated = (torch.rand(rows, steps) < 0.05).float()
    fast = compute_gae(rewards, values, terminated, truncated, gamma=0.98, gae_lambda=0.8)
    # Values that require grad take the torch loop.
    slow = compute_gae(rewards, values.clone().requires_grad_(True), terminated, truncated, gamma=0.98, gae_lambda=0.8)
    assert slow[0].requires_grad
    assert torch.equal(fast[0], slow[0].detach()) and torch.equal(fast[1], slow[1].detach())


@pytest.mark.parametrize("hidden", [(64, 64), (32,), (16, 24, 8)])
def test_the_one_node_training_forward_has_autograd_s_values_and_gradients_bit_for_bit(hidden):
    policy = _policy(hidden=hidden)
    obs, g_logits, g_values = torch.randn(256, 4), torch.randn(256, 3), torch.randn(256)

    def grads(forward):
        policy.zero_grad(set_to_none=True)
        logits, values = forward()
        torch.autograd.backward([logits, values], [g_logits, g_values])
        return logits.detach(), values.detach(), [p.grad.clone() for p in policy.parameters()]

    def plain():
        actor_in, critic_in = policy.twin.forward(policy._flat(obs))
        return (F.linear(actor_in, policy.actor.weight, policy.actor.bias),
                F.linear(critic_in, policy.critic.weight, policy.critic.bias).squeeze(-1))

    fused = grads(lambda: policy.forward_step(obs)[:2])
    reference = grads(plain)
    assert policy.forward_step(obs)[0].grad_fn.name() == "TwinActorCriticFnBackward"
    assert torch.equal(fused[0], reference[0]) and torch.equal(fused[1], reference[1])
    assert all(torch.equal(a, b) for a, b in zip(fused[2], reference[2]))


@pytest.mark.parametrize("nvec", [[3], [3, 4]])
@pytest.mark.parametrize("ent_coef,clip_vloss", [(0.0, False), (0.01, False), (0.0, True), (0.02, True)])
def test_the_explicit_update_step_has_autograd_s_gradients_through_ppo_loss(nvec, ent_coef, clip_vloss):
    """forward_explicit + ppo_loss_grads + log_prob_grad (what the update runs without autograd)
    give the gradients autograd computes through ppo_loss(log_prob(...)): the loss minimized is
    the tested one. Ratios inside and outside the clip range, clipped values, masked steps."""
    from metta_rl.core.policy import entropy, head_log_softmax, log_prob, log_prob_grad
    from metta_rl.core.ppo import mean_weights, ppo_loss, ppo_loss_grads

    torch.manual_seed(0)
    space = gymnasium.spaces.Discrete(nvec[0]) if len(nvec) == 1 else gymnasium.spaces.MultiDiscrete(nvec)
    policy = ActorCritic(obs_space=gymnasium.spaces.Box(-1.0, 1.0, (4,)), action_space=space, config=PolicyConfig())
    optim = OptimizerManager(policy=policy, config=OptimizerConfig())
    n = 256
    obs = torch.randn(n, 4)
    actions = torch.stack([torch.randint(0, k, (n,)) for k in nvec], dim=-1)
    with torch.no_grad():
        logits, values, _ = policy.forward_step(obs)
    old_logprob = log_prob(logits, actions, nvec) + 0.3 * torch.randn(n)  # ratios from ~0.5 to ~2
    old_values = values + 0.5 * torch.randn(n)
    valid = (torch.rand(n) > 0.1).float()
    mb = dict(old_logprob=old_logprob, advantages=torch.randn(n), old_values=old_values, returns=torch.randn(n),
              weights=mean_weights(valid, torch.float32))
    coefs = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=ent_coef, clip_vloss=clip_vloss, vf_clip_coef=0.3)

    def loss(logits, values):
        return ppo_loss(new_logprob=log_prob(logits, actions, nvec), new_values=values,
                        entropy=entropy(logits, nvec) if ent_coef else None, **mb, **coefs)

    optim.flat.grad.zero_()
    logits, values, _ = policy.forward_step(obs)
    reference = loss(logits, values)
    reference.loss.backward()
    expected = optim.flat.grad.clone()

    optim.flat.grad.fill_(float("nan"))  # the explicit backward writes every gradient
    logits, values, backward = policy.forward_explicit(obs)
    out = loss(logits, values)
    g_logprob, g_values, g_entropy = ppo_loss_grads(
        logratio=out.logratio, advantages=mb["advantages"], new_values=values, old_values=old_values,
        returns=mb["returns"], weights=mb["weights"], **coefs)
    backward(log_prob_grad(head_log_softmax(logits, nvec), actions, g_logprob, g_entropy), torch.from_numpy(g_values))
    assert torch.equal(out.loss, reference.loss.detach())
    torch.testing.assert_close(optim.flat.grad, expected, rtol=1e-5, atol=1e-8)
