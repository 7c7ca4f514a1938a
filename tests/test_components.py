"""EpisodeTracker, the learning-rate schedule, OptimizerManager, crossed() and the policy."""

from __future__ import annotations

import builtins
import math

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn

from metta_rl.config import ConfigError, OptimizerConfig, PolicyConfig
from metta_rl.core.episodes import EpisodeTracker
from metta_rl.managers.optimizer import FlatAdam, OptimizerManager, scheduled_lr
from metta_rl.core.policy import ActorCritic, action_nvec, entropy, log_prob, sample_actions
from metta_rl.core.progress import TrainingProgress, crossed

torch.set_num_threads(1)

F, T = False, True


def _b(*values: bool) -> np.ndarray:
    return np.array(values, dtype=bool)


def _f(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# ---------------------------------------------------------------------------------- EpisodeTracker
def test_episode_tracker_deferred_reset_two_rows():
    """pufferlib: the step that reports done carries the final obs; the next step is the reset
    (reward 0, done False). Row 0 terminates, row 1 is truncated, at different steps."""
    tr = EpisodeTracker(2)
    rows = slice(0, 2)
    ok = _b(T, T)

    # step 0: the reset observations; nothing has been acted on yet.
    valid, first, fin = tr.observe(rows, _f(0, 0), _b(F, F), _b(F, F), ok)
    assert valid.tolist() == [T, T] and first.tolist() == [T, T] and fin is None

    # step 1: rewards of the first actions; episodes continue.  returns [1, 2], lengths [1, 1]
    valid, first, fin = tr.observe(rows, _f(1, 2), _b(F, F), _b(F, F), ok)
    assert valid.tolist() == [T, T] and first.tolist() == [F, F] and fin is None

    # step 2: row 0 terminates (final obs delivered): return 1 + 3 = 4, length 2. Row 1: 2 + 5 = 7.
    valid, first, fin = tr.observe(rows, _f(3, 5), _b(T, F), _b(F, F), ok)
    assert valid.tolist() == [F, T]  # row 0's obs is the final obs: a dummy step
    assert first.tolist() == [F, F]
    assert fin is not None
    assert fin.rows.tolist() == [0] and fin.returns.tolist() == [4.0] and fin.lengths.tolist() == [2]

    # step 3: row 0 is the reset (reward 0, not done): starts a new episode. Row 1 is truncated:
    # return 7 + 1 = 8, length 3. The reward 0 of row 0 belongs to the discarded dummy action.
    valid, first, fin = tr.observe(rows, _f(0, 1), _b(F, F), _b(F, T), ok)
    assert valid.tolist() == [T, F]
    assert first.tolist() == [T, F]
    assert fin is not None
    assert fin.rows.tolist() == [1] and fin.returns.tolist() == [8.0] and fin.lengths.tolist() == [3]

    # step 4: row 0 continues (return 10, length 1); row 1 is its reset observation.
    valid, first, fin = tr.observe(rows, _f(10, 0), _b(F, F), _b(F, F), ok)
    assert valid.tolist() == [T, T] and first.tolist() == [F, T] and fin is None

    # step 5: row 0 terminates: return 10 + 1 = 11, length 2 (the dummy step is not counted).
    # Row 1: its new episode has return 1, length 1 (the reset's reward 0 was not counted).
    valid, first, fin = tr.observe(rows, _f(1, 1), _b(T, F), _b(F, F), ok)
    assert valid.tolist() == [F, T] and first.tolist() == [F, F]
    assert fin.rows.tolist() == [0] and fin.returns.tolist() == [11.0] and fin.lengths.tolist() == [2]

    # step 6: row 1 terminates with return 1 + 2 = 3, length 2; row 0 is reset.
    valid, first, fin = tr.observe(rows, _f(0, 2), _b(F, T), _b(F, F), ok)
    assert valid.tolist() == [T, F] and first.tolist() == [T, F]
    assert fin.rows.tolist() == [1] and fin.returns.tolist() == [3.0] and fin.lengths.tolist() == [2]


def test_episode_tracker_both_rows_finish_on_same_step():
    tr = EpisodeTracker(2)
    rows = slice(0, 2)
    ok = _b(T, T)
    tr.observe(rows, _f(0, 0), _b(F, F), _b(F, F), ok)
    tr.observe(rows, _f(1.5, -1), _b(F, F), _b(F, F), ok)
    valid, first, fin = tr.observe(rows, _f(2, -2), _b(T, F), _b(F, T), ok)
    assert valid.tolist() == [F, F]
    assert fin.rows.tolist() == [0, 1]
    assert fin.returns.tolist() == [3.5, -3.0]
    assert fin.lengths.tolist() == [2, 2]


def test_episode_tracker_rows_slice_offset():
    """Asynchronous vector envs deliver batches of rows: indices in ``finished`` are absolute."""
    tr = EpisodeTracker(4)
    ok = _b(T, T)
    for rows in (slice(0, 2), slice(2, 4)):
        tr.observe(rows, _f(0, 0), _b(F, F), _b(F, F), ok)
    # the other half of the rows is untouched by observing rows 2-3
    tr.observe(slice(2, 4), _f(5, 6), _b(F, F), _b(F, F), ok)
    valid, first, fin = tr.observe(slice(2, 4), _f(1, 1), _b(F, T), _b(F, F), ok)
    assert fin.rows.tolist() == [3] and fin.returns.tolist() == [7.0] and fin.lengths.tolist() == [2]
    valid, first, fin = tr.observe(slice(0, 2), _f(1, 1), _b(T, F), _b(F, F), ok)
    assert fin.rows.tolist() == [0] and fin.returns.tolist() == [1.0] and fin.lengths.tolist() == [1]


def test_episode_tracker_padded_agent_never_finishes():
    """A padded (absent) agent: mask False and terminal True on every step."""
    tr = EpisodeTracker(2)
    rows = slice(0, 2)
    masks = _b(T, F)
    finished_rows = []
    rewards_seq = [(0, 0), (1, 9), (1, 9), (1, 9)]
    for step, (r0, r1) in enumerate(rewards_seq):
        term0 = step == 3
        valid, first, fin = tr.observe(rows, _f(r0, r1), _b(term0, T), _b(F, F), masks)
        assert not valid[1]
        assert first[1]  # the padded row's previous step was "done": never mid-episode
        if fin is not None:
            finished_rows += fin.rows.tolist()
            assert 1 not in fin.rows.tolist()
    # only the real agent finished: return 1 + 1 + 1 = 3 over 3 steps
    assert finished_rows == [0]
    assert tr.returns[1] == 0 and tr.lengths[1] == 0


def test_episode_tracker_agent_that_dies_then_is_padded():
    """A real agent terminates (mask True), then stays padded until the env resets."""
    tr = EpisodeTracker(1)
    rows = slice(0, 1)
    tr.observe(rows, _f(0), _b(F), _b(F), _b(T))
    tr.observe(rows, _f(2), _b(F), _b(F), _b(T))
    valid, _, fin = tr.observe(rows, _f(3), _b(T), _b(F), _b(T))
    assert not valid[0]
    assert fin.returns.tolist() == [5.0] and fin.lengths.tolist() == [2]
    for _ in range(3):  # padded afterwards
        valid, first, fin = tr.observe(rows, _f(4), _b(T), _b(F), _b(F))
        assert fin is None and not valid[0] and first[0]


# ---------------------------------------------------------------------------------- LR schedule
BASE = 1e-3


@pytest.mark.parametrize(
    ("schedule", "min_frac", "fraction", "expected"),
    [
        ("constant", 0.0, 0.0, 1e-3),
        ("constant", 0.0, 0.5, 1e-3),
        ("constant", 0.0, 1.0, 1e-3),
        ("constant", 0.1, 1.0, 1e-3),  # the floor only applies to decaying schedules
        ("linear", 0.0, 0.0, 1e-3),
        ("linear", 0.0, 0.5, 5e-4),
        ("linear", 0.0, 1.0, 0.0),
        ("linear", 0.1, 0.0, 1e-3),
        ("linear", 0.1, 0.5, 5.5e-4),  # 1e-3 - (1e-3 - 1e-4) * 0.5
        ("linear", 0.1, 1.0, 1e-4),
        ("cosine", 0.0, 0.0, 1e-3),
        ("cosine", 0.0, 0.5, 5e-4),  # 0.5 * 1e-3 * (1 + cos(pi/2))
        ("cosine", 0.0, 1.0, 0.0),
        ("cosine", 0.1, 0.0, 1e-3),
        ("cosine", 0.1, 0.5, 5.5e-4),  # 1e-4 + 0.5 * 9e-4 * (1 + 0)
        ("cosine", 0.1, 0.25, 8.681980515339464e-4),  # 1e-4 + 4.5e-4 * (1 + cos(pi/4) = 1.70710678)
        ("cosine", 0.1, 1.0, 1e-4),
    ],
)
def test_scheduled_lr(schedule, min_frac, fraction, expected):
    config = OptimizerConfig(learning_rate=BASE, schedule=schedule, min_lr_fraction=min_frac)
    assert scheduled_lr(config, fraction) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_scheduled_lr_clamps_fraction(schedule):
    config = OptimizerConfig(learning_rate=BASE, schedule=schedule, min_lr_fraction=0.2)
    assert scheduled_lr(config, -0.5) == pytest.approx(BASE)
    assert scheduled_lr(config, 3.0) == pytest.approx(0.2 * BASE)


def _manager(**config) -> tuple[OptimizerManager, nn.Module]:
    torch.manual_seed(0)
    policy = nn.Linear(3, 2)
    return OptimizerManager(policy=policy, config=OptimizerConfig(**config)), policy


def test_optimizer_apply_schedule_uses_progress_fraction():
    mgr, _ = _manager(learning_rate=BASE, schedule="linear", min_lr_fraction=0.0)
    lr = mgr.apply_schedule(TrainingProgress(agent_step=250, total_timesteps=1000))  # fraction 0.25
    assert lr == pytest.approx(7.5e-4)
    assert mgr.lr == pytest.approx(7.5e-4)
    assert all(g["lr"] == pytest.approx(7.5e-4) for g in mgr.optimizer.param_groups)

    # past the budget: fraction is capped at 1 -> the floor (0 here)
    assert mgr.apply_schedule(TrainingProgress(agent_step=5000, total_timesteps=1000)) == pytest.approx(0.0)
    # no budget (total_timesteps=0): fraction 0 -> the base rate
    assert mgr.apply_schedule(TrainingProgress(agent_step=10, total_timesteps=0)) == pytest.approx(BASE)


def test_optimizer_apply_schedule_cosine_with_floor():
    mgr, _ = _manager(learning_rate=BASE, schedule="cosine", min_lr_fraction=0.1)
    progress = TrainingProgress(total_timesteps=1000)
    progress = progress.advance(agent_steps=500, episodes=3, wall_seconds=1.0)
    assert progress.fraction == 0.5 and progress.epoch == 1
    assert mgr.apply_schedule(progress) == pytest.approx(5.5e-4)
    assert mgr.optimizer.param_groups[0]["lr"] == pytest.approx(5.5e-4)


def test_optimizer_constant_schedule_ignores_progress():
    mgr, _ = _manager(learning_rate=BASE, schedule="constant")
    assert mgr.apply_schedule(TrainingProgress(agent_step=900, total_timesteps=1000)) == pytest.approx(BASE)


def test_optimizer_step_returns_pre_clip_norm_and_clips():
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    policy = P()
    mgr = OptimizerManager(policy=policy, config=OptimizerConfig(learning_rate=BASE, max_grad_norm=0.5))
    loss = (policy.w * torch.tensor([3.0, 4.0, 0.0])).sum()  # gradient [3, 4, 0], norm 5
    norm = mgr.step(loss)
    assert float(norm) == pytest.approx(5.0)
    assert torch.allclose(policy.w.grad, torch.tensor([0.3, 0.4, 0.0]), atol=1e-6)

    policy2 = P()
    mgr2 = OptimizerManager(policy=policy2, config=OptimizerConfig(learning_rate=BASE, max_grad_norm=None))
    norm2 = mgr2.step((policy2.w * torch.tensor([3.0, 4.0, 0.0])).sum())
    assert float(norm2) == pytest.approx(5.0)
    assert torch.allclose(policy2.w.grad, torch.tensor([3.0, 4.0, 0.0]))


def test_optimizer_step_updates_the_policy_parameters():
    # Adam's first step moves every parameter with a non-zero gradient by about lr * sign(-grad).
    mgr, policy = _manager(learning_rate=BASE, max_grad_norm=None)
    before = [p.detach().clone() for p in policy.parameters()]
    x = torch.tensor([[1.0, -2.0, 0.5]])
    loss = policy(x).sum()  # d/dW = [x; x], d/db = [1, 1]
    mgr.step(loss)
    after = [p.detach() for p in policy.parameters()]
    weight_step, bias_step = after[0] - before[0], after[1] - before[1]
    assert torch.allclose(weight_step, -BASE * torch.sign(x).expand(2, 3), atol=1e-6)
    assert torch.allclose(bias_step, torch.full((2,), -BASE), atol=1e-6)
    # the module's forward uses the updated values
    assert torch.allclose(policy(x), x @ after[0].T + after[1])


def test_optimizer_state_dict_round_trip():
    mgr, policy = _manager(learning_rate=BASE, schedule="linear")
    mgr.apply_schedule(TrainingProgress(agent_step=500, total_timesteps=1000))
    mgr.step(policy(torch.ones(1, 3)).sum())
    state = mgr.state_dict()
    mgr2, _ = _manager(learning_rate=BASE, schedule="linear")
    mgr2.load_state_dict(state)
    assert mgr2.lr == pytest.approx(5e-4)
    assert mgr2.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_flat_adam_steps_like_torch_optim_adam_bit_for_bit_and_shares_its_state_dict(kind):
    torch.manual_seed(0)
    grads = [torch.randn(10) for _ in range(6)]
    ours, theirs = torch.randn(10, requires_grad=True), None
    theirs = ours.detach().clone().requires_grad_(True)
    kwargs = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.1)
    flat = FlatAdam(ours, decoupled=kind == "adamw", **kwargs)
    reference = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)([theirs], fused=True, **kwargs)
    for g in grads[:3]:
        ours.grad, theirs.grad = g.clone(), g.clone()
        flat.step()
        reference.step()
    assert torch.equal(ours, theirs)
    # Cross-loaded state dicts (old checkpoints hold torch.optim.Adam's) continue identically.
    swapped = FlatAdam(ours, decoupled=kind == "adamw", **kwargs)
    swapped.load_state_dict(reference.state_dict())
    reference.load_state_dict(flat.state_dict())
    for g in grads[3:]:
        ours.grad, theirs.grad = g.clone(), g.clone()
        swapped.step()
        reference.step()
    assert torch.equal(ours, theirs) and swapped.state_dict()["state"][0]["step"] == 6
    with pytest.raises(ValueError, match="do not fit"):
        FlatAdam(torch.zeros(3, requires_grad=True), decoupled=False, **kwargs).load_state_dict(flat.state_dict())


