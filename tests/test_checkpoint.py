"""Checkpoints and resume, in process: exact state round trip, atomic writes, damaged and
incompatible checkpoints, retention, the non-finite guard and its counters across a resume,
a run resumed from another run's checkpoint, run records that cannot be written, env
failures, and a CartPole run interrupted halfway that still solves the task."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import signal
import stat

import numpy as np
import pytest
import torch

from metta_rl import Hook, Trainer
from metta_rl.records import checkpoint as ck
from metta_rl.core import ppo as ppo_module
from metta_rl.records.checkpoint import CheckpointError, load_checkpoint
from metta_rl.managers.environment import EnvError
from metta_rl.managers.guard import TrainingError
from metta_rl.records.run_dir import RunRecordError
from metta_rl.signals import TrainingInterrupted
from tests.integration_utils import PZ_ENV, make_config

torch.set_num_threads(1)
BATCH = 64


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensors_equal(a, b) -> bool:
    """Deep, bit-exact equality of nested state (tensors, arrays, dicts, lists, scalars)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def trained(tmp_path, epochs=3, name="a", **overrides):
    cfg = make_config(**overrides)
    trainer = Trainer(cfg, run_dir=tmp_path / name, console=False).setup()
    for _ in range(epochs):
        trainer.train_epoch()
    return trainer


# ------------------------------------------------------------------------------ exact round trip
def test_save_then_load_restores_every_state_bit_for_bit(tmp_path):
    a = trained(tmp_path, optimizer={"schedule": "linear"}, evaluation={"evaluate_interval": 1})
    path = a.save_checkpoint()
    saved_state = a.checkpoint_state()
    saved_rng = ck.capture_rng()

    b = Trainer(make_config(optimizer={"schedule": "linear"}, evaluation={"evaluate_interval": 1},
                            resume=str(path)), run_dir=tmp_path / "b", console=False).setup()
    assert b.resumed_from == path
    assert b.progress == a.progress and b.progress.epoch == 3 and b.progress.agent_step == 3 * BATCH
    # RNG states first: capturing them consumes nothing.
    assert tensors_equal(ck.capture_rng(), saved_rng)
    restored = b.checkpoint_state()
    for key in ("policy", "optimizer", "training", "stats", "evaluation", "progress"):
        assert tensors_equal(restored[key], saved_state[key]), key
    assert b.optimizer.lr == a.optimizer.lr
    assert b.evaluator.tracker.best == a.evaluator.tracker.best

    # One update on the same buffer from both gives bit-identical weights.
    for name in ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "valid", "first"):
        getattr(b.rollout.buffer, name).copy_(getattr(a.rollout.buffer, name))
    la = a.training.update(a.policy, a.optimizer, a.rollout.buffer, a.progress)
    lb = b.training.update(b.policy, b.optimizer, b.rollout.buffer, b.progress)
    assert torch.equal(a.optimizer.flat, b.optimizer.flat)
    assert la == lb
    a.cleanup()
    b.cleanup()


def test_checkpoint_directory_layout_and_metadata(tmp_path):
    t = trained(tmp_path, epochs=2)
    path = t.save_checkpoint()
    t.cleanup()
    assert path == tmp_path / "a" / "checkpoints" / "epoch_000002"
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "policy.pt", "trainer_state.pt"]
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["progress"]["agent_step"] == 2 * BATCH and meta["progress"]["epoch"] == 2
    assert meta["config"] == t.config.to_dict()
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"] == torch.__version__
    assert meta["metrics"]["agent_step"] == 2 * BATCH
    assert meta["spaces"]["observation"]["shape"] == [4] and meta["spaces"]["action"]["nvec"] == [2]
    ckpt = load_checkpoint(tmp_path / "a")  # a run dir: its newest complete checkpoint
    assert ckpt.path == path and ckpt.config == t.config and ckpt.progress == t.progress


