"""tools/train.py as a user runs it: a subprocess in the repository root."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metta_rl import cli
from metta_rl.config import TrainerConfig
from tests.integration_utils import run_tool, snapshot

TINY = ["env=cartpole", "trainer.total_timesteps=2048", "evaluation.num_episodes=2", "run=tiny"]


def train(*args: str, runs_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_tool("train.py", *args, f"runs_dir={runs_dir}", timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("cli_runs")
    proc = train(*TINY, runs_dir=runs)
    return runs, proc


def test_tiny_run(tiny_run):
    runs, proc = tiny_run
    assert proc.returncode == 0, proc.stderr
    run = runs / "tiny"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    # stdout is a pipe, not a tty: plain log lines, no live table or escape codes.
    lines = proc.stdout.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch=")]
    assert epoch_lines, proc.stdout
    assert "\x1b[" not in proc.stdout
    assert any(line.startswith("epoch=8 step=2048/2048") for line in epoch_lines)
    assert lines[-1].startswith("done: ")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent_steps"] == 2048 and summary["epochs"] == 8
    assert summary["eval_episodes"] == 2 and summary["run"] == "tiny"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["agent_step"] for m in metrics] == [256 * k for k in range(1, 9)]
    assert "error" not in proc.stderr.lower()


def test_existing_run_is_refused_with_resume_never_and_left_unchanged(tiny_run):
    runs, first = tiny_run
    assert first.returncode == 0, first.stderr
    before = snapshot(runs)
    proc = train(*TINY, "resume=never", runs_dir=runs)
    assert proc.returncode != 0
    err = proc.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), proc.stderr
    assert "already holds a run" in err[0] and str(runs / "tiny") in err[0]
    assert snapshot(runs) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["env=nope"], ["env/nope", "cartpole"]),
        (["trainer.total_timesteps=-5"], ["trainer.total_timesteps=-5"]),
        (["nosuchgroup=x"], ["nosuchgroup"]),
        (["ppo.gama=0.9"], ["ppo.gama", "ppo.gamma"]),
    ],
    ids=["missing-env", "negative-steps", "unknown-key", "typo"],
)
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, args, expected):
    runs = tmp_path / "runs"
    proc = train(*args, "run=bad", runs_dir=runs)
    assert proc.returncode != 0
    err = proc.stderr.splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("error:")
    for token in expected:
        assert token in err[0], err[0]
    assert "Traceback" not in proc.stderr
    assert not runs.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    runs = tmp_path_factory.mktemp("cli_sweep")
    args = ["-m", "env=cartpole", "seed=0,1", "trainer.total_timesteps=512", "evaluation.num_episodes=1", "run=sweep"]
    return runs, train(*args, runs_dir=runs)


def test_multirun_trains_every_job(sweep):
    tmp_path, proc = sweep
    assert proc.returncode == 0, proc.stderr
    summaries = sorted((tmp_path / "sweep").rglob("summary.json"))
    assert len(summaries) == 2
    seeds = sorted(json.loads(p.read_text())["seed"] for p in summaries)
    assert seeds == [0, 1]
    for p in summaries:
        assert (p.parent / "config.yaml").exists() and (p.parent / "metrics.jsonl").exists()
        assert json.loads(p.read_text())["agent_steps"] == 512


def test_multirun_job_folders_are_direct_children_of_the_sweep(sweep):
    tmp_path, proc = sweep
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2
    for job in jobs:
        assert (job / "summary.json").exists(), sorted(str(p.relative_to(tmp_path)) for p in job.rglob("*"))


def test_same_command_again_resumes_and_says_from_where(tmp_path):
    args = ["env=cartpole", "trainer.total_timesteps=1024", "evaluation.num_episodes=2", "run=again",
            "checkpoint.interval=2"]
    first = train(*args, runs_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    second = train(*args[:1], "trainer.total_timesteps=2048", *args[2:], runs_dir=tmp_path)
    assert second.returncode == 0, second.stderr
    checkpoint = tmp_path / "again" / "checkpoints" / "epoch_000004"
    assert f"resumed from {checkpoint} at agent step 1,024 (epoch 4)" in second.stdout
    metrics = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [m["agent_step"] for m in metrics] == [256 * k for k in range(1, 9)]
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["agent_steps"] == 2048


def test_damaged_resume_path_is_one_line(tmp_path):
    bad = tmp_path / "nope"
    proc = train("env=cartpole", "run=x", f"resume={bad}", runs_dir=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: checkpoint path {bad} does not exist"]
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ composition (in-process)
def composed(*overrides: str) -> TrainerConfig:
    return cli.to_trainer_config(cli.compose(list(overrides)))


def test_schema_node_is_every_field_of_the_model_with_its_default():
    assert OmegaConf.to_container(cli.schema_node()) == TrainerConfig().to_dict()


def test_plain_composition_is_the_cartpole_group_over_the_defaults():
    cfg = composed()
    assert cfg.env.id == "CartPole-v1" and cfg.trainer.update_epochs == 20  # configs/env/cartpole.yaml
    assert cfg.policy.hidden_sizes == [64, 64] and not cfg.policy.lstm  # configs/policy/auto.yaml
    assert cfg.run.startswith("cartpole-s0-")


def test_dotted_overrides_of_every_kind_of_field():
    cfg = composed(
        "ppo.gamma=0.9",
        "trainer.total_timesteps=5000",
        "ppo.target_kl=0.02",  # default null
        "optimizer.max_grad_norm=null",
        "policy.hidden_sizes=[32,32]",
        "env.kwargs.max_episode_steps=50",  # a new key in a free-form dict
        "evaluation.tasks=[{name: acro, kind: gym, id: Acrobot-v1}]",
        "hooks=[tests.test_logging_hooks:CustomMetric]",
        "trainer.device=cuda:0",
        "wandb.tags=[a,b]",
        "run=123",  # parsed as an int; the field is a string
        "ppo.vf_coef=1",  # an int for a number field
    )
    assert cfg.ppo.gamma == 0.9 and cfg.trainer.total_timesteps == 5000 and cfg.ppo.target_kl == 0.02
    assert cfg.optimizer.max_grad_norm is None
    assert cfg.policy.hidden_sizes == [32, 32]
    assert cfg.env.kwargs == {"max_episode_steps": 50}
    assert [(t.name, t.id) for t in cfg.evaluation.tasks] == [("acro", "Acrobot-v1")]
    assert cfg.hooks == ["tests.test_logging_hooks:CustomMetric"]
    assert cfg.trainer.device == "cuda:0" and cfg.wandb.tags == ["a", "b"] and cfg.run == "123"
    assert cfg.ppo.vf_coef == 1.0 and isinstance(cfg.ppo.vf_coef, float)


def test_config_groups_and_their_free_form_kwargs():
    cfg = composed("env=mettagrid_navigation", "policy=lstm", "env.kwargs.num_agents=8")
    assert cfg.env.kind == "mettagrid" and cfg.env.id == "navigation"
    assert cfg.env.kwargs["num_agents"] == 8 and cfg.env.kwargs["max_steps"] == 200
    assert cfg.policy.lstm and cfg.policy.hidden_sizes == [64]
    assert composed("env=acrobot", "env.id=my_pkg.envs:MyEnv-v0").env.id == "my_pkg.envs:MyEnv-v0"


def preflight_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.preflight(list(argv))
    assert info.value.code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0].removeprefix("error: ")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["ppo.gama=0.9"], "unknown config field 'ppo.gama' (did you mean 'ppo.gamma'?); allowed: gamma, "),
        (["+ppo.gama=0.9"], "unknown config field 'ppo.gama' (did you mean 'ppo.gamma'?); allowed: gamma, "),
        (["foo=bar"], "unknown config field 'foo'"),
        (["env.nmae=x"], "unknown config field 'env.nmae' (did you mean 'env.name'?)"),
        (["env=nope"],
         "In 'train': Could not find 'env/nope' (available: acrobot, cartpole, mettagrid_arena, mettagrid_curriculum, mettagrid_navigation)"),
        (["trainer.total_timesteps=-5"], "trainer.total_timesteps=-5 is invalid: expected an integer >= 1"),
        (["trainer.total_timesteps=abc"], "trainer.total_timesteps='abc' is invalid: expected an integer >= 1"),
        (["ppo.norm_adv=1"], "ppo.norm_adv=1 is invalid: expected true or false"),
        (["-m", "seed=0,-1"], "seed=-1 is invalid: expected an integer >= 0"),  # every job of a sweep
        (["env.id=CartPoel-v1"], "env.id='CartPoel-v1' is invalid: expected a registered Gymnasium id"),
        (["env.id=no_such_module_abc:Env-v0"], "env.id='no_such_module_abc:Env-v0' is invalid: cannot import"),
        (["trainer.target_return=475", "evaluation.enabled=false"],
         "trainer.target_return=475.0 is invalid: expected null when evaluation.enabled=false"),
    ],
    ids=["typo", "typo-appended", "unknown-top", "unknown-nested", "missing-group", "negative", "not-int",
         "not-bool", "sweep-job", "gym-id", "user-module", "target-without-eval"],
)
def test_preflight_bad_input_is_one_line(capsys, argv, expected):
    assert preflight_error(capsys, *argv).startswith(expected)


def test_preflight_accepts_a_good_sweep(capsys):
    cli.preflight(["-m", "seed=0,1", "ppo.gamma=0.9,0.95", "env.kwargs.max_episode_steps=50"])
    assert capsys.readouterr().err == ""


def test_only_a_plain_command_line_skips_hydras_app():
    assert cli.plain_overrides(["env=cartpole", "seed=1", "+ppo.x=1", "~hooks"]) == [
        "env=cartpole", "seed=1", "+ppo.x=1", "~hooks"]
    for argv in (["-m", "seed=0,1"], ["--cfg", "job"], ["--help"], ["hydra.verbose=true"],
                 ["hydra/launcher=basic"], ["+hydra.job.chdir=true"]):
        assert cli.plain_overrides(argv) is None, argv


def test_a_plain_run_is_composed_and_validated_once_with_one_line_errors(capsys):
    cfg, config = cli.compose_run(["env=cartpole", "seed=3", "trainer.target_return=475"])
    assert config.seed == 3 and config.trainer.target_return == 475.0 and cfg.seed == 3
    with pytest.raises(SystemExit) as info:
        cli.compose_run(["ppo.gama=0.9"])
    assert info.value.code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert err == [err[0]] and err[0].startswith("error: unknown config field 'ppo.gama' (did you mean")


class _Exited(Exception):
    pass


@pytest.mark.parametrize("body, code", [(lambda: None, 0), (lambda: cli.fail("bad", 2), 2),
                                        (lambda: (_ for _ in ()).throw(SystemExit(130)), 130)])
def test_tools_exit_with_their_code_after_atexit_handlers_and_a_flush(monkeypatch, capsys, body, code):
    """tools/*.py end in cli.run_main: os._exit (no ~1 s teardown of torch), but only after
    what a normal exit does that matters: the atexit handlers and flushed stdout/stderr."""
    events = []

    def fake_exit(status):
        events.append(("exit", status))
        raise _Exited

    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: events.append(("atexit",)))
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.sys.stdout, "flush", lambda: events.append(("flush",)), raising=False)
    with pytest.raises(_Exited):
        cli.run_main(body)
    assert events == [("atexit",), ("flush",), ("exit", code)]