def test_the_optimizer_never_imports_dynamo(monkeypatch):
    """torch.optim.Optimizer imports torch._dynamo in its constructor and every step (2-3 s
    the first time in a process); a run must not pay that. Every ``import`` statement calls
    ``builtins.__import__``, even for a module already loaded, so this holds in any test order."""
    real, imported = builtins.__import__, []

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    mgr, policy = _manager(type="adamw")
    mgr.step(policy(torch.ones(1, 3)).sum())
    mgr.load_state_dict(mgr.state_dict())
    monkeypatch.undo()
    assert imported and not [n for n in imported if n.startswith("torch._dynamo")]


# ---------------------------------------------------------------------------------- crossed
@pytest.mark.parametrize(
    ("prev", "epoch", "interval", "expected"),
    [
        (0, 1, 1, True),  # every epoch
        (3, 4, 5, False),
        (4, 5, 5, True),  # lands on the boundary
        (5, 6, 5, False),  # just after it
        (5, 5, 5, False),  # no progress
        (3, 7, 5, True),  # jumps over 5
        (4, 11, 5, True),  # jumps over 5 and 10
        (6, 9, 5, False),  # moves, but no boundary in (6, 9]
        (7, 10, 5, True),  # resume from an odd epoch still hits 10
        (0, 100, 0, False),  # interval 0 means never
        (0, 100, -3, False),
    ],
)
def test_crossed(prev, epoch, interval, expected):
    assert crossed(prev, epoch, interval) is expected


