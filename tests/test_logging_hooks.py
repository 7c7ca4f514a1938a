"""Built-in side effects as hooks: W&B (offline, read back from its run file), TensorBoard,
the console (plain lines and the live table under a pseudo-terminal), the heartbeat, the
system monitor, the profiler trace and the learning curve.

Most checks share one short real training run (``logged_run``) with every sink switched on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import struct
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from metta_rl import Hook, Trainer
from metta_rl.hooks.builtin import default_hooks
from metta_rl.config import WandbConfig
from metta_rl.hooks.console import MAX_REDRAWS_PER_S, ConsoleHook, parse_line
from metta_rl.hooks.learning_curve import LearningCurveHook
from metta_rl.learning_curve import plot_learning_curve, read_curves
from metta_rl.hooks.monitor import HeartbeatHook, ProfilerHook, SystemMonitorHook
from metta_rl.core.progress import TrainingProgress
from metta_rl.records.run_dir import RunDirectory
from tests.integration_utils import REPO, make_config

torch.set_num_threads(1)

BATCH = 64
EPOCHS = 4


# ------------------------------------------------------------------------------ helpers
def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_wandb_records(path: Path, timeout: float = 30.0) -> list:
    """Every record of a finished ``.wandb`` run file: parsed (:func:`parse_wandb_records`) once it
    holds the run's ``exit`` record. wandb-core, a separate process shared by every run of the
    test session, may still be writing the file when ``finish()`` has returned; in the full suite
    a file read at once sometimes lacked records."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            records = parse_wandb_records(path)
        except AssertionError:  # a chunk still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        time.sleep(0.05)
    return parse_wandb_records(path)


def parse_wandb_records(path: Path) -> list:
    """Every record of a ``.wandb`` run file, parsed with wandb's own protobuf schema.

    The file is a LevelDB-style log (what wandb-core writes and ``wandb sync`` reads): a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks ``crc32 | length | type | data``; a record
    is one FULL chunk or FIRST, MIDDLE..., LAST. wandb 0.31 ships no Python reader for it.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad checksum at {pos} in {path}"
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run_files(run_dir: Path) -> list[Path]:
    """Oldest first: folders are ``offline-run-<time>-<id>``, with ``-1``, ``-2`` appended when
    a run id recurs within the same second."""
    files = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    return sorted(files, key=lambda p: (len(p.parent.name), p.parent.name))


def wandb_history(records) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def records_of(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def same(a, b) -> bool:
    """Equal numbers, with W&B's NaN and metrics.jsonl's null both meaning 'no value'."""
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return a == b


class CustomMetric(Hook):
    """A user hook as in the README: a custom metric from the rollout, and an epoch-end reader."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def custom_metrics(self, *, report):
        return {"custom/steps_x2": 2.0 * report.rollout.agent_steps, "custom/epoch_sq": float(report.progress.epoch**2)}

    def on_epoch_end(self, *, progress, metrics):
        self.seen.append((progress.agent_step, metrics["custom/epoch_sq"]))


class RaisesOnEpochEnd(Hook):
    def __init__(self) -> None:
        self.calls = 0

    def on_epoch_end(self, *, progress):
        self.calls += 1
        raise RuntimeError("dashboard unreachable")


