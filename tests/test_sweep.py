"""Sweeps on Optuna (tools/sweep.py's machinery, in process): trials, sweep.json, a crashing
trial, pruning, continuing a study, and bad input. Every trial is a tiny CartPole run
(4 epochs of 64 steps, evaluations every 2 epochs)."""

from __future__ import annotations

import io
import json

import optuna
import pytest
import torch

from metta_rl import Trainer
from metta_rl.config import ConfigError
from metta_rl.managers.training import TrainingManager
from metta_rl.sweep import sweep_from_overrides
from metta_rl.sweep.trial import trial_config, trial_overrides

torch.set_num_threads(1)

TINY = [
    "sweep=cartpole", "sweep.name=s", "trainer.total_timesteps=256", "trainer.batch_size=64",
    "trainer.minibatch_size=64", "trainer.target_return=null", "policy.hidden_sizes=[16]",
    "vectorization.num_envs=4", "evaluation.evaluate_interval=2", "evaluation.num_episodes=2",
    "evaluation.num_envs=2", "sweep.objective=best_eval_return", "sweep.direction=null",
    "sweep.sampler_kwargs.n_startup_trials=2", "sweep.pruner_kwargs.n_warmup_steps=0",
    "logging.console=off", "logging.system_monitor=false",
]


def sweep(tmp_path, *extra):
    return sweep_from_overrides([*TINY, f"runs_dir={tmp_path}", *extra])


def run(tmp_path, *extra):
    s = sweep(tmp_path, *extra)
    out = io.StringIO()
    record = s.run(out=out)
    assert json.loads((tmp_path / "s" / "sweep.json").read_text()) == json.loads(json.dumps(record))
    return record, out.getvalue()


def deterministic_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("wall_seconds", "timing/", "system/", "overview/sps"))} for r in rows]