def test_training_progress_fraction_and_done():
    p = TrainingProgress(agent_step=0, total_timesteps=100)
    assert p.fraction == 0.0 and not p.done
    p = p.advance(agent_steps=40, episodes=1, wall_seconds=0.5)
    assert p.fraction == pytest.approx(0.4) and p.epoch == 1 and p.episodes == 1
    p = p.advance(agent_steps=80, episodes=0, wall_seconds=0.5)
    assert p.fraction == 1.0 and p.done and p.agent_step == 120 and p.wall_seconds == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- policy
BOX4 = gymnasium.spaces.Box(-1.0, 1.0, (4,), np.float32)
DISCRETE2 = gymnasium.spaces.Discrete(2)
MULTI34 = gymnasium.spaces.MultiDiscrete([3, 4])


def _policy(obs_space=BOX4, action_space=DISCRETE2, **config) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(obs_space=obs_space, action_space=action_space, config=PolicyConfig(**config))


@pytest.mark.parametrize(("action_space", "nvec"), [(DISCRETE2, [2]), (MULTI34, [3, 4])])
def test_forward_step_shapes(action_space, nvec):
    policy = _policy(action_space=action_space)
    assert policy.nvec == nvec
    assert policy.initial_state(5) is None
    obs = torch.randn(5, 4)
    logits, value, state = policy.forward_step(obs)
    assert logits.shape == (5, sum(nvec))
    assert value.shape == (5,)
    assert state is None
    actions, logprob = sample_actions(logits, nvec)
    assert actions.shape == (5, len(nvec)) and actions.dtype == torch.int64
    assert logprob.shape == (5,)
    for head, n in enumerate(nvec):
        assert ((actions[:, head] >= 0) & (actions[:, head] < n)).all()