def test_policy_from_checkpoint_rebuilds_the_policy(tmp_path):
    t = trained(tmp_path, epochs=1)
    path = t.save_checkpoint()
    policy = ck.policy_from_checkpoint(path)
    obs = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(policy.forward_step(obs)[0], t.policy.forward_step(obs)[0])
    t.cleanup()


# ------------------------------------------------------------------------------ atomic writes
def test_a_crash_mid_write_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    t = trained(tmp_path, epochs=1)
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # policy.pt written, trainer_state.pt not
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint()
    monkeypatch.setattr(torch, "save", real_save)
    folder = tmp_path / "a" / "checkpoints"
    assert [p.name for p in ck.list_checkpoints(folder)] == ["epoch_000000"]  # the initial one only
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]
    # A temp dir left by a killed process is never listed, and a later save prunes it.
    stale = folder / ".tmp-epoch_000009-999999999"
    stale.mkdir()
    (stale / "policy.pt").write_bytes(b"half")
    assert [p.name for p in ck.list_checkpoints(folder)] == ["epoch_000000"]
    t.save_checkpoint()
    assert not stale.exists()
    t.cleanup()


def test_every_record_file_gets_the_umasks_mode(tmp_path):
    """One atomic writer, one file mode: checkpoint files, replays and run records alike."""
    from metta_rl.records.replay import write_gif

    old = os.umask(0o027)
    try:
        t = trained(tmp_path, epochs=1)
        path = t.save_checkpoint()
        t.cleanup()
        gif = write_gif([np.zeros((4, 4, 3), dtype=np.uint8)] * 2, tmp_path / "replays" / "r.gif")
    finally:
        os.umask(old)
    run = tmp_path / "a"
    files = [*path.iterdir(), gif, run / "config.yaml", run / "metrics.jsonl", run / "heartbeat"]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o640 for f in files}


# ------------------------------------------------------------------------------ damaged / incompatible
@pytest.mark.parametrize("damage", ["truncate", "random_bytes", "metadata"])
def test_damaged_checkpoint_is_named_and_auto_falls_back(tmp_path, damage, caplog):
    cfg = dict(trainer={"total_timesteps": 6 * BATCH}, checkpoint={"interval": 2, "keep_last": 5})
    t = trained(tmp_path, epochs=4, **cfg)
    t.cleanup()
    newest = tmp_path / "a" / "checkpoints" / "epoch_000004"
    assert newest.is_dir()
    if damage == "truncate":
        victim = newest / "trainer_state.pt"
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "random_bytes":
        victim = newest / "policy.pt"
        victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))
    else:
        victim = newest / "metadata.json"
        victim.write_text("{not json")
    with pytest.raises(CheckpointError, match=str(victim).replace(".", r"\.")):
        load_checkpoint(newest)

    with caplog.at_level(logging.WARNING, logger="metta_rl"):
        resumed = Trainer(make_config(**cfg), run_dir=tmp_path / "a", console=False).setup()
    assert resumed.resumed_from == tmp_path / "a" / "checkpoints" / "epoch_000002"
    assert resumed.progress.epoch == 2
    assert any(str(victim) in r.getMessage() for r in caplog.records)
    resumed.train()
    assert resumed.progress.agent_step == 6 * BATCH
    resumed.cleanup()


def test_explicit_resume_path_to_a_damaged_checkpoint_fails(tmp_path):
    t = trained(tmp_path, epochs=1)
    path = t.save_checkpoint()
    t.cleanup()
    (path / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="trainer_state.pt is damaged"):
        Trainer(make_config(resume=str(path)), run_dir=tmp_path / "b", console=False).setup()
    assert not (tmp_path / "b").exists()


