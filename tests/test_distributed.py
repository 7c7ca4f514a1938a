"""Data-parallel training under torchrun (2 CPU ranks, gloo): identical weights after every
update, side effects on rank 0 only, resume, Ctrl-C, a failing rank, and learning.

The launches are real ``python -m torch.distributed.run --standalone`` ones (the same as
``torchrun``); ``tests/ddp_worker.py`` records what each rank holds after every epoch so the
ranks are compared, not assumed equal. The math of the global minibatch statistics is checked
without a process group, against the single-process functions on the whole batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.core.ppo import (
    explained_variance,
    explained_variance_from_moments,
    masked_moments,
    normalize_advantages,
    normalize_with_moments,
    shard_weights,
    weighted_mean,
)
from metta_rl.distributed import SINGLE, Distributed, global_batch, rank_batch
from metta_rl.managers.rollout import RolloutResult
from metta_rl.records import checkpoint as ckpt_files
from tests.integration_utils import REPO, config_dict

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        TORCHRUN + args, cwd=REPO, env={**_env(), **(extra_env or {})}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def run_worker(
    config: dict, run_prefix: Path, out: Path, timeout: float = 120, extra_env: dict[str, str] | None = None
) -> list[list[dict]]:
    """tests/ddp_worker.py on 2 ranks; returns each rank's records of this launch."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rank*.jsonl"):
        f.unlink()
    proc = launch(["tests/ddp_worker.py", json.dumps(config), str(run_prefix), str(out)], extra_env=extra_env)
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return [[json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)]


def ddp_config(**overrides) -> dict:
    """2 ranks x 4 CartPole envs x 16 steps = a global batch of 128, 4 minibatches of 32 (16 a
    rank), 4 update epochs with a KL early stop that fires in some updates and not in others."""
    base = config_dict(
        trainer={"total_timesteps": 128 * 5, "batch_size": 128, "minibatch_size": 32, "update_epochs": 4,
                 "dist_timeout_s": 60},
        ppo={"target_kl": 0.003},
        optimizer={"learning_rate": 0.01},
        evaluation={"num_episodes": 2, "num_envs": 2, "evaluate_interval": 2},
        checkpoint={"interval": 2},
    )
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def assert_ranks_agree(records: list[list[dict]], epochs: int) -> None:
    rank0, rank1 = records
    assert [r["epoch"] for r in rank0] == [r["epoch"] for r in rank1]
    assert len([r for r in rank0 if r["phase"] == "epoch"]) == epochs
    for a, b in zip(rank0, rank1):
        # The same weights, Adam moments, counters and stop decision after set-up and every update...
        assert (a["params"], a["adam"], a["agent_step"], a["stop"]) == (b["params"], b["adam"], b["agent_step"], b["stop"]), (a, b)
        # ...from different experience: each rank's envs are its own.
        if a["phase"] == "epoch":
            assert a["obs"] != b["obs"]
    params = [r["params"] for r in rank0]
    assert len(set(params)) == len(params), "the weights must move every update"


def test_two_ranks_keep_identical_weights_and_only_rank_0_writes_then_resume(tmp_path):
    prefix = tmp_path / "run"
    records = run_worker(ddp_config(), prefix, tmp_path / "out1")
    assert_ranks_agree(records, epochs=5)
    assert [r["agent_step"] for r in records[0]] == [0, 128, 256, 384, 512, 640]  # global steps
    # Rank 1 was given its own run folder and wrote nothing there: rank 0's is the run's.
    assert not (tmp_path / "run1").exists()
    run = tmp_path / "run0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["agent_step"] for r in rows] == [128, 256, 384, 512, 640]  # one row an epoch, not one a rank
    assert {r["losses/update_epochs"] for r in rows} != {4.0}, "the KL early stop should fire in some updates"
    assert "eval/mean_return" in rows[1]
    names = sorted(p.name for p in (run / "checkpoints").glob("epoch_*"))
    assert names == ["epoch_000002", "epoch_000004", "epoch_000005"]
    last = ckpt_files.load_checkpoint(run / "checkpoints" / "epoch_000005")
    assert last.progress.agent_step == 640

    # Resume with 2 ranks and a larger budget: every rank starts from that checkpoint.
    records = run_worker(ddp_config(trainer={"total_timesteps": 128 * 8}), prefix, tmp_path / "out2")
    assert_ranks_agree(records, epochs=3)
    setup = records[0][0]
    assert (setup["epoch"], setup["agent_step"]) == (5, 640)
    flat = torch.cat([p.reshape(-1) for p in last.state["policy"].values()])
    assert setup["params"] == hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["agent_step"] for r in rows] == [128 * k for k in range(1, 9)]
    assert not (tmp_path / "run1").exists()