def test_forward_sequence_without_lstm_matches_forward_step():
    policy = _policy(action_space=MULTI34)
    obs = torch.randn(3, 5, 4)
    logits, values = policy.forward_sequence(obs, None, torch.zeros(3, 5))
    assert logits.shape == (3, 5, 7) and values.shape == (3, 5)
    step_logits, step_values, _ = policy.forward_step(obs.reshape(15, 4))
    assert torch.allclose(logits.reshape(15, 7), step_logits, atol=1e-6)
    assert torch.allclose(values.reshape(15), step_values, atol=1e-6)


def test_uint8_observations_are_scaled_to_unit_interval():
    u8_space = gymnasium.spaces.Box(0, 255, (3, 4), np.uint8)
    u8_policy = _policy(obs_space=u8_space, action_space=MULTI34)
    float_policy = _policy(obs_space=gymnasium.spaces.Box(0.0, 1.0, (12,), np.float32), action_space=MULTI34)
    float_policy.load_state_dict(u8_policy.state_dict())

    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (6, 3, 4), dtype=torch.uint8, generator=g)
    logits, value, _ = u8_policy.forward_step(obs)
    assert logits.shape == (6, 7) and value.shape == (6,)
    ref_logits, ref_value, _ = float_policy.forward_step(obs.reshape(6, 12).float() / 255.0)
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    assert torch.allclose(value, ref_value, atol=1e-6)