def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(tmp_path):
    t = trained(tmp_path, epochs=1)
    t.save_checkpoint()
    t.cleanup()
    for path in ck.list_checkpoints(tmp_path / "a"):
        (path / "policy.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="none can be resumed"):
        Trainer(make_config(), run_dir=tmp_path / "a", console=False).setup()


@pytest.mark.parametrize(
    "other, message",
    [
        ({"policy": {"hidden_sizes": [32]}}, "does not fit this policy"),
        ({"env": PZ_ENV}, "other env spaces"),
    ],
)
def test_incompatible_checkpoint_is_named(tmp_path, other, message):
    t = trained(tmp_path, epochs=1)
    path = t.save_checkpoint()
    t.cleanup()
    with pytest.raises(CheckpointError, match=message) as info:
        Trainer(make_config(resume=str(path), **other), run_dir=tmp_path / "b", console=False).setup()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ cadence and retention
def test_interval_keep_last_and_best(tmp_path):
    cfg = make_config(
        trainer={"total_timesteps": 7 * BATCH},
        checkpoint={"interval": 2, "keep_last": 2},
        evaluation={"evaluate_interval": 1},
    )
    with Trainer(cfg, run_dir=tmp_path / "r", console=False) as t:
        t.train()
        best = t.evaluator.tracker.best
    folder = tmp_path / "r" / "checkpoints"
    names = [p.name for p in ck.list_checkpoints(folder)]
    best_dir = ck.best_checkpoint(folder)
    assert best_dir is not None and best_dir.name == f"epoch_{best.epoch:06d}"
    assert names[:2] == ["epoch_000007", "epoch_000006"]  # the final one and the newest interval one
    assert set(names) == {"epoch_000007", "epoch_000006", best_dir.name}
    assert load_checkpoint(best_dir).metadata["eval"]["mean_return"] == best.mean_return


def test_a_resumed_run_starts_fresh_episodes_for_its_resume_point(tmp_path):
    """A resume does not replay epoch 0's opening episodes (the envs are seeded from the seed
    and the resume epoch), and two resumes from one checkpoint see the same episodes."""
    def first_obs(trainer):
        trainer.train_epoch()
        return trainer.rollout.buffer.obs[:, 0].clone()

    with Trainer(make_config(), run_dir=tmp_path / "a", console=False) as t:
        t._start()
        opening = first_obs(t)
        t.train_epoch()
        t.save_checkpoint()
    resumed = []
    for _ in range(2):
        with Trainer(make_config(), run_dir=tmp_path / "a", console=False) as t:
            assert t.progress.epoch == 2
            resumed.append(first_obs(t))
    assert torch.equal(resumed[0], resumed[1])
    for row in range(opening.shape[0]):
        assert not torch.equal(opening[row], resumed[0][row])


def test_resume_continues_counters_schedule_and_metrics(tmp_path):
    overrides = dict(trainer={"total_timesteps": 6 * BATCH}, optimizer={"schedule": "linear"},
                     checkpoint={"interval": 1})
    full = trained(tmp_path, epochs=6, name="full", **overrides)
    full.cleanup()
    first = trained(tmp_path, epochs=3, name="cut", **overrides)
    first.cleanup()  # as if killed right after epoch 3's checkpoint
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"agent_step": 9999, "epoch": 4')  # a torn line past the checkpoint
    second = Trainer(make_config(**overrides), run_dir=tmp_path / "cut", console=False).setup()
    assert second.progress.epoch == 3
    result = second.train()
    second.cleanup()
    assert result.progress.agent_step == full.progress.agent_step == 6 * BATCH
    cut, ref = read_metrics(tmp_path / "cut"), read_metrics(tmp_path / "full")
    assert [m["agent_step"] for m in cut] == [m["agent_step"] for m in ref] == [BATCH * k for k in range(1, 7)]
    assert [m["overview/learning_rate"] for m in cut] == [m["overview/learning_rate"] for m in ref]
    assert result.summary["resumed_from"].endswith("epoch_000003")


def test_resuming_a_finished_run_trains_nothing_more(tmp_path):
    cfg = make_config(trainer={"total_timesteps": 2 * BATCH})
    with Trainer(cfg, run_dir=tmp_path / "r", console=False) as t:
        t.train()
    with Trainer(cfg, run_dir=tmp_path / "r", console=False) as t:
        result = t.train()
    assert result.progress.agent_step == 2 * BATCH and len(read_metrics(tmp_path / "r")) == 2


# ------------------------------------------------------------------------------ Ctrl-C in process
class SignalAt(Hook):
    def __init__(self, epoch, signum=signal.SIGINT):
        self.epoch, self.signum = epoch, signum

    def on_epoch_end(self, *, progress):
        if progress.epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_epoch_with_a_checkpoint(tmp_path, signum):
    cfg = make_config(trainer={"total_timesteps": 10 * BATCH})
    before = signal.getsignal(signal.SIGINT)
    with Trainer(cfg, run_dir=tmp_path / "r", hooks=[SignalAt(3, signum)], console=False) as t:
        with pytest.raises(TrainingInterrupted) as info:
            t.train()
    assert info.value.exit_code == 128 + signum and info.value.agent_step == 3 * BATCH
    assert info.value.checkpoint == tmp_path / "r" / "checkpoints" / "epoch_000003"
    assert load_checkpoint(tmp_path / "r").epoch == 3
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# ------------------------------------------------------------------------------ non-finite guard
def nan_value_loss(calls, when):
    real = ppo_module.value_loss

    def patched(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out * float("nan") if when(len(calls)) else out

    return patched


def test_one_nan_loss_skips_that_step_and_is_counted(tmp_path, monkeypatch):
    t = trained(tmp_path, epochs=1)
    calls = []
    monkeypatch.setattr(ppo_module, "value_loss", nan_value_loss(calls, lambda n: n == 1))
    before = t.optimizer.flat.detach().clone()
    state_before = {k: v.clone() for k, v in t.optimizer.optimizer.state[t.optimizer.flat].items()}
    metrics = t.train_epoch()
    assert metrics["losses/skipped_steps"] == 1 and len(calls) == 2  # 2 minibatches, the first skipped
    assert t.optimizer.skipped_steps == 1 and t.optimizer.nonfinite_streak == 0
    # Adam took exactly one step (the second minibatch), not two.
    assert t.optimizer.optimizer.state[t.optimizer.flat]["step"] == state_before["step"] + 1
    assert not torch.equal(before, t.optimizer.flat) and t.optimizer.weights_finite()
    t.cleanup()


def test_persistent_nan_rolls_back_then_stops_and_never_writes_nonfinite(tmp_path, monkeypatch, caplog):
    cfg = make_config(trainer={"total_timesteps": 20 * BATCH}, checkpoint={"interval": 1},
                      guard={"max_nonfinite_steps": 3, "max_rollbacks": 1})
    calls = []
    t = Trainer(cfg, run_dir=tmp_path / "r", console=False).setup()
    for _ in range(2):
        t.train_epoch()
    good = t.optimizer.flat.detach().clone()
    monkeypatch.setattr(ppo_module, "value_loss", nan_value_loss(calls, lambda n: True))
    with caplog.at_level(logging.WARNING, logger="metta_rl"):
        t.train_epoch()  # 2 skipped steps: below the limit
        assert t.guard.rollbacks == 0 and t.optimizer.nonfinite_streak == 2
        # 4 in a row: roll back to the newest checkpoint (epoch 3's: its steps were all
        # skipped, so its weights are epoch 2's, still finite), LR halved.
        t.train_epoch()
    assert t.guard.rollbacks == 1 and t.optimizer.lr_scale == 0.5
    assert torch.equal(t.optimizer.flat, good)
    assert any("restored" in r.getMessage() and "epoch_000003" in r.getMessage() for r in caplog.records)
    assert t.progress.epoch == 4  # progress keeps counting: those env steps happened
    with pytest.raises(TrainingError, match="non-finite .* after 1 rollback"):
        t.train()
    t.cleanup()
    for path in ck.list_checkpoints(tmp_path / "r"):
        state = load_checkpoint(path).state
        assert all(torch.isfinite(v).all() for v in state["policy"].values()), path


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    t = trained(tmp_path, epochs=1)
    with torch.no_grad():
        t.optimizer.flat[0] = float("inf")
    with pytest.raises(TrainingError, match="not finite"):
        t.save_checkpoint()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "a")] == ["epoch_000000"]
    t.cleanup()