def test_a_sweep_records_trials_survives_a_crash_and_continues_when_run_again(tmp_path, monkeypatch):
    real_update, calls = TrainingManager.update, []

    def crash_in_trial_0(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # trial 0's second epoch
            raise RuntimeError("the update blew up")
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(TrainingManager, "update", crash_in_trial_0)
    record, out = run(tmp_path, "sweep.trials=2")
    monkeypatch.undo()
    failed, done = record["trials"]
    assert failed["state"] == "FAIL" and failed["error"] == "RuntimeError: the update blew up"
    assert done["state"] == "COMPLETE" and record["counts"] == {"complete": 1, "pruned": 0, "fail": 1, "running": 0}
    # The objective is the trial run's own summary; its folder is under the sweep folder.
    summary = json.loads((tmp_path / "s" / "trial_0001" / "summary.json").read_text())
    assert done["run_dir"] == str(tmp_path / "s" / "trial_0001") and done["value"] == summary["best_eval_mean_return"]
    assert record["best"] == {"number": 1, "value": done["value"], "params": done["params"], "run_dir": done["run_dir"]}
    lr = done["params"]["optimizer.learning_rate"]
    assert 1e-4 <= lr <= 3e-3 and 4 <= done["params"]["trainer.update_epochs"] <= 20
    assert (tmp_path / "s" / "study.db").exists() and "best: trial 1 value=" in out
    assert "trial 0 fail RuntimeError: the update blew up" in out
    # The crash left nothing behind: trial 1 trained exactly as the same config alone does.
    alone = trial_config(trial_overrides([*TINY, f"runs_dir={tmp_path}"], done["params"],
                                         sweep_dir=tmp_path / "alone", number=1))
    with Trainer(alone, run_dir=tmp_path / "alone" / "trial_0001", console=False) as t:
        t.train()
    assert deterministic_rows(tmp_path / "alone" / "trial_0001") == deterministic_rows(tmp_path / "s" / "trial_0001")

    # The same command with more trials continues the study (new parameters, not the first
    # ones again); once it has them all, running it again adds none.
    more, _ = run(tmp_path, "sweep.trials=3")
    assert [t["number"] for t in more["trials"]] == [0, 1, 2] and more["trials"][:2] == record["trials"]
    assert more["trials"][2]["params"] not in (failed["params"], done["params"])
    again, out = run(tmp_path, "sweep.trials=3")
    assert len(again["trials"]) == 3 and "more trial" not in out


def test_a_hopeless_trial_is_pruned_at_its_first_evaluation(tmp_path):
    record, out = run(tmp_path, "sweep.trials=1", "sweep.pruner=ThresholdPruner", "~sweep.pruner_kwargs",
                      "+sweep.pruner_kwargs={lower: 1.0e9}")
    (trial,) = record["trials"]
    assert trial["state"] == "PRUNED" and trial["agent_steps"] == 2 * 64 and trial["stop_reason"] == "pruned"
    assert trial["last_report"]["agent_step"] == 128 and trial["value"] is None and record["best"] is None
    summary = json.loads((tmp_path / "s" / "trial_0000" / "summary.json").read_text())
    assert summary["stop_reason"] == "pruned" and summary["agent_steps"] == 128
    assert "trial 0 pruned at 128 steps" in out and "best: none yet" in out


def test_an_interrupted_trial_stops_the_sweep_and_does_not_count(tmp_path):
    from metta_rl.sweep.study import finished
    from metta_rl.sweep.trial import SweepInterrupted

    s = sweep(tmp_path, "sweep.trials=2", "hooks=[{target: 'tests.test_target:SignalAt', epoch: 1}]")
    with pytest.raises(SweepInterrupted) as info:
        s.run(out=io.StringIO())
    assert info.value.exit_code == 130 and str(info.value).startswith("SIGINT: trial 0 stopped at agent step 64 ")
    study = s.open_study()
    assert [t.state.name for t in study.trials] == ["FAIL"] and finished(study) == 0
    assert json.loads((tmp_path / "s" / "trial_0000" / "summary.json").read_text())["stop_reason"] == "interrupted"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["sweep.trails=3"], "unknown config field 'sweep.trails' (did you mean 'sweep.trials'?)"),
        (["sweep.parameters.ppo.gae_lambda.low=2"],
         "sweep.parameters.ppo.gae_lambda.low=2.0 is invalid: expected at most sweep.parameters.ppo.gae_lambda.high"),
        (["+sweep.parameters.ppo.gama={type: float, low: 0.9, high: 0.99}"],
         "sweep.parameters.ppo.gama=0.9 does not make a valid run config: unknown config field 'ppo.gama' "
         "(did you mean 'ppo.gamma'?)"),
        (["sweep.parameters.trainer.update_epochs.low=0"],
         "sweep.parameters.trainer.update_epochs=0 does not make a valid run config: trainer.update_epochs=0"),
        (["sweep.objective=steps_to_target"], "sweep.objective='steps_to_target' is invalid: expected "
                                              "trainer.target_return to be set"),
        (["sweep.pruner=NoSuchPruner"], "sweep.pruner='NoSuchPruner' is invalid: expected one of optuna.pruners: "),
        (["sweep.direction=minimize"], "sweep.direction='minimize' is invalid: expected maximize for objective"),
    ],
    ids=["typo", "range", "unknown-field", "invalid-value", "target-objective", "pruner", "direction"],
)
def test_bad_input_is_one_line_naming_the_field_before_any_trial(tmp_path, extra, message):
    with pytest.raises(ConfigError) as info:
        sweep(tmp_path, *extra).check()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()


def test_a_study_made_for_the_other_direction_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    optuna.create_study(storage=f"sqlite:///{tmp_path / 's' / 'study.db'}", study_name="s", direction="minimize")
    with pytest.raises(ConfigError, match="was made to minimize; use another sweep.name"):
        sweep(tmp_path).open_study()


def test_the_tool_reports_bad_input_in_one_line_and_writes_nothing(tmp_path):
    from tests.integration_utils import run_tool

    proc = run_tool("sweep.py", "sweep=cartpole", "sweep.trails=3", f"runs_dir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: unknown config field 'sweep.trails' (did you mean 'sweep.trials'?); allowed: name, trials, objective, "
        "direction, seed, sampler, sampler_kwargs, pruner, pruner_kwargs, storage, parameters"
    ]
    assert list(tmp_path.iterdir()) == []