def test_sample_actions_deterministic_is_argmax_single_head():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    actions, logprob = sample_actions(logits, [2], deterministic=True)
    assert actions.tolist() == [[1], [0], [1]]
    expected = torch.log_softmax(logits, -1).gather(-1, actions).squeeze(-1)
    assert torch.allclose(logprob, expected)


def test_sample_actions_deterministic_is_argmax_per_head():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 7, generator=g)
    actions, logprob = sample_actions(logits, [3, 4], deterministic=True)
    assert torch.equal(actions[:, 0], logits[:, :3].argmax(-1))
    assert torch.equal(actions[:, 1], logits[:, 3:].argmax(-1))
    expected = (
        torch.log_softmax(logits[:, :3], -1).max(-1).values + torch.log_softmax(logits[:, 3:], -1).max(-1).values
    )
    assert torch.allclose(logprob, expected, atol=1e-6)


def test_sample_actions_stochastic_follows_probabilities():
    torch.manual_seed(3)
    logits = torch.log(torch.tensor([[0.2, 0.8]])).expand(4000, 2)
    actions, logprob = sample_actions(logits, [2])
    share = actions.float().mean().item()
    assert share == pytest.approx(0.8, abs=0.03)
    # the returned logprob is that of the sampled action
    assert torch.allclose(logprob, torch.where(actions[:, 0] == 1, math.log(0.8), math.log(0.2)), atol=1e-6)