# ------------------------------------------------------------------------------ counters across a resume
def fail_evaluations(monkeypatch):
    from metta_rl.managers.evaluation import EvaluationManager

    def broken(self, *args, **kwargs):
        raise RuntimeError("eval env failed on purpose")

    monkeypatch.setattr(EvaluationManager, "evaluate", broken)


def counters(t):
    return t.guard.rollbacks, t.guard._in_a_row, t.optimizer.nonfinite_streak, t.eval_failures


def test_guard_counters_streak_and_eval_failures_survive_a_resume(tmp_path, monkeypatch):
    overrides = dict(trainer={"total_timesteps": 20 * BATCH}, checkpoint={"interval": 1},
                     evaluation={"evaluate_interval": 1}, guard={"max_nonfinite_steps": 3, "max_rollbacks": 2})
    t = trained(tmp_path, epochs=1, name="r", **overrides)
    monkeypatch.setattr(ppo_module, "value_loss", nan_value_loss([], lambda n: True))
    fail_evaluations(monkeypatch)
    for _ in range(3):  # 2 minibatches an epoch: streak 2, then 4 (a rollback, streak 0), then 2
        t.train_epoch()
    assert counters(t) == (1, 1, 2, 3)
    saved = t.last_checkpoint
    assert saved.name == "epoch_000004"
    t.cleanup()

    resumed = Trainer(make_config(**overrides), run_dir=tmp_path / "r", console=False).setup()
    assert resumed.resumed_from == saved
    assert counters(resumed) == (1, 1, 2, 3)
    # As without the restart: epoch 5 reaches the limit (2 + 2 skipped steps) and rolls back a
    # second time in a row; epoch 7 reaches it again and stops the run (max_rollbacks=2). A streak
    # or rollback count reset by the resume would stop it later (epoch 8 or 9).
    with pytest.raises(TrainingError, match="after 2 rollback"):
        resumed.train()
    assert resumed.progress.epoch == 6 and resumed.guard.rollbacks == 2 and resumed.eval_failures == 5
    resumed.cleanup()