class HeartbeatWatcher(Hook):
    """Reads the heartbeat file before the built-in hooks run for the same epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.beats: list[tuple[int, dict]] = []

    def on_epoch_end(self, *, progress):
        self.beats.append((progress.epoch, json.loads(self.path.read_text())))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ------------------------------------------------------------------------------ the shared run
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """EPOCHS epochs of CartPole with W&B (online asked, no key: offline), TensorBoard, plain
    console, heartbeat, system monitor, profiler on epochs 1-2, evaluation every 2 epochs, a
    user hook with custom metrics and one that raises."""
    root = tmp_path_factory.mktemp("logged")
    run = root / "run"
    cfg = make_config(
        trainer={"total_timesteps": EPOCHS * BATCH},
        evaluation={"evaluate_interval": 2},
        wandb={"enabled": True, "mode": "online", "tags": ["test"], "group": "hooks"},
        tensorboard={"enabled": True},
        logging={"console": "auto", "log_interval_s": 0.0, "monitor_interval_s": 0.0, "profile_epochs": [1, 3]},
    )
    custom, bad, watcher = CustomMetric(), RaisesOnEpochEnd(), HeartbeatWatcher(run / "heartbeat")
    capture = _Capture()
    stdout = io.StringIO()
    hooks_log = logging.getLogger("metta_rl.hooks")
    hooks_log.addHandler(capture)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("WANDB_API_KEY", raising=False)
            mp.delenv("WANDB_MODE", raising=False)
            mp.setenv("NETRC", str(root / "no-netrc"))
            for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
                mp.setenv(var, str(root / "wandb-home"))
            started = time.perf_counter()
            with contextlib.redirect_stdout(stdout), Trainer(cfg, run_dir=run, hooks=[custom, bad, watcher]) as trainer:
                result = trainer.train()
            seconds = time.perf_counter() - started
    finally:
        hooks_log.removeHandler(capture)
    print(f"\nlogged run: {EPOCHS} epochs with every sink in {seconds:.1f}s")
    return types.SimpleNamespace(
        run=run,
        config=cfg,
        result=result,
        metrics=read_metrics(run),
        stdout=stdout.getvalue(),
        warnings=capture.messages,
        custom=custom,
        bad=bad,
        watcher=watcher,
    )


def test_run_ends_normally_with_a_failing_user_hook_disabled_after_one_warning(logged_run):
    r = logged_run
    assert r.bad.calls == 1
    disabled = [m for m in r.warnings if "disabled" in m]
    assert len(disabled) == 1, r.warnings
    assert "RaisesOnEpochEnd" in disabled[0] and "dashboard unreachable" in disabled[0]
    assert r.result.summary["epochs"] == EPOCHS
    assert json.loads((r.run / "summary.json").read_text())["agent_steps"] == EPOCHS * BATCH
    assert [m["agent_step"] for m in r.metrics] == [BATCH * k for k in range(1, EPOCHS + 1)]


def test_user_custom_metrics_reach_metrics_jsonl_and_hooks(logged_run):
    r = logged_run
    assert [m["custom/steps_x2"] for m in r.metrics] == [2.0 * BATCH] * EPOCHS
    assert [m["custom/epoch_sq"] for m in r.metrics] == [float(k * k) for k in range(1, EPOCHS + 1)]
    assert r.custom.seen == [(BATCH * k, float(k * k)) for k in range(1, EPOCHS + 1)]


def test_wandb_offline_history_holds_the_values_the_trainer_computed(logged_run):
    r = logged_run
    files = wandb_run_files(r.run)
    assert len(files) == 1, files
    records = read_wandb_records(files[0])
    history = wandb_history(records)
    assert len(history) == EPOCHS
    for logged, written in zip(history, r.metrics):
        for key in ("agent_step", "epoch", "overview/sps", "losses/policy_loss", "custom/epoch_sq"):
            assert logged[key] == written[key], key
        assert set(written) <= set(logged), set(written) - set(logged)
        assert all(same(logged[k], written[k]) for k in written)
        assert logged["system/rss_mb"] > 0 and "timing/update" in logged
    evals = [(h["agent_step"], h["eval/mean_return"]) for h in history if "eval/mean_return" in h]
    assert evals == [(m["agent_step"], m["eval/mean_return"]) for m in r.metrics if "eval/mean_return" in m]
    assert [step for step, _ in evals] == [2 * BATCH, 4 * BATCH]
    assert evals[-1][1] == r.result.summary["eval_mean_return"]

    # The resolved config is the run config; agent_step is the step metric of every family.
    (run_record,) = records_of(records, "run")
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    resolved = r.config.to_dict()
    assert {k: config[k] for k in resolved} == resolved
    assert config["wandb"]["mode"] == "online"  # as asked; it ran offline
    assert list(run_record.tags) == ["test"] and run_record.run_group == "hooks"
    assert run_record.run_id == (r.run / "wandb" / "run_id").read_text().strip()
    metrics = {m.glob_name or m.name: m.step_metric for m in records_of(records, "metric")}
    for family in ("overview", "losses", "env", "timing", "system", "eval"):
        assert metrics[f"{family}/*"] == "agent_step"
    assert metrics["*"] == "agent_step"
    # The final summary carries the trainer's summary.
    summary = {}
    for s in records_of(records, "summary"):
        summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in s.update})
    assert summary["agent_steps"] == EPOCHS * BATCH


def test_tensorboard_has_the_same_scalars_against_agent_step(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = logged_run
    acc = EventAccumulator(str(r.run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in ("overview/sps", "losses/policy_loss", "timing/env", "system/cpu_percent", "custom/epoch_sq", "epoch"):
        assert key in tags, key
        events = acc.Scalars(key)
        expected = [(m["agent_step"], m[key]) for m in r.metrics if key in m]
        assert [e.step for e in events] == [s for s, _ in expected]
        np.testing.assert_allclose([e.value for e in events], [v for _, v in expected], rtol=1e-6)
    evals = acc.Scalars("eval/mean_return")
    assert [(e.step, e.value) for e in evals] == [
        (m["agent_step"], pytest.approx(m["eval/mean_return"], rel=1e-6)) for m in r.metrics if "eval/mean_return" in m
    ]
    assert "agent_step" not in tags


def test_plain_console_is_one_parseable_line_per_report(logged_run):
    r = logged_run
    lines = r.stdout.splitlines()
    reports = [line for line in lines if line.startswith("epoch=")]
    assert len(reports) == EPOCHS  # log_interval_s=0: every epoch reports
    assert lines[0].startswith("training cartpole") and lines[-1].startswith("done: ")
    assert len(lines) == EPOCHS + 2
    assert "\x1b[" not in r.stdout
    parsed = [parse_line(line) for line in reports]
    assert all(p.keys() == parsed[0].keys() | ({"eval_return"} & p.keys()) for p in parsed)
    for p, m in zip(parsed, r.metrics):
        assert p["epoch"] == str(m["epoch"])
        assert p["step"] == f"{m['agent_step']}/{EPOCHS * BATCH}"
        assert float(p["policy_loss"]) == pytest.approx(m["losses/policy_loss"], rel=1e-3, abs=1e-9)
        assert float(p["rss_mb"]) == pytest.approx(m["system/rss_mb"], rel=1e-3)
        assert float(p["sps"]) > 0 and p["eta"].count(":") == 2
        assert ("eval_return" in p) == ("eval/mean_return" in m)


def test_heartbeat_is_rewritten_every_epoch(logged_run):
    r = logged_run
    # The watcher runs before the heartbeat hook: at the end of epoch k it sees epoch k-1's beat.
    assert [(epoch, beat["epoch"], beat["status"]) for epoch, beat in r.watcher.beats] == [
        (k, k - 1, "running") for k in range(1, EPOCHS + 1)
    ]
    final = json.loads((r.run / "heartbeat").read_text())
    assert final["status"] == "finished" and final["agent_step"] == EPOCHS * BATCH
    assert final["pid"] == os.getpid() and abs(final["time"] - time.time()) < 120


def test_system_metrics_every_epoch(logged_run):
    import psutil

    for m in logged_run.metrics:
        assert m["system/cpu_percent"] >= 0
        assert 50 < m["system/rss_mb"] < psutil.virtual_memory().total / 2**20
        assert 0 <= m["system/host_cpu_percent"] <= 100 and 0 < m["system/host_memory_percent"] <= 100
    assert sum(m["system/cpu_percent"] for m in logged_run.metrics) > 0


def test_profiler_trace_covers_the_chosen_epochs(logged_run):
    profile = logged_run.run / "profile"
    trace = json.loads((profile / "trace_epochs_1-3.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"epoch 1", "epoch 2"} <= names
    assert not {"epoch 0", "epoch 3"} & names
    assert any(str(n).startswith("aten::") for n in names)  # real ops were recorded
    assert "Self CPU" in (profile / "summary_epochs_1-3.txt").read_text()


def test_learning_curve_png_plots_metrics_jsonl(logged_run):
    r = logged_run
    png = r.run / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot_learning_curve(r.run)
    train_line, eval_line = fig.axes[0].get_lines()
    returns = "overview/episode_return"
    train = [(m["agent_step"], m[returns]) for m in r.metrics if m[returns] is not None]
    assert list(zip(train_line.get_xdata(), train_line.get_ydata())) == train
    evals = [(m["agent_step"], m["eval/mean_return"]) for m in r.metrics if "eval/mean_return" in m]
    assert list(zip(eval_line.get_xdata(), eval_line.get_ydata())) == evals
    assert fig.axes[0].get_xlabel() == "agent steps"


# ------------------------------------------------------------------------------ W&B details
class _Eval:
    def __init__(self, replay_path) -> None:
        self.replay_path = replay_path


def _fake_report(progress, eval_result=None):
    return types.SimpleNamespace(progress=progress, eval=eval_result)


def test_wandb_resume_keeps_the_run_id_and_logs_checkpoints_and_replays(tmp_path, monkeypatch):
    from PIL import Image

    from metta_rl.hooks.wandb_hook import WandbHook

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    cfg = make_config(wandb={"enabled": True, "mode": "offline", "log_checkpoints": True})
    gif = tmp_path / "replay.gif"
    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    ckpt = tmp_path / "checkpoints" / "epoch_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "policy.pt").write_bytes(b"weights" * 100)
    (ckpt / "metadata.json").write_text('{"agent_step": 128}')

    first = WandbHook(cfg.wandb)
    p = TrainingProgress(total_timesteps=256)
    first.on_train_start(progress=p, config=cfg, run_dir=run_dir)
    p = p.advance(agent_steps=128, episodes=3, wall_seconds=0.1)
    metrics = {"agent_step": 128, "eval/mean_return": 9.5}
    first.on_epoch_end(progress=p, metrics=metrics, report=_fake_report(p, _Eval(gif)))
    first.on_checkpoint(progress=p, path=ckpt)
    first.close()
    assert not first.resumed

    # A resumed Trainer builds new hooks and starts them again on the same run directory.
    second = WandbHook(cfg.wandb)
    second.on_train_start(progress=p, config=cfg, run_dir=run_dir)
    p2 = p.advance(agent_steps=128, episodes=3, wall_seconds=0.1)
    mettagrid_replay = tmp_path / "epoch_000002.json.z"  # MettaGrid's own format: saved, not a video
    mettagrid_replay.write_bytes(b"x\x9c" + b"\0" * 10)
    second.on_epoch_end(
        progress=p2, metrics={"agent_step": 256, "losses/policy_loss": 0.25}, report=_fake_report(p2, _Eval(mettagrid_replay))
    )
    second.close()
    assert second.resumed
    assert list(run_dir.path.glob("wandb/offline-run-*/files/epoch_000002.json.z"))

    files = wandb_run_files(run_dir.path)
    assert len(files) == 2
    first_records, second_records = (read_wandb_records(f) for f in files)
    ids = {records_of(rec, "run")[0].run_id for rec in (first_records, second_records)}
    assert ids == {(run_dir.path / "wandb" / "run_id").read_text().strip()}

    (row,) = wandb_history(first_records)
    assert row["agent_step"] == 128 and row["eval/mean_return"] == 9.5
    # The replay is a video at the same agent step (W&B flattens the media entry's fields).
    assert row["eval/replay/_type"] == "video-file" and row["eval/replay/path"].endswith(".gif")
    assert (files[0].parent / "files" / row["eval/replay/path"]).read_bytes() == gif.read_bytes()

    (artifact,) = records_of(first_records, "artifact")
    assert artifact.type == "model" and artifact.name == f"model-{ids.pop()}"
    assert json.loads(artifact.metadata) == {"agent_step": 128, "epoch": 1, "checkpoint": "epoch_000001"}
    assert sorted(entry.path for entry in artifact.manifest.contents) == ["metadata.json", "policy.pt"]
    (row,) = wandb_history(second_records)
    assert row["agent_step"] == 256 and row["losses/policy_loss"] == 0.25


def test_resumed_training_continues_the_wandb_run_and_logs_each_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run = tmp_path / "run"

    def config(epochs):
        return make_config(
            trainer={"total_timesteps": epochs * BATCH},
            evaluation={"enabled": False},
            checkpoint={"interval": 1},
            wandb={"enabled": True, "mode": "offline", "log_checkpoints": True},
        )

    with Trainer(config(2), run_dir=run, console=False) as trainer:
        trainer.train()
    with Trainer(config(4), run_dir=run, console=False) as trainer:  # resume=auto extends the run
        assert trainer.resumed_from is not None
        trainer.train()

    first, second = (read_wandb_records(f) for f in wandb_run_files(run))
    (run_id,) = {records_of(rec, "run")[0].run_id for rec in (first, second)}
    assert [h["agent_step"] for h in wandb_history(first)] == [BATCH, 2 * BATCH]
    assert [h["agent_step"] for h in wandb_history(second)] == [3 * BATCH, 4 * BATCH]
    assert [h["agent_step"] for h in wandb_history(first + second)] == [m["agent_step"] for m in read_metrics(run)]
    logged = [
        (a.name, json.loads(a.metadata)["agent_step"], json.loads(a.metadata)["checkpoint"])
        for a in records_of(first, "artifact") + records_of(second, "artifact")
    ]
    # Every checkpoint is an artifact, the initial one (epoch 0) included.
    assert logged == [(f"model-{run_id}", BATCH * k, f"epoch_{k:06d}") for k in range(0, 5)]
    manifest = records_of(second, "artifact")[-1].manifest
    assert {"policy.pt", "metadata.json"} <= {entry.path for entry in manifest.contents}


def test_eval_replays_reach_wandb_as_videos_at_their_agent_step(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    cfg = make_config(
        trainer={"total_timesteps": 4 * BATCH},
        evaluation={"evaluate_interval": 2, "replay": True, "replay_max_frames": 10},
        wandb={"enabled": True},
    )
    run = tmp_path / "run"
    with Trainer(cfg, run_dir=run, console=False) as trainer:
        result = trainer.train()
    (file,) = wandb_run_files(run)
    history = wandb_history(read_wandb_records(file))
    videos = [(h["agent_step"], h["eval/replay/path"]) for h in history if "eval/replay/path" in h]
    assert [step for step, _ in videos] == [2 * BATCH, 4 * BATCH]  # the eval epochs
    assert (file.parent / "files" / videos[-1][1]).read_bytes() == Path(result.eval.replay_path).read_bytes()


def test_wandb_mode_is_offline_without_a_key_and_online_with_one(tmp_path, monkeypatch, caplog):
    from metta_rl.hooks.wandb_hook import effective_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    online = WandbConfig(enabled=True, mode="online")
    with caplog.at_level(logging.WARNING):
        assert effective_mode(online) == "offline"
    assert "logging offline" in caplog.text
    assert effective_mode(WandbConfig(mode="offline")) == "offline"
    assert effective_mode(WandbConfig(mode="disabled")) == "disabled"
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert effective_mode(online) == "online"  # `wandb login` wrote a key
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert effective_mode(online) == "online"


# ------------------------------------------------------------------------------ console
class _Clock:
    """Exact binary fractions only, so interval comparisons have no rounding surprises."""

    def __init__(self) -> None:
        self.now = 1024.0

    def perf_counter(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epochs(hook: ConsoleHook, clock: _Clock, n: int, dt: float, *, metrics=None) -> None:
    cfg = make_config()
    p = TrainingProgress(total_timesteps=n * BATCH)
    hook.on_train_start(progress=p, config=cfg, run_dir=None)
    for _ in range(n):
        clock.now += dt
        p = p.advance(agent_steps=BATCH, episodes=1, wall_seconds=dt)
        hook.on_epoch_end(progress=p, metrics=metrics or {"agent_step": p.agent_step})


def test_console_rate_limits_reports(monkeypatch):
    from metta_rl.hooks import console

    clock = _Clock()
    monkeypatch.setattr(console, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    # Plain: 100 epochs of 1/8 s with a 1 s interval -> the first, one a second, the last.
    plain = ConsoleHook(mode="auto", interval_s=1.0, stream=io.StringIO())
    assert plain.mode == "plain"
    _epochs(plain, clock, 100, 0.125)
    lines = [line for line in plain.stream.getvalue().splitlines() if line.startswith("epoch=")]
    parsed = [parse_line(line) for line in lines]
    assert [int(p["epoch"]) for p in parsed] == [*range(1, 100, 8), 100]
    assert plain.reports == len(lines)
    # 64 steps every 1/8 s: 512 steps a second, measured over a sliding window.
    assert {p["sps"] for p in parsed} == {"512"}
    assert parsed[0]["eta"] == "0:00:12" and parsed[-1]["eta"] == "0:00:00"  # 99 * 64 / 512 = 12.4 s
    # Live dashboard asked to report every epoch: 2 s of 1/16 s epochs, at most
    # MAX_REDRAWS_PER_S redraws a second (every 4th epoch) plus the final one.
    live = ConsoleHook(mode="auto", interval_s=0.0, stream=_Tty())
    assert live.mode == "rich"
    _epochs(live, clock, 32, 0.0625)
    live.close()
    assert MAX_REDRAWS_PER_S == 4 and live.reports == 2 * MAX_REDRAWS_PER_S + 1


def test_live_dashboard_shows_every_section(monkeypatch):
    from metta_rl.hooks import console

    monkeypatch.setenv("COLUMNS", "160")
    clock = _Clock()
    monkeypatch.setattr(console, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    stream = _Tty()
    hook = ConsoleHook(mode="rich", interval_s=0.0, stream=stream)
    metrics = {
        "overview/episode_return": 42.5,
        "losses/policy_loss": -0.0123,
        "losses/entropy": 0.69,
        "timing/env": 0.5,
        "timing/inference": 0.2,
        "timing/update": 0.25,
        "timing/other": 0.05,
        "system/cpu_percent": 180.0,
        "system/rss_mb": 2048.0,
        "env/score": 3.25,
        "eval/mean_return": 77.0,
    }
    _epochs(hook, clock, 3, 1.0, metrics=metrics)
    hook.close()
    out = stream.getvalue()
    for text in ("SPS", "64", "ETA", "uptime", "epoch 3", "policy_loss", "-0.0123", "50%", "CPU", "180%", "2.0 GB",
                 "score", "3.25", "eval return", "77", "42.5"):
        assert text in out, text


def test_live_table_renders_under_a_pseudo_terminal(tmp_path):
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    env.pop("NO_COLOR", None)
    cmd = [
        sys.executable,
        str(REPO / "tools" / "train.py"),
        "env=cartpole",
        "run=pty",
        f"runs_dir={tmp_path}",
        "trainer.total_timesteps=3072",
        "evaluation.num_episodes=2",
        "logging.log_interval_s=0",
    ]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    out = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in out  # a live display, not plain lines
    assert "epoch=" not in out
    for text in ("metta_rl  epoch 12", "3,072 / 3,072", "SPS", "ETA", "time split", "policy_loss", "CPU", "RAM", "━"):
        assert text in out, (text, out[-3000:])
    assert "done: run=pty" in out
    assert (tmp_path / "pty" / "learning_curve.png").exists()


# ------------------------------------------------------------------------------ monitor units
def test_system_monitor_counts_busy_cpu_and_worker_memory():
    monitor = SystemMonitorHook(rescan_children_s=0.0)
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    busy = monitor.sample()
    assert busy["system/cpu_percent"] > 40, busy
    base_rss = busy["system/rss_mb"]
    # An env worker holding ~200 MB and spinning: its memory and CPU count towards the run.
    code = (
        "import time\n"
        "b = bytearray(200 * 2**20)\n"
        "b[::4096] = b'x' * len(b[::4096])\n"  # touch every page: resident, not just reserved
        "print('ready', flush=True)\n"
        "t = time.time() + 30\n"
        "while time.time() < t: pass\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        monitor.sample()  # finds the worker and starts its CPU clock
        time.sleep(0.3)
        with_worker = monitor.sample()
    finally:
        child.kill()
        child.wait()
    assert with_worker["system/rss_mb"] - base_rss > 150, (base_rss, with_worker)
    assert with_worker["system/cpu_percent"] > 40, with_worker
    assert not any(k.startswith("system/gpu") for k in with_worker)  # no CUDA in use here
    after = monitor.sample()
    assert after["system/rss_mb"] < with_worker["system/rss_mb"] - 150  # the exited worker is dropped


def test_gpu_memory_is_reported_once_cuda_is_in_use(monkeypatch):
    from metta_rl.hooks import monitor

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda, "mem_get_info", lambda: (6 * 2**30, 8 * 2**30))
    monkeypatch.setattr(cuda, "memory_allocated", lambda: 512 * 2**20)
    monkeypatch.setattr(cuda, "memory_reserved", lambda: 1024 * 2**20)
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda: 768 * 2**20)
    assert monitor.gpu_memory() == {
        "system/gpu_memory_allocated_mb": 512.0,
        "system/gpu_memory_reserved_mb": 1024.0,
        "system/gpu_max_memory_allocated_mb": 768.0,
        "system/gpu_memory_used_percent": 25.0,
    }
    assert "system/gpu_memory_reserved_mb" in SystemMonitorHook().sample()
    monkeypatch.setattr(cuda, "is_initialized", lambda: False)  # CUDA present but unused: no context made
    assert monitor.gpu_memory() == {}


def test_heartbeat_statuses(tmp_path):
    hb = HeartbeatHook(tmp_path / "heartbeat")
    p = TrainingProgress(agent_step=10, epoch=2, total_timesteps=100)
    hb.on_train_start(progress=p)
    first = (tmp_path / "heartbeat").stat().st_mtime_ns
    time.sleep(0.01)
    hb.on_failure(progress=p)
    beat = json.loads((tmp_path / "heartbeat").read_text())
    assert beat["status"] == "failed" and beat["epoch"] == 2 and beat["agent_step"] == 10
    assert (tmp_path / "heartbeat").stat().st_mtime_ns > first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heartbeat"]  # no temp file left


def test_profiler_resumed_inside_the_range_and_ended_early(tmp_path):
    hook = ProfilerHook(out_dir=tmp_path / "profile", epochs=[2, 10])
    x = torch.randn(32, 32)
    # Resumed at epoch 3, inside [2, 10); the step budget ends the run after epoch 4.
    p = TrainingProgress(epoch=3, agent_step=3, total_timesteps=5)
    hook.on_train_start(progress=p)
    for _ in range(2):
        x = x @ x.T / 32
        p = p.advance(agent_steps=1, episodes=0, wall_seconds=0.0)
        hook.on_epoch_end(progress=p)
    assert p.done and hook.profiler is None  # the trace is written with the last epoch
    hook.on_train_end()
    names = {e.get("name") for e in json.loads(hook.trace_path.read_text())["traceEvents"]}
    assert {"epoch 3", "epoch 4"} <= names and "epoch 5" not in names and "aten::mm" in names
    hook.close()  # nothing left to write; no error


# ------------------------------------------------------------------------------ learning curve
def test_learning_curve_skips_missing_values_and_a_torn_last_line(tmp_path):
    rows = [
        {"agent_step": 100, "overview/episode_return": None},
        {"agent_step": 200, "overview/episode_return": 20.0},
        {"agent_step": 300, "overview/episode_return": 35.0, "eval/mean_return": 50.0, "eval/std_return": 5.0},
        {"agent_step": 400, "overview/episode_return": 80.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"agent_step": 500, "overv')
    curves = read_curves(path)
    assert curves == {"train": [(200, 20.0), (300, 35.0), (400, 80.0)], "eval": [(300, 50.0, 5.0)]}
    fig = plot_learning_curve(path, title="t")
    assert fig.axes[0].get_title() == "t"
    assert LearningCurveHook(tmp_path).write() == tmp_path / "learning_curve.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert plot_learning_curve(empty).axes[0].texts[0].get_text() == "no finished episodes yet"
    assert LearningCurveHook(tmp_path / "nothing").write() is None


# ------------------------------------------------------------------------------ registration
def test_default_hooks_follow_the_config(tmp_path, monkeypatch, caplog):
    from metta_rl.hooks import tensorboard_hook
    from metta_rl.hooks.tensorboard_hook import TensorBoardHook
    from metta_rl.hooks.wandb_hook import WandbHook

    run_dir = RunDirectory(tmp_path / "run")
    names = lambda hooks: [type(h).__name__ for h in hooks]
    quiet = make_config(logging={"console": "off", "system_monitor": False, "heartbeat": False})
    # metrics.jsonl is not a hook's: the Trainer writes it (an error would disable a hook).
    assert names(default_hooks(quiet, run_dir)) == ["LearningCurveHook"]
    everything = make_config(
        logging={"console": "plain", "profile_epochs": [0, 1]},
        wandb={"enabled": True},
        tensorboard={"enabled": True},
    )
    hooks = default_hooks(everything, run_dir)
    assert [type(h) for h in hooks] == [
        SystemMonitorHook,
        ProfilerHook,
        ConsoleHook,
        HeartbeatHook,
        TensorBoardHook,
        WandbHook,
        LearningCurveHook,
    ]
    assert "ConsoleHook" not in names(default_hooks(everything, run_dir, console=False))
    disabled = make_config(wandb={"enabled": True, "mode": "disabled"})
    assert "WandbHook" not in names(default_hooks(disabled, run_dir))
    monkeypatch.setattr(tensorboard_hook, "tensorboard_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert "TensorBoardHook" not in names(default_hooks(everything, run_dir))
    assert "pip install 'metta_rl[tensorboard]'" in caplog.text


def test_config_hook_specs_are_built_and_their_metrics_recorded(tmp_path):
    cfg = make_config(
        trainer={"total_timesteps": 2 * BATCH},
        evaluation={"enabled": False},
        hooks=["tests.test_logging_hooks:CustomMetric"],
    )
    png = tmp_path / "run" / "learning_curve.png"
    with Trainer(cfg, run_dir=tmp_path / "run", console=False) as trainer:
        trainer.train()
        written = png.stat().st_mtime_ns
    assert [m["custom/epoch_sq"] for m in read_metrics(tmp_path / "run")] == [1.0, 4.0]
    assert png.stat().st_mtime_ns == written  # plotted once, at train end, not again at cleanup


def test_learning_curve_is_written_at_cleanup_after_step_wise_training(tmp_path):
    png = tmp_path / "run" / "learning_curve.png"
    with Trainer(make_config(evaluation={"enabled": False}), run_dir=tmp_path / "run", console=False) as trainer:
        trainer.train_epoch()
        trainer.train_epoch()
        assert not png.exists()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_heartbeat_and_system_samples_are_at_most_one_per_interval(tmp_path, monkeypatch):
    """With monitor_interval_s the epoch ends between two refreshes leave the heartbeat file
    alone and repeat the last system sample; train end always writes the final beat."""
    from metta_rl.core.progress import TrainingProgress

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    path = tmp_path / "heartbeat"
    beat = HeartbeatHook(path, interval_s=1.0)
    progress = TrainingProgress(total_timesteps=10)
    beat.on_train_start(progress=progress)
    assert json.loads(path.read_text())["status"] == "running"
    path.write_text("marker")  # a rewrite would replace it
    clock[0] += 0.5
    beat.on_epoch_end(progress=progress)
    assert path.read_text() == "marker"
    clock[0] += 0.6
    beat.on_epoch_end(progress=progress)
    assert json.loads(path.read_text())["status"] == "running"
    path.write_text("marker")
    clock[0] += 0.1
    beat.on_train_end(progress=progress)
    assert json.loads(path.read_text())["status"] == "finished"

    monitor = SystemMonitorHook(interval_s=1.0)
    calls = []
    real = monitor.sample
    monkeypatch.setattr(monitor, "sample", lambda: calls.append(1) or real())
    a = monitor.custom_metrics(report=None)
    clock[0] += 0.5
    assert monitor.custom_metrics(report=None) is a and len(calls) == 1
    clock[0] += 0.6
    monitor.custom_metrics(report=None)
    assert len(calls) == 2