def test_recurrent_policy_two_ranks_identical_weights(tmp_path):
    """LSTM: minibatches are whole agent rows, replayed from their saved state on each rank."""
    config = ddp_config(policy={"hidden_sizes": [16], "lstm": True, "lstm_hidden_size": 16},
                        trainer={"total_timesteps": 128 * 3, "minibatch_size": 64},
                        evaluation={"evaluate_interval": 0})
    records = run_worker(config, tmp_path / "run", tmp_path / "out")
    assert_ranks_agree(records, epochs=3)


def test_a_nan_on_one_rank_rolls_back_every_rank_alike(tmp_path):
    """Rank 1's loss is NaN for one epoch: the averaged gradient is NaN on both ranks, both skip
    those steps, both roll back to rank 0's checkpoint at the same step, and go on identical."""
    config = ddp_config(trainer={"total_timesteps": 128 * 6, "update_epochs": 1}, ppo={"target_kl": None},
                        checkpoint={"interval": 1}, guard={"max_nonfinite_steps": 3, "max_rollbacks": 1},
                        evaluation={"evaluate_interval": 0})
    records = run_worker(config, tmp_path / "run", tmp_path / "out", extra_env={"DDP_TEST_NAN": "1:3"})
    rank0, rank1 = records
    assert [(a["params"], a["adam"]) for a in rank0] == [(b["params"], b["adam"]) for b in rank1]
    rows = [json.loads(line) for line in (tmp_path / "run0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["losses/skipped_steps"] for r in rows] == [0, 0, 0, 4, 0, 0]
    assert [r["losses/rollbacks"] for r in rows] == [0, 0, 0, 1, 1, 1]
    # Restored: the weights after the NaN epoch are those of the epoch-3 checkpoint.
    assert rank0[4]["params"] == rank0[3]["params"] and rank0[5]["params"] != rank0[4]["params"]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _train_args(run_dir: Path, *extra: str) -> list[str]:
    return [
        "tools/train.py", "env=cartpole", "policy.hidden_sizes=[16]", "vectorization.num_envs=4",
        "trainer.batch_size=128", "trainer.minibatch_size=64", "trainer.update_epochs=2",
        "trainer.dist_timeout_s=60", "evaluation.num_episodes=2", "evaluation.num_envs=2",
        "logging.console=off", f"runs_dir={run_dir.parent}", f"run={run_dir.name}", *extra,
    ]


def test_ctrl_c_to_the_launcher_stops_every_rank_with_one_checkpoint(tmp_path):
    run = tmp_path / "cc"
    proc = launch(_train_args(run, "trainer.total_timesteps=10000000", "checkpoint.interval=0"))
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        workers = _descendants(proc.pid)
        assert len([p for p in workers if "train.py" in " ".join(p.cmdline())]) == 2
        before = sorted(p.name for p in (run / "checkpoints").glob("epoch_*"))
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not _alive(workers), "every rank (and its env workers) must exit"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted"
    after = sorted(p.name for p in (run / "checkpoints").glob("epoch_*"))
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0] == f"epoch_{summary['epochs']:06d}", (before, after)
    # Only rank 0 (which wrote the checkpoint) says so; both ranks stopped after the same epoch.
    assert stderr.count("stopped by SIGINT") == 1, stderr[-3000:]
    rows = metrics.read_text().splitlines()
    assert json.loads(rows[-1])["epoch"] == summary["epochs"]


def test_a_failing_rank_ends_every_rank_with_a_message_naming_it(tmp_path):
    run = tmp_path / "fail"
    env = "env.id=tests.envs_for_tests:cartpole_failing_on_rank"
    proc = launch(_train_args(run, env, "+env.kwargs.rank=1", "+env.kwargs.at_step=100",
                              "trainer.total_timesteps=100000"))
    try:
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "error: rank 1/2: env 'cartpole'" in stderr and "fails on rank 1" in stderr, stderr[-3000:]
    assert "error: rank 0/2" not in stderr or "another rank failed" in stderr
    assert not _alive(_descendants(proc.pid))


def test_two_rank_cartpole_solves_it_with_the_configured_agent_steps(tmp_path):
    """RL Zoo's CartPole settings with the same global batch (2 ranks x 4 envs x 32 steps = 256):
    it reaches an eval return >= 475 and trains exactly the configured agent steps."""
    run = tmp_path / "solve"
    args = ["tools/train.py", "env=cartpole", "seed=0", "vectorization.num_envs=4", "trainer.total_timesteps=51200",
            "evaluation.evaluate_interval=25", "logging.console=off", f"runs_dir={tmp_path}", "run=solve"]
    proc = launch(args)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent_steps"] == 51200 and summary["stop_reason"] == "total_timesteps"
    assert summary["best_eval_mean_return"] >= 475, summary


# ---------------------------------------------------------------------- without a process group
def test_global_minibatch_statistics_from_shards_equal_the_whole_batch():
    torch.manual_seed(0)
    adv = torch.randn(2, 40) * 3 + 1
    valid = (torch.rand(2, 40) > 0.3).float()  # the shards hold different numbers of valid steps
    moments = masked_moments(adv[0], valid[0]) + masked_moments(adv[1], valid[1])
    whole = normalize_advantages(adv.reshape(-1), valid.reshape(-1))
    sharded = torch.cat([normalize_with_moments(adv[r], moments) for r in range(2)])
    assert torch.allclose(sharded, whole, atol=1e-5)
    # Averaging the shards' weighted sums (what averaging gradients does) is the whole mean.
    x = torch.randn(2, 40)
    per_shard = [weighted_mean(x[r], shard_weights(valid[r], moments[0], 2, x.dtype)) for r in range(2)]
    whole_mean = (x * valid).sum() / valid.sum()
    assert torch.allclose(sum(per_shard) / 2, whole_mean, atol=1e-6)
    values, returns = torch.randn(2, 40), torch.randn(2, 40)
    ret_m = masked_moments(returns[0], valid[0]) + masked_moments(returns[1], valid[1])
    err_m = masked_moments(returns[0] - values[0], valid[0]) + masked_moments(returns[1] - values[1], valid[1])
    ev = explained_variance(values.reshape(-1), returns.reshape(-1), valid.reshape(-1))
    assert explained_variance_from_moments(ret_m, err_m) == pytest.approx(ev, abs=1e-5)


def test_rollouts_combine_counts_and_episodes_of_every_rank():
    a = RolloutResult(agent_steps=64, episode_returns=[1.0], episode_lengths=[3], env_info={"x": [1.0]},
                      env_seconds=0.5, inference_seconds=0.25)
    b = RolloutResult(agent_steps=64, episode_returns=[2.0, 4.0], episode_lengths=[5, 7], env_info={"x": [3.0]})
    both = RolloutResult.combined([a, b], local=a)
    assert (both.agent_steps, both.episode_returns, both.episode_lengths) == (128, [1.0, 2.0, 4.0], [3, 5, 7])
    assert both.env_info == {"x": [1.0, 3.0]} and (both.env_seconds, both.inference_seconds) == (0.5, 0.25)


def test_batch_scope_global_splits_the_batch_and_per_rank_multiplies_it():
    loop = TrainerConfig.from_dict(config_dict(trainer={"batch_size": 128, "minibatch_size": 32})).trainer
    assert rank_batch(loop, 1) == (128, 32) and rank_batch(loop, 2) == (64, 16) and global_batch(loop, 2) == 128
    per_rank = loop.replace(batch_scope="per_rank")
    assert rank_batch(per_rank, 2) == (128, 32) and global_batch(per_rank, 2) == 256
    with pytest.raises(ConfigError, match=r"trainer.batch_size=128 is invalid: with trainer.batch_scope=global .* 3 ranks"):
        rank_batch(loop, 3)


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    d = Distributed.from_env(device_type="cpu", timeout_s=5)
    assert d is SINGLE and not d.enabled and d.is_main
    t = torch.ones(3)
    assert d.mean_(t) is t and torch.equal(t, torch.ones(3)) and d.broadcast_object({"a": 1}) == {"a": 1}
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------- the GPU path's switches, on the CPU
def _three_epochs(tmp_path, name: str, **trainer) -> dict:
    from metta_rl.trainer import Trainer
    from tests.integration_utils import make_config

    cfg = make_config(trainer={"total_timesteps": 64 * 3, **trainer}, policy={"hidden_sizes": [16], "lstm": True},
                      evaluation={"enabled": False})
    with Trainer(cfg, run_dir=tmp_path / name, console=False) as t:
        before = t.optimizer.flat.detach().clone()
        metrics = [t.train_epoch() for _ in range(3)][-1]
        assert not torch.equal(before, t.optimizer.flat) and t.optimizer.weights_finite()
    return metrics


def test_amp_is_bf16_autocast_and_still_trains(tmp_path):
    plain = _three_epochs(tmp_path, "fp32")
    amp = _three_epochs(tmp_path, "amp", amp=True)
    assert all(torch.isfinite(torch.tensor(amp[k])) for k in ("losses/policy_loss", "losses/value_loss"))
    # bf16 matmuls: close to the float32 run, but not the same numbers (autocast is on).
    assert amp["losses/value_loss"] != plain["losses/value_loss"]
    assert amp["losses/value_loss"] == pytest.approx(plain["losses/value_loss"], rel=0.05)


def test_compile_traces_the_forward_methods_and_trains_the_same(tmp_path, monkeypatch):
    """torch.compile through dynamo (with its eager backend here: inductor's code generation takes
    minutes on 2 cores) on forward_step and forward_sequence gives the uncompiled run's numbers."""
    from metta_rl.core import device

    compiled = []
    real = torch.compile

    def eager_compile(fn, **kwargs):
        compiled.append(fn.__name__)
        return real(fn, backend="eager", **kwargs)

    monkeypatch.setattr(device.torch, "compile", eager_compile)
    plain = _three_epochs(tmp_path, "plain")
    with_compile = _three_epochs(tmp_path, "compiled", compile=True)
    assert compiled == ["forward_step", "forward_sequence"]
    for key in ("losses/policy_loss", "losses/value_loss", "losses/approx_kl"):
        assert with_compile[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-7), key


def test_ranks_with_different_configs_are_refused_naming_the_keys():
    class TwoRanks(Distributed):
        def all_gather_object(self, obj):  # what rank 1 would send: another seed and lr
            theirs = {**obj[1], "seed": 7, "optimizer": {**obj[1]["optimizer"], "learning_rate": 0.5}}
            return [obj, ("/elsewhere", theirs)]

    config = TrainerConfig.from_dict(config_dict()).to_dict()
    d = TwoRanks(rank=0, world_size=2)
    with pytest.raises(ConfigError, match=r"rank 1's config differs from rank 0's in optimizer.learning_rate, seed"):
        d.agree_on_run("/runs/a", config)

    class SameConfig(Distributed):
        def all_gather_object(self, obj):  # rank 1's run name (a start time in it) differs: fine
            return [("/runs/a", obj[1]), obj]

    # Rank 1 (its run name, with a start time in it, differs) takes rank 0's run folder.
    assert SameConfig(rank=1, world_size=2).agree_on_run("/runs/b", {**config, "run": "b"}) == "/runs/a"