def test_a_checkpoint_saved_before_the_counters_were_loads_them_as_zero(tmp_path):
    t = trained(tmp_path, epochs=1)
    current = load_checkpoint(t.save_checkpoint())
    state = {k: v for k, v in current.state.items() if k not in ("guard", "eval_failures")}
    state["optimizer"] = {k: v for k, v in state["optimizer"].items() if k != "nonfinite_streak"}
    metadata = {k: v for k, v in current.metadata.items() if k not in ("format", "created", "files")}
    legacy = ck.save_checkpoint(tmp_path / "legacy" / "epoch_000001", state=state, metadata=metadata)
    t.guard.rollbacks, t.guard._in_a_row, t.optimizer.nonfinite_streak, t.eval_failures = 2, 1, 1, 3
    t.load_checkpoint(legacy)
    assert counters(t) == (0, 0, 0, 0)
    assert torch.equal(t.optimizer.flat, torch.cat([v.reshape(-1) for v in current.state["policy"].values()]))
    t.cleanup()


@pytest.mark.parametrize("stale", [False, True])
def test_a_run_resumed_from_another_runs_checkpoint_has_its_own_rollback_target(tmp_path, monkeypatch, caplog, stale):
    """Resumed from run a's checkpoint, run b writes its own copy before its first epoch, and the
    guard rolls back to that copy: not to nothing, and not to checkpoints an older attempt left in b."""
    overrides = dict(trainer={"total_timesteps": 10 * BATCH}, checkpoint={"interval": 1},
                     guard={"max_nonfinite_steps": 2, "max_rollbacks": 1})
    source = trained(tmp_path, epochs=1, name="a", **overrides)
    foreign, weights = source.last_checkpoint, source.optimizer.flat.detach().clone()
    source.cleanup()
    if stale:  # an older attempt in b, other seed: epochs 1-3 with other weights
        trained(tmp_path, epochs=3, name="b", **overrides, seed=1).cleanup()
    own = tmp_path / "b" / "checkpoints" / "epoch_000001"

    before_first_epoch = []

    class FirstRollout(Hook):
        def on_rollout_end(self):
            if not before_first_epoch:
                before_first_epoch.append(own.is_dir() and tensors_equal(load_checkpoint(own).state["policy"],
                                                                         load_checkpoint(foreign).state["policy"]))

    t = Trainer(make_config(resume=str(foreign), **overrides), run_dir=tmp_path / "b", hooks=[FirstRollout()],
                console=False).setup()
    assert t.resumed_from == foreign
    monkeypatch.setattr(ppo_module, "value_loss", nan_value_loss([], lambda n: True))
    with caplog.at_level(logging.WARNING, logger="metta_rl"):
        t.train_epoch()  # 2 skipped steps: the limit, a rollback at once
    assert before_first_epoch == [True]
    assert t.guard.rollbacks == 1 and torch.equal(t.optimizer.flat, weights)
    assert any(f"restored {own}" in r.getMessage() for r in caplog.records)
    t.cleanup()