def test_log_prob_and_entropy_match_categorical_single_head():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(10, 2, generator=g)
    actions = torch.randint(0, 2, (10, 1), generator=g)
    logprob, ent = log_prob(logits, actions, [2]), entropy(logits, [2])
    dist = torch.distributions.Categorical(logits=logits)
    assert logprob.shape == (10,) and ent.shape == (10,)
    assert torch.allclose(logprob, dist.log_prob(actions[:, 0]), atol=1e-6)
    assert torch.allclose(ent, dist.entropy(), atol=1e-6)


def test_log_prob_and_entropy_match_categorical_multi_head_summed():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 7, generator=g)  # [rows, T, 3 + 4], as in recurrent training
    actions = torch.stack(
        [torch.randint(0, 3, (4, 6), generator=g), torch.randint(0, 4, (4, 6), generator=g)], dim=-1
    )
    logprob, ent = log_prob(logits, actions, [3, 4]), entropy(logits, [3, 4])
    assert logprob.shape == (4, 6) and ent.shape == (4, 6)
    d0 = torch.distributions.Categorical(logits=logits[..., :3])
    d1 = torch.distributions.Categorical(logits=logits[..., 3:])
    assert torch.allclose(logprob, d0.log_prob(actions[..., 0]) + d1.log_prob(actions[..., 1]), atol=1e-6)
    assert torch.allclose(ent, d0.entropy() + d1.entropy(), atol=1e-6)


def test_sample_then_logprob_agree():
    policy = _policy(action_space=MULTI34)
    torch.manual_seed(6)
    logits, _, _ = policy.forward_step(torch.randn(9, 4))
    actions, logprob = sample_actions(logits, policy.nvec)
    again = log_prob(logits, actions, policy.nvec)
    assert torch.allclose(logprob, again, atol=1e-6)


def _trunk_params(policy: ActorCritic) -> list[tuple[str, torch.Tensor]]:
    """Parameters of the trunk(s), whatever their module layout (heads and LSTM excluded)."""
    return [(n, p) for n, p in policy.named_parameters() if not n.startswith(("actor.", "critic.", "lstm."))]


@pytest.mark.parametrize(("action_space", "heads"), [(DISCRETE2, 2), (MULTI34, 7)])
@pytest.mark.parametrize("shared_trunk", [False, True])
def test_orthogonal_init_gains(action_space, heads, shared_trunk):
    policy = _policy(action_space=action_space, shared_trunk=shared_trunk)  # hidden_sizes [64, 64]
    actor = policy.actor.weight  # [heads, 64]: orthonormal rows x 0.01
    critic = policy.critic.weight  # [1, 64]: x 1
    assert actor.shape == (heads, 64)
    assert torch.allclose(torch.linalg.svdvals(actor), torch.full((heads,), 0.01), atol=1e-6)
    assert torch.allclose(torch.linalg.svdvals(critic), torch.ones(1), atol=1e-5)
    assert torch.count_nonzero(policy.actor.bias) == 0 and torch.count_nonzero(policy.critic.bias) == 0
    weights = zeros = 0
    for name, param in _trunk_params(policy):
        if torch.count_nonzero(param) == 0:  # a bias: zero-initialized
            zeros += 1
            continue
        weights += 1
        assert param.dim() >= 2, f"{name} is a non-zero vector (biases must start at zero)"
        # orthogonal with gain sqrt(2): all singular values equal and >= sqrt(2)
        # (exactly sqrt(2) for one layer; two trunks' layers stored side by side give 2)
        sv = torch.linalg.svdvals(param.detach())
        assert torch.allclose(sv, sv.max(dim=-1, keepdim=True).values.expand_as(sv), rtol=1e-4), name
        assert sv.min() >= math.sqrt(2) - 1e-4, name
        # the policy head is tiny next to any hidden layer: near-uniform initial policy
        assert actor.norm() < 0.02 * param.norm(), name
    assert weights >= 2 and zeros >= 2
    logits, _, _ = policy.forward_step(torch.randn(16, 4))
    assert logits.abs().max() < 0.5


def _grad_elements(policy: ActorCritic, output: torch.Tensor) -> torch.Tensor:
    """Which parameter elements (all parameters flattened) get a non-zero gradient from ``output``."""
    params = list(policy.parameters())
    grads = torch.autograd.grad(output.sum(), params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [(g != 0).reshape(-1) if g is not None else torch.zeros(p.numel(), dtype=torch.bool) for p, g in zip(params, grads)]
    )


