"""Stopping early: at ``trainer.target_return`` (and what a resume of such a run does), on a
hook's StopTraining, and on a signal; ``summary.json`` says why and where.

Evaluations are scripted (every eval episode returns 5 * epoch), so the stopping logic, not
learning, is under test; the rest (the tracker, the checkpoint, the summary) is the real code.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from metta_rl import Hook, Trainer
from metta_rl.config import ConfigError
from metta_rl.hooks import StopTraining
from metta_rl.managers.evaluation import EvaluationManager
from metta_rl.records import checkpoint as ck
from metta_rl.signals import TrainingInterrupted
from tests.integration_utils import make_config

torch.set_num_threads(1)

BATCH = 64
EPOCHS = 10  # the budget: 10 epochs of 64 steps


def target_config(target, *, epochs=EPOCHS):
    return make_config(
        trainer={"total_timesteps": epochs * BATCH, "target_return": target},
        evaluation={"num_episodes": 2, "num_envs": 2, "evaluate_interval": 2},
        checkpoint={"interval": 0},
    )


@pytest.fixture
def scripted_evals(monkeypatch):
    """Every eval episode at epoch e returns 5 * e (evals at epochs 2, 4, 6, ...: 10, 20, 30...)."""
    real = EvaluationManager.evaluate

    def evaluate(self, policy, *, agent_step, epoch, replay_dir=None):
        n = self.config.num_episodes
        self._play = lambda env, policy, generator: ([5.0 * epoch] * n, [1] * n)
        return real(self, policy, agent_step=agent_step, epoch=epoch, replay_dir=replay_dir)

    monkeypatch.setattr(EvaluationManager, "evaluate", evaluate)


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary_of(run):
    return json.loads((run / "summary.json").read_text())


def train(cfg, run, hooks=()):
    with Trainer(cfg, run_dir=run, hooks=list(hooks), console=False) as t:
        return t.train()


# ------------------------------------------------------------------------------ the target
def test_stops_after_the_first_evaluation_reaching_the_target(tmp_path, scripted_evals):
    run = tmp_path / "r"
    result = train(target_config(25.0), run)  # evals 10, 20, 30: the third reaches it
    assert result.progress.epoch == 6 and result.progress.agent_step == 6 * BATCH < EPOCHS * BATCH
    s = summary_of(run)
    assert s["stop_reason"] == "target_return" and s["target_return"] == 25.0
    assert s["agent_steps"] == 6 * BATCH and s["epochs"] == 6 and s["eval_mean_return"] == 30.0
    assert [r["eval/mean_return"] for r in rows(run) if "eval/mean_return" in r] == [10.0, 20.0, 30.0]
    # The final checkpoint is of the stopping epoch.
    assert ck.load_checkpoint(run).epoch == 6
    assert result.summary == s | {"wall_seconds": result.summary["wall_seconds"]}


def test_a_target_equal_to_the_return_counts_and_one_never_reached_trains_to_the_budget(tmp_path, scripted_evals):
    assert train(target_config(20.0), tmp_path / "eq").progress.epoch == 4
    never = train(target_config(1e9), tmp_path / "never")
    assert never.progress.epoch == EPOCHS and never.summary["stop_reason"] == "total_timesteps"


def test_resuming_a_run_that_reached_its_target_trains_no_further(tmp_path, scripted_evals):
    run = tmp_path / "r"
    train(target_config(25.0), run)
    before = (run / "metrics.jsonl").read_text(), sorted(p.name for p in ck.list_checkpoints(run))
    again = train(target_config(25.0), run)  # the same command again
    assert again.progress.epoch == 6 and again.summary["stop_reason"] == "target_return"
    assert again.summary["eval_mean_return"] == 30.0 and again.summary["resumed_from"].endswith("epoch_000006")
    assert ((run / "metrics.jsonl").read_text(), sorted(p.name for p in ck.list_checkpoints(run))) == before


def test_a_raised_or_removed_target_resumes_training(tmp_path, scripted_evals):
    train(target_config(25.0), tmp_path / "r")
    raised = train(target_config(35.0), tmp_path / "r")
    assert raised.progress.epoch == 8 and raised.summary["stop_reason"] == "target_return"
    assert [r["agent_step"] for r in rows(tmp_path / "r")] == [BATCH * k for k in range(1, 9)]
    removed = train(target_config(None), tmp_path / "r")
    assert removed.progress.epoch == EPOCHS and removed.summary["stop_reason"] == "total_timesteps"


def test_the_final_evaluation_counts_for_a_resume_and_an_older_one_does_not(tmp_path, scripted_evals):
    # Budget of 5 epochs: evals at 2, 4 and the last epoch, 5 (25); then resumed with a target
    # of 1: the latest eval is of the current policy and reaches it, so nothing more trains.
    train(target_config(None, epochs=5), tmp_path / "a")
    assert train(target_config(1.0), tmp_path / "a").progress.epoch == 5
    # Interrupted at epoch 5 (latest eval: epoch 4, 20), resumed with a target of 15: that eval
    # is of an older policy, so the run trains on to its next evaluation (epoch 6: 30).
    run = tmp_path / "b"
    with pytest.raises(TrainingInterrupted):
        train(target_config(None), run, hooks=[SignalAt(5)])
    later = train(target_config(15.0), run)
    assert later.progress.epoch == 6 and later.summary["eval_mean_return"] == 30.0


def test_target_interval_sets_the_evaluations_of_a_run_with_a_target(tmp_path, scripted_evals):
    # evaluation.target_interval=1: evaluated every epoch while a target is set (5, 10, 15: the
    # third reaches 15); evaluate_interval=2 stays the interval of a run without one.
    cfg = target_config(15.0)
    cfg.evaluation.target_interval = 1
    result = train(cfg, tmp_path / "t")
    assert result.progress.epoch == 3 and result.summary["stop_reason"] == "target_return"
    assert [r["eval/mean_return"] for r in rows(tmp_path / "t") if "eval/mean_return" in r] == [5.0, 10.0, 15.0]
    plain = target_config(None, epochs=5)
    plain.evaluation.target_interval = 1
    train(plain, tmp_path / "p")
    assert [r["epoch"] for r in rows(tmp_path / "p") if "eval/mean_return" in r] == [2, 4, 5]
    # A target with target_interval alone (evaluate_interval=0) is valid.
    make_config(trainer={"target_return": 475}, evaluation={"target_interval": 10})


def test_a_target_without_periodic_evaluation_is_one_config_error():
    with pytest.raises(ConfigError, match=r"^trainer\.target_return=475\.0 is invalid: expected null when "
                                          r"evaluation\.enabled=false \(") as info:
        make_config(trainer={"target_return": 475}, evaluation={"enabled": False, "evaluate_interval": 5})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"when evaluation\.evaluate_interval=0"):
        make_config(trainer={"target_return": 475})
    # An assignment to the nested section is caught at set-up.
    cfg = make_config()
    cfg.trainer.target_return = 475.0
    with pytest.raises(ConfigError, match=r"^trainer\.target_return=475\.0 is invalid"):
        Trainer(cfg, console=False).setup()


# ------------------------------------------------------------------------------ hooks, signals
class StopAt(Hook):
    def __init__(self, epoch):
        self.epoch, self.epochs_seen = epoch, 0

    def on_epoch_end(self, *, progress):
        self.epochs_seen += 1
        if progress.epoch == self.epoch:
            raise StopTraining("pruned")


def test_a_hook_stops_training_after_its_epoch_with_a_checkpoint_and_stays_enabled(tmp_path, caplog):
    hook = StopAt(3)
    run = tmp_path / "r"
    with Trainer(target_config(None), run_dir=run, hooks=[hook], console=False) as t:
        result = t.train()
        assert hook in t.hooks.hooks and "disabled" not in caplog.text
        assert result.progress.epoch == 3 and summary_of(run)["stop_reason"] == "pruned"
        assert ck.load_checkpoint(run).epoch == 3
        hook.epoch = 5  # a second train() call goes on until the hook stops it again
        assert t.train().progress.epoch == 5 and hook.epochs_seen == 5


class SignalAt(Hook):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, *, progress):
        if progress.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_run_has_a_summary_saying_so(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(TrainingInterrupted):
        train(target_config(None), run, hooks=[SignalAt(3)])
    s = summary_of(run)
    assert s["stop_reason"] == "interrupted" and s["agent_steps"] == 3 * BATCH