# ------------------------------------------------------------------------------ the run record
def test_a_metrics_row_that_cannot_be_written_stops_the_run_naming_the_file(tmp_path):
    cfg = make_config(trainer={"total_timesteps": 6 * BATCH}, checkpoint={"interval": 1})
    run = tmp_path / "r"
    failures = []

    class Failure(Hook):
        def on_failure(self, *, error):
            failures.append(error)

    with Trainer(cfg, run_dir=run, hooks=[Failure()], console=False) as t:
        t.train_epoch()
        (run / "metrics.jsonl").unlink()
        (run / "metrics.jsonl").mkdir()  # the next row cannot be appended
        with pytest.raises(RunRecordError) as info:
            t.train()
    assert str(info.value) == f"cannot write the run record {run / 'metrics.jsonl'}: Is a directory"
    assert isinstance(info.value, OSError) and failures == [info.value]
    # Stopped in epoch 2, before its checkpoint: no checkpoint claims an epoch the record lacks.
    assert t.progress.epoch == 2 and [p.name for p in ck.list_checkpoints(run)] == ["epoch_000001", "epoch_000000"]
    assert not (run / "summary.json").exists()


def test_a_run_record_that_cannot_be_started_over_fails_setup_naming_it(tmp_path):
    (tmp_path / "r" / "metrics.jsonl").mkdir(parents=True)  # a fresh run deletes the old rows
    with pytest.raises(RunRecordError, match=f"^cannot write the run record {tmp_path / 'r' / 'metrics.jsonl'}: "):
        Trainer(make_config(), run_dir=tmp_path / "r", console=False).setup()


def test_a_summary_that_cannot_be_written_stops_the_run_and_leaves_no_partial_file(tmp_path):
    run = tmp_path / "r"
    with Trainer(make_config(trainer={"total_timesteps": 2 * BATCH}), run_dir=run, console=False) as t:
        (run / "summary.json").mkdir()
        with pytest.raises(RunRecordError, match=f"^cannot write the run record {run / 'summary.json'}: "):
            t.train()
    assert load_checkpoint(run).epoch == 2  # the final checkpoint came first and is complete
    assert (run / "summary.json").is_dir() and not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_checkpoint_that_cannot_be_written_is_a_run_record_error_naming_it(tmp_path, monkeypatch):
    t = trained(tmp_path, epochs=1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    path = tmp_path / "a" / "checkpoints" / "epoch_000001"
    with pytest.raises(RunRecordError, match=f"^cannot write the checkpoint {path}: No space left on device$"):
        t.save_checkpoint()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "a")] == ["epoch_000000"]
    t.cleanup()


