"""tools/evaluate.py as a user runs it: train CartPole with tools/train.py, then evaluate the
run's checkpoint in a fresh process that knows nothing but the checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.integration_utils import run_tool, snapshot

FINAL = "epoch_000390"  # 99,840 steps of 256 with the shipped CartPole config
EVAL_LINE = re.compile(r"^eval: mean_return=(\S+) std_return=(\S+) episodes=(\d+) mean_length=(\S+)$", re.MULTILINE)


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return run_tool("evaluate.py", *args)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A CartPole run trained to 500 with the shipped config (about 15 s)."""
    runs = tmp_path_factory.mktemp("eval_runs")
    proc = run_tool("train.py", "env=cartpole", "seed=0", "run=cp", f"runs_dir={runs}", timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = runs / "cp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent_steps"] == 99_840 and summary["best_eval_mean_return"] >= 475
    assert (run / "checkpoints" / FINAL / "metadata.json").is_file()  # the checkpoint at the end
    return run


@pytest.fixture(scope="module")
def full_eval(trained_run):
    proc = evaluate(f"checkpoint={trained_run}", "episodes=50", "replay=true")
    return trained_run, proc


# ------------------------------------------------------------------------------ the score
@pytest.mark.timeout(900)
def test_a_run_is_evaluated_at_its_newest_checkpoint(full_eval):
    run, proc = full_eval
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    line = EVAL_LINE.search(proc.stdout)
    assert line, proc.stdout
    assert int(line[3]) == 50

    # The summary table names the checkpoint it chose (the newest) and the score.
    ckpt = run / "checkpoints" / FINAL
    assert re.search(rf"^checkpoint\s+{re.escape(str(ckpt.resolve()))}$", proc.stdout, re.MULTILINE)
    assert re.search(r"^trained\s+99,840 agent steps, 390 epochs$", proc.stdout, re.MULTILINE)
    assert re.search(r"^mean return\s+\d+\.\d \+/- \d+\.\d$", proc.stdout, re.MULTILINE)

    report = json.loads((ckpt / "eval.json").read_text())
    assert report["mean_return"] == pytest.approx(float(line[1]), abs=0.01)
    assert len(report["returns"]) == len(report["lengths"]) == report["episodes"] == 50
    assert report["mean_return"] == pytest.approx(sum(report["returns"]) / 50)
    assert (report["agent_step"], report["epoch"], report["run"], report["env"]) == (99_840, 390, "cp", "cartpole")
    assert report["deterministic"] is True and report["seed"] == 0
    assert report["checkpoint"] == str(ckpt.resolve())


def test_the_best_checkpoint_scores_at_least_475_as_it_did_in_training(trained_run, tmp_path):
    """The policy ``checkpoints/best`` keeps solves CartPole (a random policy scores ~20), and a
    fresh process that knows only the checkpoint reproduces the score training recorded for it."""
    best = trained_run / "checkpoints" / "best"
    recorded = json.loads((best / "metadata.json").read_text())["eval"]["mean_return"]
    proc = evaluate(f"checkpoint={best}", "episodes=20", f"out={tmp_path / 'best.json'}")
    assert proc.returncode == 0, proc.stderr
    line = EVAL_LINE.search(proc.stdout)
    assert line, proc.stdout
    assert float(line[1]) == pytest.approx(recorded, abs=0.01) and recorded >= 475


def test_replay_gif_shows_the_env(full_eval):
    from PIL import Image

    run, proc = full_eval
    assert proc.returncode == 0, proc.stderr
    gif = run / "checkpoints" / FINAL / "replays" / f"{FINAL}.gif"
    report = json.loads((run / "checkpoints" / FINAL / "eval.json").read_text())
    assert report["replay"] == str(gif.resolve())
    assert re.search(rf"^replay\s+{re.escape(str(gif.resolve()))}$", proc.stdout, re.MULTILINE)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames > 1 and im.size == (600, 400)
        im.seek(im.n_frames // 2)
        frame = im.convert("RGB")
    colours = {rgb for _, rgb in frame.getcolors(maxcolors=1 << 16)}
    # CartPole's renderer: a black cart and a tan pole on white.
    assert (0, 0, 0) in colours
    assert any(abs(r - 202) < 8 and abs(g - 152) < 8 and abs(b - 101) < 8 for r, g, b in colours)
    assert (255, 255, 255) in colours or any(min(c) > 245 for c in colours)


def test_same_seed_same_episodes_and_out_paths(trained_run, tmp_path):
    args = (f"checkpoint={trained_run / 'checkpoints' / FINAL}", "episodes=6", "deterministic=false", "seed=11")
    a = evaluate(*args, f"out={tmp_path / 'a.json'}")
    b = evaluate(*args, f"out={tmp_path / 'b'}/")  # a folder: eval.json inside it
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ra = json.loads((tmp_path / "a.json").read_text())
    rb = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert ra["returns"] == rb["returns"] and ra["lengths"] == rb["lengths"] and len(ra["returns"]) == 6
    assert ra["deterministic"] is False and ra["seed"] == 11 and ra["replay"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b"]  # no replay asked for, none made


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["episodes=5"], "checkpoint=<checkpoint dir or run dir> is required"),
        (["checkpoint=X", "episode=5"], "unknown argument 'episode' (did you mean 'episodes'?); allowed: checkpoint,"),
        (["checkpoint=X", "--verbose"], "argument '--verbose' is invalid: expected key=value"),
        (["checkpoint=X", "episodes=0"], "episodes='0' is invalid: expected an integer >= 1"),
        (["checkpoint=X", "replay=maybe"], "replay='maybe' is invalid: expected true or false"),
        (["checkpoint=X", "seed=1", "seed=2"], "argument 'seed' is given twice"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, message):
    proc = evaluate(*[a.replace("=X", f"={tmp_path}") for a in args])
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {message}")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_missing_path_and_run_without_checkpoints(tmp_path):
    proc = evaluate(f"checkpoint={tmp_path / 'nope'}")
    assert proc.returncode == 2 and proc.stderr == f"error: checkpoint path {tmp_path / 'nope'} does not exist\n"
    proc = evaluate(f"checkpoint={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: no checkpoint in {tmp_path}")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_damaged_checkpoint_is_named_and_nothing_written(trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run, symlinks=True, ignore=shutil.ignore_patterns("eval.json", "replays"))
    ckpt = run / "checkpoints" / FINAL
    policy = ckpt / "policy.pt"
    policy.write_bytes(policy.read_bytes()[:100])  # truncated
    before = snapshot(run)

    proc = evaluate(f"checkpoint={ckpt}", "episodes=2")
    assert proc.returncode == 2, proc.stdout
    damaged = f"error: checkpoint file {policy.resolve()} is damaged: its contents do not match the checksum\n"
    assert proc.stderr == damaged
    assert snapshot(run) == before

    # Given the run, the damaged newest one is named on stderr and the next older one evaluated.
    proc = evaluate(f"checkpoint={run}", "episodes=2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"warning: skipped checkpoint file {policy}")
    older = [p for p in sorted((run / "checkpoints").glob("epoch_*")) if p.name != FINAL][-1]
    assert json.loads((older / "eval.json").read_text())["checkpoint"] == str(older.resolve())
    assert not (ckpt / "eval.json").exists()
