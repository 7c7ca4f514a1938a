"""Training processes killed from outside: SIGKILL at random moments (one during a checkpoint
write) always resumes from the last complete checkpoint and reaches the step budget; SIGINT
and SIGTERM exit 130 / 143 with a checkpoint and no worker left behind; a run record that
cannot be written stops the CLI with exit 1 and one line naming it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from metta_rl import Hook
from metta_rl.records import checkpoint as ck
from tests.integration_utils import REPO, config_dict, run_tool

BATCH = 64

# Runs a Trainer from a JSON config; SLOW_WRITE=s sleeps after every checkpoint file is
# written, so a test can kill the process while a checkpoint is half-written.
SCRIPT = """
import json, os, sys, time
from metta_rl.records import checkpoint as ck
slow = float(os.environ.get("SLOW_WRITE", "0"))
if slow:
    real = ck._write_synced
    def _slow(path, write):
        out = real(path, write)
        time.sleep(slow)
        return out
    ck._write_synced = _slow
from metta_rl.trainer import Trainer
with Trainer(json.loads(sys.argv[1]), run_dir=sys.argv[2], console=False) as t:
    print("resumed_from", t.resumed_from, flush=True)
    t.train()
print("done", t.progress.agent_step, flush=True)
"""


def start(cfg: dict, run: Path, slow_write: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "SLOW_WRITE": str(slow_write), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg), str(run)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def newest_complete(run: Path) -> Path | None:
    for path in ck.list_checkpoints(run):
        try:
            ck.read_metadata(path)
            return path
        except ck.CheckpointError:
            continue
    return None


def epochs_written(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_at_random_moments_always_resumes_from_the_last_complete_checkpoint(tmp_path):
    total_epochs = 60
    cfg = config_dict(
        trainer={"total_timesteps": total_epochs * BATCH},
        checkpoint={"interval": 1, "keep_last": 3},
        policy={"hidden_sizes": [256, 256]},  # bigger files: writes take a moment
    )
    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    # Trials: three kills at random moments, one while a checkpoint is being written.
    for trial in ("random", "random", "during_write", "random"):
        proc = start(cfg, run, slow_write=0.3 if trial == "during_write" else 0.0)
        try:
            wait_for(lambda: proc.poll() is not None or epochs_written(run) > 0)
            if trial == "during_write":
                folder = run / ck.CHECKPOINTS
                wait_for(lambda: folder.is_dir() and any(p.name.startswith(".tmp-epoch") for p in folder.iterdir()))
            else:
                time.sleep(rng.uniform(0.0, 0.6))
            expected = newest_complete(run)
            if proc.poll() is None:
                proc.kill()
                kills += 1
        finally:
            proc.kill()
            out, err = proc.communicate()
        assert "Traceback" not in err, err
        # Everything that looks like a checkpoint is complete; half-written ones are hidden.
        for path in ck.list_checkpoints(run):
            ck.read_metadata(path)
        if trial == "during_write":
            assert any(p.name.startswith(".tmp-epoch") for p in (run / ck.CHECKPOINTS).iterdir())
        # A kill can land between the check above and the kill: never older than `expected`.
        newest = newest_complete(run)
        assert newest is not None and (expected is None or newest.name >= expected.name)

        resumed = start(cfg, run)
        try:
            line = resumed.stdout.readline().split()
            assert line[0] == "resumed_from" and Path(line[1]) == newest, (line, newest)
        finally:
            resumed.kill()
            resumed.communicate()

    final = start(cfg, run)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert out.splitlines()[-1] == f"done {total_epochs * BATCH}"
    assert kills >= 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent_steps"] == total_epochs * BATCH
    steps = [json.loads(line)["agent_step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [BATCH * k for k in range(1, total_epochs + 1)]
    assert not [p for p in (run / ck.CHECKPOINTS).iterdir() if p.name.startswith(".tmp")]


def train_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "tools/train.py", *args],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_exits_cleanly_with_a_checkpoint_and_no_workers(tmp_path, signum, code):
    run = tmp_path / "sig"
    proc = train_cli(
        "env=cartpole", "run=sig", f"runs_dir={tmp_path}", "trainer.total_timesteps=10000000",
        "vectorization.backend=multiprocessing", "vectorization.num_envs=4", "vectorization.num_workers=2",
        "logging.console=plain", "logging.log_interval_s=0",
    )
    try:
        wait_for(lambda: proc.poll() is not None or epochs_written(run) >= 2, timeout=120)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"stopped by {signal.Signals(signum).name}" in err
    checkpoint = ck.load_checkpoint(run)
    assert checkpoint.epoch >= 2
    assert str(checkpoint.path) in err
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive


def test_sigkill_of_the_trainer_takes_its_workers_down(tmp_path):
    cfg = config_dict(
        trainer={"total_timesteps": 10_000 * BATCH},
        vectorization={"backend": "multiprocessing", "num_envs": 4, "num_workers": 2},
    )
    run = tmp_path / "run"
    proc = start(cfg, run)
    try:
        wait_for(lambda: proc.poll() is not None or epochs_written(run) >= 1, timeout=120)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        proc.kill()
        proc.communicate()
    finally:
        proc.kill()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


class BreakMetricsAfterFirstEpoch(Hook):
    """Turns metrics.jsonl into a directory after epoch 1 (a config hook of the CLI test below)."""

    def on_train_start(self, *, run_dir):
        self.path = run_dir.metrics_path

    def on_epoch_end(self, *, progress):
        if progress.epoch == 1:
            self.path.unlink()
            self.path.mkdir()


def test_a_run_record_that_cannot_be_written_exits_1_with_one_line_naming_it(tmp_path):
    run = tmp_path / "rec"
    proc = run_tool(
        "train.py", "env=cartpole", "run=rec", f"runs_dir={tmp_path}", "trainer.total_timesteps=1024",
        "trainer.update_epochs=1", "hooks=[tests.test_faults:BreakMetricsAfterFirstEpoch]",
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: cannot write the run record {run / 'metrics.jsonl'}: Is a directory"
    assert ck.load_checkpoint(run).epoch == 0 and not (run / "summary.json").exists()