def test_separate_trunks_unless_shared():
    obs = torch.randn(8, 4)
    separate = _policy()
    logits, value, _ = separate.forward_step(obs)
    from_logits, from_value = _grad_elements(separate, logits), _grad_elements(separate, value)
    assert from_logits.any() and from_value.any()
    assert not (from_logits & from_value).any(), "actor and critic share weights by default"

    shared = _policy(shared_trunk=True)
    logits, value, _ = shared.forward_step(obs)
    assert (_grad_elements(shared, logits) & _grad_elements(shared, value)).any(), "shared_trunk=True must share"


def test_lstm_forward_sequence_equals_stepping_with_resets():
    rows, steps, size = 3, 7, 8
    policy = _policy(action_space=MULTI34, lstm=True, lstm_hidden_size=size, hidden_sizes=[16])
    assert policy.is_recurrent
    h0, c0 = policy.initial_state(rows)
    assert h0.shape == (rows, size) and torch.count_nonzero(h0) == 0

    g = torch.Generator().manual_seed(7)
    obs = torch.randn(rows, steps, 4, generator=g)
    # a non-zero state before column 0, so a reset at column 0 actually matters
    state0 = (torch.randn(rows, size, generator=g), torch.randn(rows, size, generator=g))
    first = torch.tensor(
        [
            [1, 0, 0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )

    with torch.no_grad():
        seq_logits, seq_values = policy.forward_sequence(obs, state0, first)
        state = state0
        step_logits, step_values = [], []
        for t in range(steps):
            logits, value, state = policy.forward_step(obs[:, t], state, first[:, t])
            step_logits.append(logits)
            step_values.append(value)
    assert seq_logits.shape == (rows, steps, 7) and seq_values.shape == (rows, steps)
    assert torch.allclose(seq_logits, torch.stack(step_logits, 1), atol=1e-6)
    assert torch.allclose(seq_values, torch.stack(step_values, 1), atol=1e-6)

    with torch.no_grad():
        # a reset really cuts the memory: from a reset on, the outputs are those of a zero state
        zero = policy.initial_state(rows)
        fresh_logits, fresh_values = policy.forward_sequence(obs[:, 3:], zero, torch.zeros(rows, steps - 3))
        assert torch.allclose(seq_logits[0, 3:], fresh_logits[0], atol=1e-6)
        assert torch.allclose(seq_values[0, 3:], fresh_values[0], atol=1e-6)
        # ...and without the resets the outputs differ (the memory is used)
        no_reset_logits, _ = policy.forward_sequence(obs, state0, torch.zeros(rows, steps))
        assert not torch.allclose(no_reset_logits[0], seq_logits[0], atol=1e-6)
        # row 2 never resets: identical either way
        assert torch.allclose(no_reset_logits[2], seq_logits[2], atol=1e-6)


def test_lstm_forward_sequence_is_differentiable():
    policy = _policy(lstm=True, lstm_hidden_size=8, hidden_sizes=[16])
    obs = torch.randn(2, 4, 4)
    logits, values = policy.forward_sequence(obs, policy.initial_state(2), torch.zeros(2, 4))
    (logits.sum() + values.sum()).backward()
    assert policy.lstm.weight_ih.grad is not None and policy.encoder[0].weight.grad is not None


# ---------------------------------------------------------------------------------- action spaces
def test_action_nvec_supported_spaces():
    assert action_nvec(DISCRETE2) == [2]
    assert action_nvec(MULTI34) == [3, 4]


def test_action_nvec_box_raises_config_error():
    with pytest.raises(ConfigError) as info:
        action_nvec(gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32))
    message = str(info.value)
    assert "Discrete" in message and "MultiDiscrete" in message and "\n" not in message


def test_action_nvec_two_dimensional_multidiscrete_raises():
    with pytest.raises(ConfigError):
        action_nvec(gymnasium.spaces.MultiDiscrete([[2, 3], [4, 5]]))


def test_actor_critic_rejects_unsupported_spaces():
    with pytest.raises(ConfigError):
        ActorCritic(obs_space=BOX4, action_space=gymnasium.spaces.Box(-1, 1, (2,)), config=PolicyConfig())
    with pytest.raises(ConfigError, match="Box"):
        ActorCritic(obs_space=gymnasium.spaces.Discrete(3), action_space=DISCRETE2, config=PolicyConfig())
