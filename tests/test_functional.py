"""metta_rl.functional: train() is the Trainer's setup/train/cleanup in one call, and the pure
building blocks are importable from one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metta_rl import Hook, Trainer, TrainerConfig, functional
from metta_rl.core import ppo
from metta_rl.config import ConfigError
from metta_rl.trainer import TrainResult
from tests.integration_utils import config_dict, make_config

torch.set_num_threads(1)

# Wall-clock and machine readings: the only values allowed to differ between two identical runs.
TIME_KEYS = ("wall_seconds", "sps", "overview/sps", "timing/", "time_split", "system/")


def deterministic_part(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(TIME_KEYS)}


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def cleanups(monkeypatch):
    """Every Trainer.cleanup() call, with the trainer and a copy of its final weights."""
    calls: list[tuple[Trainer, dict[str, torch.Tensor] | None]] = []
    original = Trainer.cleanup

    def recording_cleanup(self):
        weights = None if self.policy is None else {k: v.clone() for k, v in self.policy.state_dict().items()}
        calls.append((self, weights))
        original(self)

    monkeypatch.setattr(Trainer, "cleanup", recording_cleanup)
    return calls


class CloseRecorder(Hook):
    def __init__(self) -> None:
        self.closed = 0
        self.failures: list[BaseException] = []

    def on_failure(self, *, error):
        self.failures.append(error)

    def close(self) -> None:
        self.closed += 1


# ------------------------------------------------------------------------------ equivalence
def test_functional_train_equals_the_trainer_class(tmp_path, cleanups):
    cfg = make_config(trainer={"total_timesteps": 64 * 12}, evaluation={"evaluate_interval": 4})

    with Trainer(cfg, run_dir=tmp_path / "class", console=False) as trainer:
        class_result = trainer.train()
        class_weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    func_result = functional.train(cfg, run_dir=tmp_path / "functional", console=False)

    assert isinstance(func_result, TrainResult)
    func_trainer, func_weights = cleanups[-1]
    assert func_trainer.run_dir.path == tmp_path / "functional"
    assert func_trainer.env._closed  # cleanup ran

    # Same counters, same final metrics, same eval returns, same summary (timings aside).
    assert func_result.progress.agent_step == class_result.progress.agent_step == 64 * 12
    assert func_result.progress.epoch == class_result.progress.epoch == 12
    assert deterministic_part(func_result.metrics) == deterministic_part(class_result.metrics)
    assert func_result.eval.returns == class_result.eval.returns
    summary_a = deterministic_part(class_result.summary)
    summary_b = deterministic_part(func_result.summary)
    assert summary_a.pop("run") == "class" and summary_b.pop("run") == "functional"
    # Each run writes its own final checkpoint; only the path differs.
    ckpt_a, ckpt_b = Path(summary_a.pop("last_checkpoint")), Path(summary_b.pop("last_checkpoint"))
    assert ckpt_a.relative_to(tmp_path / "class") == ckpt_b.relative_to(tmp_path / "functional")
    assert summary_a == summary_b

    # Every epoch's record is the same, and so is every final weight, bit for bit.
    ma, mb = read_metrics(tmp_path / "class"), read_metrics(tmp_path / "functional")
    assert len(ma) == len(mb) == 12
    assert [deterministic_part(m) for m in ma] == [deterministic_part(m) for m in mb]
    assert class_weights.keys() == func_weights.keys()
    for name, value in class_weights.items():
        assert torch.equal(value, func_weights[name]), name
    # And the final checkpoints hold those same weights.
    saved_a = functional.load_checkpoint(tmp_path / "class").state["policy"]
    saved_b = functional.load_checkpoint(tmp_path / "functional").state["policy"]
    for name, value in class_weights.items():
        assert torch.equal(saved_a[name], value) and torch.equal(saved_b[name], value), name
    assert (tmp_path / "functional" / "config.yaml").read_text() == (tmp_path / "class" / "config.yaml").read_text()


def test_functional_train_passes_hooks(tmp_path):
    class Counter(Hook):
        def __init__(self) -> None:
            self.epochs: list[int] = []
            self.ended = False

        def on_epoch_end(self, *, progress):
            self.epochs.append(progress.epoch)

        def on_train_end(self, *, summary):
            self.ended = summary["epochs"] == 3

    hook = Counter()
    functional.train(make_config(trainer={"total_timesteps": 64 * 3}), run_dir=tmp_path / "run", hooks=[hook])
    assert hook.epochs == [1, 2, 3] and hook.ended


# ------------------------------------------------------------------------------ inputs
def test_plain_dict_config(tmp_path):
    data = config_dict(trainer={"total_timesteps": 64 * 2})
    result = functional.train(data, run_dir=tmp_path / "run")
    assert result.progress.agent_step == 128
    assert result.summary["eval_episodes"] == 2
    assert (tmp_path / "run" / "summary.json").exists()


def test_omegaconf_config_is_resolved(tmp_path):
    data = config_dict(trainer={"total_timesteps": 64 * 2})
    data["seed"] = 3
    data["run"] = "omega-s${seed}"  # an interpolation, resolved before validation
    data["runs_dir"] = str(tmp_path)
    result = functional.train(OmegaConf.create(data))
    assert result.summary["run"] == "omega-s3" and result.summary["seed"] == 3
    assert (tmp_path / "omega-s3" / "metrics.jsonl").exists()


def test_hydra_composed_config(tmp_path):
    from metta_rl import cli

    cfg = cli.compose(
        [
            "env=cartpole",
            "trainer.total_timesteps=512",
            "evaluation.num_episodes=2",
            "logging.console=off",
            "run=hydra",
            f"runs_dir={tmp_path}",
        ]
    )
    result = functional.train(cfg)
    assert result.progress.agent_step == 512
    assert (tmp_path / "hydra" / "summary.json").exists()


def test_bad_config_input(tmp_path):
    with pytest.raises(ConfigError, match="ppo.gama"):
        functional.train(config_dict(ppo={"gama": 0.9}), run_dir=tmp_path / "run")
    with pytest.raises(TypeError, match="TrainerConfig, a dict or an OmegaConf"):
        functional.train(["not", "a", "config"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_as_trainer_config_passes_a_trainer_config_through():
    cfg = make_config()
    assert functional.as_trainer_config(cfg) is cfg
    assert isinstance(functional.as_trainer_config(config_dict()), TrainerConfig)


# ------------------------------------------------------------------------------ cleanup
def test_cleanup_runs_when_a_hook_raises_a_base_exception(tmp_path, cleanups):
    class Interrupt(Hook):
        def on_epoch_end(self, *, progress):
            if progress.epoch == 2:
                raise KeyboardInterrupt  # not an Exception: HookList does not swallow it

    recorder = CloseRecorder()
    with pytest.raises(KeyboardInterrupt):
        functional.train(make_config(), run_dir=tmp_path / "run", hooks=[Interrupt(), recorder])
    assert len(cleanups) == 1
    trainer, _ = cleanups[0]
    assert trainer.progress.epoch == 2
    assert trainer.env._closed
    assert recorder.closed == 1
    assert len(recorder.failures) == 1 and isinstance(recorder.failures[0], KeyboardInterrupt)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_cleanup_runs_when_the_update_fails(tmp_path, cleanups, monkeypatch):
    from metta_rl.managers.training import TrainingManager

    original = TrainingManager.update
    calls = {"n": 0}

    def failing_update(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected update failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainingManager, "update", failing_update)
    recorder = CloseRecorder()
    with pytest.raises(RuntimeError, match="injected update failure"):
        functional.train(make_config(), run_dir=tmp_path / "run", hooks=[recorder])
    trainer, _ = cleanups[0]
    assert trainer.env._closed and trainer.evaluator is not None
    assert recorder.closed == 1 and isinstance(recorder.failures[0], RuntimeError)


def test_cleanup_runs_on_system_exit(tmp_path, cleanups):
    class Exit(Hook):
        def on_train_start(self):
            raise SystemExit(3)

    with pytest.raises(SystemExit):
        functional.train(make_config(), run_dir=tmp_path / "run", hooks=[Exit()])
    assert len(cleanups) == 1 and cleanups[0][0].env._closed


# ------------------------------------------------------------------------------ building blocks
def test_building_blocks_are_the_package_functions():
    assert functional.compute_advantages is ppo.compute_gae
    assert functional.ppo_loss is ppo.ppo_loss
    for name in ("compute_advantages", "ppo_loss", "train", "TrainResult"):
        assert name in functional.__all__


def test_compute_advantages_and_ppo_loss_by_hand():
    # One row, two steps, the second terminated: A1 = r1 - V1, A0 = r0 + g V1 - V0 + g l A1.
    rewards = torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])  # V(s2)=9 must be ignored: s1's action terminated
    terminated = torch.tensor([[0.0, 1.0]])
    truncated = torch.zeros(1, 2)
    adv, ret = functional.compute_advantages(rewards, values, terminated, truncated, gamma=0.5, gae_lambda=0.5)
    a1 = 1.0 - 0.25
    a0 = 1.0 + 0.5 * 0.25 - 0.5 + 0.25 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.25])

    # Ratio 1 everywhere: policy loss is -mean(A), KL and clip fraction are zero.
    logp = torch.log(torch.tensor([0.5, 0.25]))
    losses = functional.ppo_loss(
        new_logprob=logp,
        old_logprob=logp,
        advantages=adv[0],
        entropy=torch.tensor([0.7, 0.3]),
        new_values=torch.tensor([0.0, 0.0]),
        old_values=torch.tensor([0.0, 0.0]),
        returns=torch.tensor([1.0, 3.0]),
        clip_coef=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
    )
    assert losses.policy_loss.item() == pytest.approx(-(a0 + a1) / 2)
    assert losses.value_loss.item() == pytest.approx(0.5 * (1.0 + 9.0) / 2)
    assert losses.entropy.item() == pytest.approx(0.5)
    assert losses.approx_kl.item() == pytest.approx(0.0) and losses.clip_fraction.item() == 0.0


def test_own_loop_checkpoint_round_trip(tmp_path):
    """A user's own loop saves with save_checkpoint and gets the policy back from the run dir."""
    import dataclasses

    from metta_rl.records import checkpoint

    assert functional.save_checkpoint is checkpoint.save_checkpoint
    assert functional.load_checkpoint is checkpoint.load_checkpoint
    cfg = make_config()
    with Trainer(cfg, run_dir=tmp_path / "run", console=False) as trainer:
        trainer.train_epoch()
        weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        metadata = {"progress": dataclasses.asdict(trainer.progress), "config": cfg.to_dict()}
    target = tmp_path / "run" / "checkpoints" / "epoch_000001"
    state = {"policy": weights, "note": torch.tensor([1.0])}
    written = functional.save_checkpoint(target, state=state, metadata=metadata)
    assert written == target

    loaded = functional.load_checkpoint(tmp_path / "run")  # a run dir: its newest checkpoint
    assert isinstance(loaded, functional.Checkpoint)
    assert loaded.path == target.resolve() and loaded.progress.epoch == 1 and loaded.config == cfg
    assert torch.equal(loaded.state["note"], torch.tensor([1.0]))
    policy = functional.policy_from_checkpoint(loaded)
    for name, value in policy.state_dict().items():
        assert torch.equal(value, weights[name]), name

    (target / checkpoint.POLICY_FILE).write_bytes(b"garbage")
    with pytest.raises(functional.CheckpointError, match="policy.pt"):
        functional.load_checkpoint(target)
