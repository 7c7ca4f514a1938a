"""EvaluationManager and replays: repeatable scores, isolation from training, one score per
task, GIF and MettaGrid replays, failures that leave the manager usable, state round trips."""

from __future__ import annotations

import io
import logging
import math
from typing import ClassVar

import gymnasium
import numpy as np
import pytest
import torch
from PIL import Image

from metta_rl.config import EnvConfig, EvaluationConfig, PolicyConfig
from metta_rl.managers.evaluation import EvalError, EvalResult, EvaluationManager, TaskResult
from metta_rl.core.policy import ActorCritic
from metta_rl.records.replay import gif_bytes, read_mettagrid_replay
from metta_rl.trainer import Trainer
from tests.integration_utils import PZ_ENV, make_config

CPU = torch.device("cpu")
CARTPOLE = EnvConfig(name="cartpole", kind="gym", id="CartPole-v1")


# ---------------------------------------------------------------------- test envs
class CorridorEnv(gymnasium.Env):
    """A walker in a 1-D corridor, drawn as a red square on grey: CartPole's spaces
    (``Box(4)``, ``Discrete(2)``), so one policy plays both; action 1 pays 1.0, action 0
    pays 0.0; ``length`` steps per episode; the start cell comes from the reset seed."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}
    CELLS = 12

    def __init__(self, render_mode: str | None = None, length: int = 6) -> None:
        self.render_mode = render_mode
        self.length = length
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.pos = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.pos / self.CELLS, self.t / self.length, 0.5, -0.5], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(0, self.CELLS // 2))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos = min(self.CELLS - 1, self.pos + 1) if int(action) == 1 else max(0, self.pos - 1)
        return self._obs(), float(int(action) == 1), False, self.t >= self.length, {}

    def render(self) -> np.ndarray:
        frame = np.full((16, 8 * self.CELLS, 3), 128, dtype=np.uint8)
        frame[4:12, 8 * self.pos + 1 : 8 * self.pos + 7] = (220, 30, 30)
        frame[14:, : 8 * self.t * self.CELLS // self.length] = (30, 30, 220)  # a progress bar
        return frame


class FlakyEnv(CorridorEnv):
    """A corridor whose ``step`` raises while ``FlakyEnv.fail`` is set."""

    fail = False
    built = 0

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        FlakyEnv.built += 1

    def step(self, action):
        if FlakyEnv.fail:
            raise RuntimeError("the simulator crashed\nwith a second line")
        return super().step(action)


CORRIDOR_ID = "MettaRLTestCorridor-v0"
FLAKY_ID = "MettaRLTestFlaky-v0"
for _id, _cls in ((CORRIDOR_ID, CorridorEnv), (FLAKY_ID, FlakyEnv)):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_cls)

CORRIDOR = EnvConfig(name="corridor", kind="gym", id=CORRIDOR_ID)
FLAKY = EnvConfig(name="flaky", kind="gym", id=FLAKY_ID)
PZ_TASK = EnvConfig(**PZ_ENV)  # two agents, Box(4) observations, Discrete(3) actions


def make_manager(env: EnvConfig = CARTPOLE, *, seed: int = 0, **config) -> EvaluationManager:
    config = {"num_episodes": 4, "num_envs": 2, **config}
    return EvaluationManager(env=env, config=EvaluationConfig(**config), seed=seed, device=CPU)


def make_policy(manager: EvaluationManager, seed: int = 0, **policy) -> ActorCritic:
    torch.manual_seed(seed)
    space = manager.env
    return ActorCritic(
        obs_space=space.observation_space, action_space=space.action_space, config=PolicyConfig(**policy)
    )


# ---------------------------------------------------------------------- repeatable scores
@pytest.mark.parametrize("deterministic", [True, False])
def test_same_policy_same_seed_same_score(deterministic):
    """Twice on one manager, and on a fresh manager with the same seed: the same episodes. A
    sampled evaluation draws from its own generator, never the global torch RNG."""
    first = make_manager(num_episodes=5, deterministic=deterministic)
    second = make_manager(num_episodes=5, deterministic=deterministic)
    try:
        policy = make_policy(first)
        global_rng = torch.get_rng_state()
        a = first.evaluate(policy, agent_step=1, epoch=1)
        b = first.evaluate(policy, agent_step=2, epoch=2)
        c = second.evaluate(policy, agent_step=1, epoch=1)
        assert torch.equal(torch.get_rng_state(), global_rng)
    finally:
        first.close()
        second.close()
    assert len(a.returns) == 5
    assert a.returns == b.returns == c.returns and a.lengths == b.lengths == c.lengths
    assert a.mean_return == b.mean_return == c.mean_return


def test_sampled_scores_depend_on_the_seed():
    """Sampling is seeded, not constant: another run seed gives other episodes."""
    managers = [make_manager(seed=s, num_episodes=6, deterministic=False) for s in (0, 1)]
    try:
        policy = make_policy(managers[0])
        a, b = (m.evaluate(policy, agent_step=0, epoch=0) for m in managers)
    finally:
        for m in managers:
            m.close()
    assert a.returns != b.returns


def test_lstm_policy_evaluates_repeatably():
    manager = make_manager(num_episodes=3, deterministic=False)
    try:
        policy = make_policy(manager, hidden_sizes=[8], lstm=True, lstm_hidden_size=8)
        a = manager.evaluate(policy, agent_step=0, epoch=0)
        b = manager.evaluate(policy, agent_step=0, epoch=0)
    finally:
        manager.close()
    assert len(a.returns) == 3 and a.returns == b.returns


# ---------------------------------------------------------------------- isolation from training
def _training_snapshot(trainer: Trainer) -> dict:
    buf = trainer.rollout.buffer
    tracker = trainer.rollout.episodes
    return {
        "stats": trainer.stats.state_dict(),
        "progress": trainer.progress,
        "buffer": {k: v.copy() for k, v in vars(buf).items() if isinstance(v, np.ndarray)},
        "episodes": {k: getattr(tracker, k).copy() for k in ("returns", "lengths", "live", "prev_done")},
        "env_state": [np.array(e.env.unwrapped.state, copy=True) for e in trainer.env.vecenv.envs],
        "env_obs": np.array(trainer.env.vecenv.observations, copy=True),
        "torch_rng": torch.get_rng_state(),
        "np_rng": np.random.get_state()[1].copy(),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["stats"] == b["stats"] and a["progress"] == b["progress"]
    for group in ("buffer", "episodes"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            np.testing.assert_array_equal(a[group][key], b[group][key], err_msg=f"{group}.{key}")
    for x, y in zip(a["env_state"], b["env_state"]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a["env_obs"], b["env_obs"])
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    np.testing.assert_array_equal(a["np_rng"], b["np_rng"])


def test_evaluation_leaves_training_untouched(tmp_path):
    """An evaluation between two epochs changes no training statistic, buffer, env or RNG, and
    the next epoch trains exactly as it would have without it (the runs go one after the other:
    each Trainer seeds the global RNGs in setup)."""
    cfg = make_config(evaluation={"num_episodes": 3, "num_envs": 2, "deterministic": False})
    with Trainer(cfg, run_dir=tmp_path / "eval", console=False) as trainer:
        trainer.train_epoch()
        before = _training_snapshot(trainer)
        result = trainer.evaluator.evaluate(trainer.policy, agent_step=trainer.progress.agent_step, epoch=1)
        assert len(result.returns) == 3
        _assert_same(before, _training_snapshot(trainer))
        assert trainer.policy.training
        with_eval = trainer.train_epoch()
    with Trainer(cfg, run_dir=tmp_path / "plain", console=False) as plain:
        plain.train_epoch()
        without = plain.train_epoch()
    compared = [
        key
        for key in without
        if key.startswith(("losses/", "overview/episode", "env/")) or key in ("agent_step", "epoch")
    ]
    assert len(compared) > 5
    for key in compared:
        assert with_eval[key] == pytest.approx(without[key], nan_ok=True, rel=0, abs=0), key


# ---------------------------------------------------------------------- several tasks
def test_one_score_per_task():
    manager = make_manager(tasks=[CARTPOLE, CORRIDOR], num_episodes=3, deterministic=True)
    alone = make_manager(tasks=[CORRIDOR], num_episodes=3, deterministic=True)
    try:
        policy = make_policy(manager)
        result = manager.evaluate(policy, agent_step=10, epoch=2)
        corridor_alone = alone.evaluate(policy, agent_step=10, epoch=2)
    finally:
        manager.close()
        alone.close()
    assert [t.name for t in result.tasks] == ["cartpole", "corridor"]
    cart, corridor = result.task("cartpole"), result.task("corridor")
    assert len(cart.returns) == len(corridor.returns) == 3
    assert all(length == 6 for length in corridor.lengths)
    # A task's score does not depend on the other tasks in the list.
    assert corridor == corridor_alone.task("corridor")
    # The primary score weighs every task the same; every episode is kept, in task order.
    assert result.mean_return == pytest.approx((cart.mean_return + corridor.mean_return) / 2)
    assert result.returns == cart.returns + corridor.returns
    metrics = result.as_metrics()
    assert metrics["eval/mean_return"] == result.mean_return
    assert metrics["eval/episodes"] == 6
    for name, task in (("cartpole", cart), ("corridor", corridor)):
        assert metrics[f"eval/{name}/mean_return"] == task.mean_return
        assert metrics[f"eval/{name}/std_return"] == task.std_return
        assert metrics[f"eval/{name}/mean_length"] == task.mean_length
        assert metrics[f"eval/{name}/episodes"] == 3
    assert manager.tracker.best is result


def test_one_task_scores_as_plain_episode_statistics():
    result = EvalResult.from_tasks((TaskResult("t", (1.0, 3.0, 8.0), (1, 3, 8)),), agent_step=0, epoch=0)
    assert result.mean_return == 4.0 and result.std_return == float(np.std([1.0, 3.0, 8.0]))
    assert set(result.as_metrics()) == {"eval/mean_return", "eval/std_return", "eval/mean_length", "eval/episodes"}
    # Built from bare returns (the pre-task form), a result is one task.
    bare = EvalResult(0, 0, (1.0, 3.0, 8.0), (1, 3, 8))
    assert bare.mean_return == result.mean_return and bare.std_return == result.std_return


def test_task_with_other_spaces_is_a_named_eval_error():
    manager = make_manager(tasks=[CARTPOLE, PZ_TASK], num_episodes=1, num_envs=1)
    try:
        policy = make_policy(manager)
        with pytest.raises(EvalError, match=r"task 'tiny_pz' .*does not match the policy"):
            manager.evaluate(policy, agent_step=0, epoch=0)
    finally:
        manager.close()



# ---------------------------------------------------------------------- replays
def _frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return frames


def test_gif_replay_of_one_episode(tmp_path):
    replays = tmp_path / "replays"
    manager = make_manager(CORRIDOR, replay=True)
    try:
        policy = make_policy(manager)
        result = manager.evaluate(policy, agent_step=0, epoch=7, replay_dir=replays)
        again = manager.evaluate(policy, agent_step=0, epoch=8, replay_dir=replays)
        no_dir = manager.evaluate(policy, agent_step=0, epoch=9)
    finally:
        manager.close()
    assert result.replay_path == str(replays / "epoch_000007.gif")
    assert no_dir.replay_path is None
    assert sorted(p.name for p in replays.iterdir()) == ["epoch_000007.gif", "epoch_000008.gif"]  # no temp files
    frames = _frames(result.replay_path)
    # The reset state and the state after each of the 6 steps; the walker moves every step.
    assert len(frames) == 7
    assert frames[0].shape == (16, 96, 3)
    for frame in frames:
        assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 2  # not blank: grey + a red walker
        assert ((frame == (220, 30, 30)).all(-1)).sum() == 48  # the 8x6 walker, colours kept exactly
    # Same policy, same seed: the same replay.
    assert all(np.array_equal(x, y) for x, y in zip(frames, _frames(again.replay_path)))


def test_gif_keeps_at_most_replay_max_frames(tmp_path):
    manager = make_manager(CORRIDOR, replay=True, replay_max_frames=3)
    try:
        result = manager.evaluate(make_policy(manager), agent_step=0, epoch=1, replay_dir=tmp_path)
    finally:
        manager.close()
    assert len(_frames(result.replay_path)) == 3


def test_cartpole_gif_shows_the_cart(tmp_path):
    pytest.importorskip("pygame")  # gymnasium[classic-control] renders CartPole with pygame
    manager = make_manager(replay=True, replay_max_frames=40)
    try:
        result = manager.evaluate(make_policy(manager), agent_step=0, epoch=1, replay_dir=tmp_path)
    finally:
        manager.close()
    frames = _frames(result.replay_path)
    assert len(frames) > 1
    frame = frames[len(frames) // 2]
    assert frame.shape == (400, 600, 3)
    white = (frame > 240).all(-1).mean()
    dark = (frame < 40).all(-1).sum()  # the black cart and the track line
    assert 0.5 < white < 0.99 and dark > 500


def test_env_without_rgb_frames_skips_the_replay_with_one_warning(tmp_path, caplog):
    manager = make_manager(PZ_TASK, replay=True, num_episodes=1, num_envs=1)
    try:
        policy = make_policy(manager)
        with caplog.at_level(logging.WARNING, logger="metta_rl.managers.evaluation"):
            results = [manager.evaluate(policy, agent_step=0, epoch=e, replay_dir=tmp_path) for e in (1, 2)]
    finally:
        manager.close()
    assert all(r.replay_path is None and len(r.returns) == 2 for r in results)
    warnings = [r for r in caplog.records if "replay" in r.getMessage()]
    assert len(warnings) == 1 and "tiny_pz" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert list(tmp_path.iterdir()) == []


def test_gif_bytes_is_an_animation():
    frames = [np.full((4, 5, 3), v, dtype=np.uint8) for v in (0, 100, 200)]
    with Image.open(io.BytesIO(gif_bytes(frames, fps=10))) as im:
        assert im.n_frames == 3 and im.info["loop"] == 0 and im.info["duration"] == 100


try:
    import mettagrid  # noqa: F401

    HAVE_METTAGRID = True
except Exception:  # noqa: BLE001 - any import failure means "skip"
    HAVE_METTAGRID = False


@pytest.mark.skipif(not HAVE_METTAGRID, reason="mettagrid cannot be imported")
def test_mettagrid_writes_its_own_replay(tmp_path):
    mg = EnvConfig(name="mg_nav", kind="mettagrid", id="navigation", kwargs={"num_agents": 2, "max_steps": 20})
    manager = make_manager(mg, replay=True, replay_max_frames=12, num_episodes=1, num_envs=1)
    try:
        result = manager.evaluate(make_policy(manager), agent_step=0, epoch=5, replay_dir=tmp_path)
    finally:
        manager.close()
    assert result.replay_path == str(tmp_path / "epoch_000005.json.z")
    replay = read_mettagrid_replay(result.replay_path)
    assert replay["num_agents"] == 2 and replay["max_steps"] == 12
    assert replay["objects"] and replay["action_names"]


@pytest.mark.skipif(not HAVE_METTAGRID, reason="mettagrid cannot be imported")
def test_mettagrid_replay_of_a_whole_episode_is_written_by_mettagrids_writer(tmp_path):
    """An episode shorter than replay_max_frames ends on its own: mettagrid's ReplayLogWriter
    writes it, and only the renamed file is left in the replay folder."""
    mg = EnvConfig(name="mg_nav", kind="mettagrid", id="navigation", kwargs={"num_agents": 2, "max_steps": 10})
    manager = make_manager(mg, replay=True, replay_max_frames=50, num_episodes=1, num_envs=1)
    try:
        result = manager.evaluate(make_policy(manager), agent_step=0, epoch=7, replay_dir=tmp_path)
    finally:
        manager.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000007.json.z"]
    replay = read_mettagrid_replay(result.replay_path)
    assert replay["num_agents"] == 2 and replay["max_steps"] == 10


# ---------------------------------------------------------------------- failures
def test_failing_env_raises_a_one_line_eval_error_and_the_next_evaluation_works():
    manager = make_manager(tasks=[CARTPOLE, FLAKY], num_episodes=2)
    policy = make_policy(manager)
    policy.train()
    try:
        ok = manager.evaluate(policy, agent_step=1, epoch=1)
        built = FlakyEnv.built
        FlakyEnv.fail = True
        try:
            with pytest.raises(EvalError) as info:
                manager.evaluate(policy, agent_step=2, epoch=2)
        finally:
            FlakyEnv.fail = False
        message = str(info.value)
        assert "\n" not in message and "'flaky'" in message and "the simulator crashed" in message
        assert policy.training
        assert manager.tracker.latest is ok and len(manager.tracker.history) == 1
        again = manager.evaluate(policy, agent_step=3, epoch=3)
        assert FlakyEnv.built > built  # the failed task's envs were rebuilt
    finally:
        manager.close()
    assert again.returns == ok.returns


def test_evaluation_that_cannot_finish_is_an_eval_error():
    manager = make_manager(max_steps=5)
    try:
        with pytest.raises(EvalError, match=r"task 'cartpole' .*did not finish 4 episodes within evaluation\.max_steps=5"):
            manager.evaluate(make_policy(manager), agent_step=0, epoch=0)
    finally:
        manager.close()


# ---------------------------------------------------------------------- state
def _only_primitives(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_primitives(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_only_primitives(v) for v in value)
    return value is None or type(value) in (int, float, str, bool)


def test_state_dict_round_trip(tmp_path):
    manager = make_manager(tasks=[CARTPOLE, CORRIDOR], num_episodes=2, replay=True)
    try:
        policy = make_policy(manager)
        for epoch in (1, 2, 3):
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(0.3 * torch.randn_like(p))
            manager.evaluate(policy, agent_step=100 * epoch, epoch=epoch, replay_dir=tmp_path)
        state = manager.state_dict()
    finally:
        manager.close()
    assert _only_primitives(state)
    torch.save(state, tmp_path / "eval.pt")
    loaded = torch.load(tmp_path / "eval.pt", weights_only=True)

    fresh = make_manager(tasks=[CARTPOLE, CORRIDOR], num_episodes=2)
    fresh.load_state_dict(loaded)
    fresh.close()
    old, new = manager.tracker, fresh.tracker
    assert new.best == old.best and new.latest == old.latest and new.history == old.history
    assert (new.best is new.latest) == (old.best is old.latest)
    assert new.best.replay_path and new.best.tasks[1].name == "corridor"
    assert [h["epoch"] for h in new.history] == [1, 2, 3]
    assert fresh.state_dict() == state


def test_state_dict_of_a_fresh_manager_and_an_old_format():
    manager = make_manager()
    manager.close()
    assert manager.state_dict() == {"best": None, "latest": None, "history": []}
    old = {"agent_step": 5, "epoch": 1, "returns": (2.0, 4.0), "lengths": (2, 4)}  # before tasks existed
    manager.load_state_dict({"best": old, "latest": old, "history": [{"agent_step": 5, "mean_return": 3.0}]})
    assert manager.tracker.best.mean_return == 3.0 and manager.tracker.best.replay_path is None
    assert manager.tracker.latest is manager.tracker.best
    assert not math.isnan(manager.state_dict()["history"][0]["mean_return"])