# ------------------------------------------------------------------------------ env failures
def test_an_env_that_raises_is_named_and_the_last_checkpoint_is_intact(tmp_path):
    env = {**PZ_ENV, "kwargs": {"fail_at_step": 40}}
    cfg = make_config(env=env, checkpoint={"interval": 1}, trainer={"total_timesteps": 20 * BATCH})
    with Trainer(cfg, run_dir=tmp_path / "r", console=False) as t:
        with pytest.raises(EnvError, match=r"env 'tiny_pz': env #\d \(tests.envs_for_tests:make_pz_env\) raised RuntimeError: tiny env failed on purpose"):
            t.train()
        epoch = t.progress.epoch
    assert epoch >= 1
    assert load_checkpoint(tmp_path / "r").epoch == epoch


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["killed", "raises"])
def test_a_dead_worker_stops_training_with_its_name_and_no_orphans(tmp_path, how):
    env = {**PZ_ENV, "kwargs": {"fail_at_step": 30} if how == "raises" else {}}
    cfg = make_config(env=env, vectorization={"backend": "multiprocessing", "num_envs": 4, "num_workers": 2},
                      trainer={"total_timesteps": 50 * BATCH}, checkpoint={"interval": 1})

    class KillWorker(Hook):
        def __init__(self):
            self.trainer = None

        def on_epoch_end(self, *, progress):
            if how == "killed" and progress.epoch == 2:
                os.kill(self.trainer.env.vecenv.processes[1].pid, signal.SIGKILL)

    hook = KillWorker()
    with Trainer(cfg, run_dir=tmp_path / "r", hooks=[hook], console=False) as t:
        hook.trainer = t
        pids = [p.pid for p in t.env.vecenv.processes]
        expected = r"worker 1 \(pid \d+, envs 2-3\) was killed by signal 9" if how == "killed" else r"worker \d \(pid \d+, envs \d-\d\) exited with code 1"
        with pytest.raises(EnvError, match=expected):
            t.train()
        epoch = t.progress.epoch
    assert not [pid for pid in pids if _alive(pid)]
    assert load_checkpoint(tmp_path / "r").epoch == epoch


# ------------------------------------------------------------------------------ learning across a resume
@pytest.mark.parametrize("seed", [0, 1])
def test_cartpole_interrupted_halfway_and_resumed_still_solves_it(tmp_path, seed):
    """The shipped CartPole config, stopped by SIGINT at half its steps and resumed: the
    resumed half reaches a policy that solves it (an evaluation after the resume point
    >= 475), on more than one seed, as an uninterrupted run does."""
    from metta_rl import cli

    cfg = cli.to_trainer_config(cli.compose(["env=cartpole", f"seed={seed}", f"runs_dir={tmp_path}", "run=cp"]))
    half = cfg.trainer.total_timesteps // cfg.trainer.batch_size // 2
    random.seed(0)
    with Trainer(cfg, hooks=[SignalAt(half)], console=False) as t:
        with pytest.raises(TrainingInterrupted):
            t.train()
        assert t.progress.epoch == half
        resume_step = t.progress.agent_step
    with Trainer(cfg, console=False) as t:
        assert t.progress.epoch == half
        result = t.train()
    summary = result.summary
    metrics = read_metrics(tmp_path / "cp")
    after = [m["eval/mean_return"] for m in metrics if "eval/mean_return" in m and m["agent_step"] > resume_step]
    print(f"\nresumed CartPole seed {seed}: evals after the resume {after}, final {summary['eval_mean_return']}")
    steps = [m["agent_step"] for m in metrics]
    assert steps == sorted(set(steps)) and steps[-1] == summary["agent_steps"]
    assert summary["agent_steps"] == cfg.trainer.total_timesteps // cfg.trainer.batch_size * cfg.trainer.batch_size
    assert len(after) >= 2 and max(after) >= 475, (after, summary)
