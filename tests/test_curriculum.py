"""Task curriculum (``env.tasks``): the learning-progress math, the envs' draws, per-task stats,
the state across a resume, and the config and set-up errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metta_rl import Trainer
from metta_rl.config import ConfigError, EnvConfig, TrainerConfig
from metta_rl.core.curriculum import Curriculum
from metta_rl.envs.checks import check_runtime
from metta_rl.envs.tasks import TaskDraw, shared_probabilities, view
from metta_rl.records.checkpoint import CheckpointError
from tests.integration_utils import make_config

torch.set_num_threads(1)
BATCH = 256

# CartPole capped at 5 steps cannot fall in time: every episode returns 5 whatever the policy,
# a task with nothing left to learn. The other is plain CartPole.
MASTERED = {"name": "mastered", "kwargs": {"max_episode_steps": 5}}
LEARNING = {"name": "learning"}


def curriculum_config(curriculum="learning_progress", trainer=None, **overrides):
    env = {"name": "cp2", "kind": "gym", "id": "CartPole-v1", "tasks": [MASTERED, LEARNING], "curriculum": curriculum}
    loop = {"batch_size": BATCH, "minibatch_size": 128, "total_timesteps": 100 * BATCH, **(trainer or {})}
    return make_config(env=env, trainer=loop, **overrides)


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ the math
def test_learning_progress_prefers_the_task_still_improving():
    cur = Curriculum(names=["mastered", "rising"], mode="learning_progress", explore=0.2)
    assert np.allclose(cur.probabilities, [0.5, 0.5])  # no data yet
    cur.update({"mastered": [1.0, 1.0]})
    assert np.allclose(cur.probabilities, [0.5, 0.5])  # "rising" has no data yet
    rng = np.random.default_rng(0)
    for epoch in range(40):
        cur.update({"mastered": [1.0] * 4, "rising": list(epoch / 40 + 0.05 * rng.standard_normal(4))})
    p = cur.probabilities
    assert p.sum() == pytest.approx(1.0)
    assert cur.learning_progress[0] == 0.0 and cur.learning_progress[1] > 0
    # All of the non-exploring share goes to the improving task: 0.2 / 2 for the mastered one.
    assert p[0] == pytest.approx(0.1) and p[1] == pytest.approx(0.9)


def test_learning_progress_with_noisy_stationary_task_still_prefers_the_rising_one():
    cur = Curriculum(names=["flat", "rising"], mode="learning_progress")
    rng = np.random.default_rng(1)
    for epoch in range(60):
        cur.update({"flat": list(0.9 + 0.05 * rng.standard_normal(8)), "rising": [epoch / 60.0] * 8})
    assert cur.probabilities[1] > 0.7 > cur.probabilities[0]


def test_uniform_curriculum_stays_uniform_and_state_round_trips():
    uni = Curriculum(names=["a", "b", "c"], mode="uniform")
    uni.update({"a": [0.0], "b": [1.0, 5.0], "c": [3.0]})
    assert np.allclose(uni.probabilities, 1 / 3)
    lp = Curriculum(names=["a", "b"], mode="learning_progress")
    for k in range(5):
        lp.update({"a": [float(k), 0.0], "b": [1.0]})
    again = Curriculum(names=["a", "b"], mode="learning_progress")
    again.load_state_dict(lp.state_dict())
    assert np.array_equal(again.probabilities, lp.probabilities)
    assert again.state_dict() == lp.state_dict()
    with pytest.raises(ValueError, match="do not match"):
        Curriculum(names=["a", "z"]).load_state_dict(lp.state_dict())


def test_env_draws_follow_the_shared_probabilities_reproducibly():
    probs = shared_probabilities(2)
    view(probs)[:] = [0.9, 0.1]
    a, b = TaskDraw(["x", "y"], probs), TaskDraw(["x", "y"], probs)
    a.reseed(7)
    b.reseed(7)
    draws = [a.draw() for _ in range(2000)]
    assert draws == [b.draw() for _ in range(2000)]
    assert 0.07 < np.mean(draws) < 0.13
    view(probs)[:] = [0.0, 1.0]  # the main process writes; the next draw sees it
    assert all(a.draw() == 1 for _ in range(100))


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("curriculum, backend", [
    ("uniform", "serial"), ("learning_progress", "serial"), ("learning_progress", "multiprocessing"),
])
def test_learning_progress_samples_the_unmastered_task_more_often(tmp_path, curriculum, backend):
    """Multiprocessing: the workers draw with the probabilities the trainer writes."""
    cfg = curriculum_config(curriculum, vectorization={"backend": backend, "num_envs": 4, "num_workers": 1})
    with Trainer(cfg, run_dir=tmp_path / curriculum, console=False) as trainer:
        metrics = [trainer.train_epoch() for _ in range(20)]
    last = metrics[-1]
    # Per-task episode stats: the mastered task's episodes all return 5 (in the epochs that had
    # one: under learning_progress it gets rare).
    mastered = [m["env/mastered/episode_return"] for m in metrics if "env/mastered/episode_return" in m]
    assert mastered and set(mastered) == {5.0}
    assert all(m["env/learning/episode_return"] > 5.0 for m in metrics)
    # The episodes finished in epochs 4-20 (the curriculum has data from epoch 1): their tasks.
    new_eps = {t: last[f"curriculum/{t}/episodes"] - metrics[2][f"curriculum/{t}/episodes"]
               for t in ("mastered", "learning")}
    share = new_eps["mastered"] / sum(new_eps.values())
    if curriculum == "uniform":
        assert last["curriculum/mastered/prob"] == 0.5
        assert 0.4 < share < 0.6, new_eps
    else:
        assert last["curriculum/mastered/lp"] == 0.0 and last["curriculum/learning/lp"] > 0
        assert last["curriculum/mastered/prob"] == pytest.approx(0.1)
        assert share < 0.2, new_eps
    # metrics.jsonl has them too.
    assert "env/learning/episode_return" in read_metrics(tmp_path / curriculum)[-1]


@pytest.mark.parametrize("overlap", [False, True])
def test_same_seed_same_task_draws(tmp_path, overlap):
    """Serial backend: the task sequence is a function of the seed, also with the rollout in a
    background thread (the probabilities change only between collections)."""
    runs = []
    for name in ("a", "b"):
        cfg = curriculum_config(trainer={"overlap_rollout": overlap})
        with Trainer(cfg, run_dir=tmp_path / name, console=False) as trainer:
            runs.append([trainer.train_epoch() for _ in range(6)])
    keep = lambda m: {k: v for k, v in m.items() if k.startswith(("curriculum/", "env/"))}  # noqa: E731
    assert [keep(m) for m in runs[0]] == [keep(m) for m in runs[1]]
    assert runs[0][-1]["curriculum/mastered/prob"] == pytest.approx(0.1)


def test_curriculum_state_survives_a_resume(tmp_path):
    cfg = curriculum_config(checkpoint={"interval": 1})
    first = Trainer(cfg, run_dir=tmp_path / "run", console=False).setup()
    for _ in range(3):
        first.train_epoch()
    saved = first.env.curriculum.state_dict()
    saved_probs = first.env.curriculum.probabilities.copy()
    assert saved_probs[0] == pytest.approx(0.1)  # not the uniform start
    assert first.checkpoint_state()["environment"] == {"curriculum": saved}
    first.cleanup()  # as if killed after epoch 3's checkpoint
    second = Trainer(curriculum_config(checkpoint={"interval": 1}), run_dir=tmp_path / "run", console=False).setup()
    assert second.progress.epoch == 3
    assert second.env.curriculum.state_dict() == saved
    assert np.array_equal(second.env.curriculum.probabilities, saved_probs)
    assert np.array_equal(view(second.env._task_probs), saved_probs)  # what the envs draw with
    metrics = second.train_epoch()
    # It goes on counting from the restored state.
    tasks = ("mastered", "learning")
    assert sum(metrics[f"curriculum/{t}/episodes"] for t in tasks) > sum(saved[t]["episodes"] for t in tasks)
    assert all(metrics[f"curriculum/{t}/episodes"] >= saved[t]["episodes"] for t in tasks)
    second.cleanup()


def test_a_checkpoint_of_other_tasks_does_not_fit(tmp_path):
    first = Trainer(curriculum_config(), run_dir=tmp_path / "run", console=False).setup()
    first.train_epoch()
    path = first.save_checkpoint()
    first.cleanup()
    other = make_config(env={"name": "cp2", "tasks": [{"name": "x"}, {"name": "y"}]}, resume=str(path),
                        trainer={"batch_size": BATCH, "minibatch_size": 128, "total_timesteps": 100 * BATCH})
    with pytest.raises(CheckpointError, match="curriculum tasks .* do not match"):
        Trainer(other, run_dir=tmp_path / "other", console=False).setup()


def test_without_tasks_nothing_of_the_curriculum_runs(tmp_path):
    with Trainer(make_config(), run_dir=tmp_path / "plain", console=False) as trainer:
        metrics = trainer.train_epoch()
        assert trainer.env.curriculum is None
        assert trainer.checkpoint_state()["environment"] == {}
    assert not any(k.startswith("curriculum/") for k in metrics)


def test_evaluation_scores_each_curriculum_task(tmp_path):
    cfg = curriculum_config(evaluation={"num_episodes": 2, "num_envs": 2, "evaluate_interval": 1})
    with Trainer(cfg, run_dir=tmp_path / "ev", console=False) as trainer:
        metrics = trainer.train_epoch()
    assert metrics["eval/mastered/mean_return"] == 5.0
    assert metrics["eval/learning/episodes"] == 2


# ------------------------------------------------------------------------------ config and set-up
def test_tasks_inherit_kind_id_and_kwargs_and_dump_to_themselves():
    env = EnvConfig(kind="mettagrid", id="navigation", kwargs={"num_agents": 2, "max_steps": 50},
                    tasks=[{"name": "small", "kwargs": {"width": 11}}, {"name": "tiny", "id": "tiny"}])
    small, tiny = env.tasks
    assert (small.kind, small.id, small.kwargs) == ("mettagrid", "navigation", {"num_agents": 2, "max_steps": 50,
                                                                                  "width": 11})
    assert (tiny.kind, tiny.id) == ("mettagrid", "tiny")
    assert EnvConfig(**env.to_dict()) == env


@pytest.mark.parametrize("env, message", [
    ({"tasks": [{"name": "a"}, {"name": "a"}]}, r"env.tasks=\['a', 'a'\] is invalid: expected tasks with distinct"),
    ({"tasks": [{"name": "a"}, {"name": "b", "kind": "mettagrid", "id": "tiny"}]},
     r"env.tasks\[1\].kind='mettagrid' is invalid: expected 'gym' \(env.kind\)"),
    ({"curriculum": "learning_progress"}, r"env.curriculum='learning_progress' is invalid: expected uniform without"),
    ({"kind": "pettingzoo", "id": "tests.envs_for_tests:make_pz_env", "tasks": [{"name": "a"}]},
     r"env.kind='pettingzoo' is invalid"),
    ({"tasks": [{"name": "a", "tasks": [{"name": "x"}]}]}, r"env.tasks\[0\].tasks=\['x'\] is invalid"),
    ({"tasks": [{"name": "game"}]}, r"env.tasks\[0\].name='game' is invalid: expected a name without '/'"),
    ({"tasks": [{"name": "a"}], "learning_progress": {"slow_rate": 0.5}},
     r"env.learning_progress.slow_rate=0.5 is invalid: expected less than env.learning_progress.fast_rate"),
])
def test_config_errors_name_the_field(env, message):
    with pytest.raises(ConfigError, match=message):
        TrainerConfig.from_dict({"env": env})


def test_eval_tasks_cannot_be_curricula():
    with pytest.raises(ConfigError, match=r"evaluation.tasks\[0\].tasks=\['x'\] is invalid"):
        TrainerConfig.from_dict({"evaluation": {"tasks": [{"name": "a", "tasks": [{"name": "x"}]}]}})


def test_mismatched_spaces_fail_the_runtime_check():
    cfg = TrainerConfig.from_dict({"env": {"tasks": [{"name": "cart"}, {"name": "acro", "id": "Acrobot-v1"}]}})
    with pytest.raises(ConfigError, match=r"env.tasks\[1\]='acro' is invalid: its observation space .* differs"):
        check_runtime(cfg)
    bad_kwargs = TrainerConfig.from_dict({"env": {"tasks": [{"name": "a"}, {"name": "b", "kwargs": {"nope": 1}}]}})
    with pytest.raises(ConfigError, match=r"env.tasks\[1\].kwargs=\{'nope': 1\} is invalid"):
        check_runtime(bad_kwargs)


def test_mettagrid_tasks_with_different_agent_counts_fail_the_runtime_check():
    pytest.importorskip("mettagrid")
    cfg = TrainerConfig.from_dict({"env": {"kind": "mettagrid", "id": "tiny", "tasks": [
        {"name": "two"}, {"name": "three", "kwargs": {"num_agents": 3}}]}})
    with pytest.raises(ConfigError, match=r"env.tasks\[1\]='three' is invalid: its agent count 3 differs"):
        check_runtime(cfg)


def test_mettagrid_curriculum_trains_with_per_task_stats(tmp_path):
    pytest.importorskip("mettagrid")
    env = {"name": "nav2", "kind": "mettagrid", "id": "navigation", "kwargs": {"num_agents": 2, "max_steps": 20},
           "tasks": [{"name": "small", "kwargs": {"width": 9, "height": 9, "sources": 2, "obstacles": 2}},
                     {"name": "large", "kwargs": {"width": 15, "height": 15}}],
           "curriculum": "learning_progress"}
    cfg = make_config(env=env, policy={"kind": "auto"}, trainer={"batch_size": 320, "minibatch_size": 160},
                      vectorization={"num_envs": 4})
    with Trainer(cfg, run_dir=tmp_path / "mg", console=False) as trainer:
        metrics = [trainer.train_epoch() for _ in range(2)][-1]
    for task in ("small", "large"):
        assert f"env/{task}/episode_return" in metrics
        assert f"env/{task}/agent/action.move.success" in metrics
    assert metrics["env/small/game/objects.heart_source"] == 2.0
    assert "env/game/objects.heart_source" in metrics  # the pooled stats stay
    # 4 envs x 80 steps over two epochs, 21 steps an episode (20 and the reset step): 3 each.
    assert metrics["curriculum/small/episodes"] + metrics["curriculum/large/episodes"] == 12
