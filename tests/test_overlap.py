"""trainer.overlap_rollout: the next batch is collected in a background thread with the weights
from before the update, into a second buffer. Checked here: the background batch is the
behaviour policy's (its stored values and log-probs replay with the old weights, not the
updated ones), it goes on from the step the env already acted on (the carried column and
recurrent state), no agent step is lost or counted twice, a failure in the thread reaches the
caller, and a run stops with nothing left running."""

from __future__ import annotations

import copy
import sys
import threading

import numpy as np
import pytest
import torch

from metta_rl.core.progress import TrainingProgress
from metta_rl.trainer import Trainer
from tests.integration_utils import make_config
from tests.test_rollout import HORIZON, LSTM_POLICY, check_episode_boundaries, replay_matches_buffer

torch.set_num_threads(1)


def overlap_config(evaluation=None, **trainer):
    return make_config(
        policy=LSTM_POLICY,
        trainer={"batch_size": 4 * HORIZON, "minibatch_size": 2 * HORIZON, "update_epochs": 2,
                 "overlap_rollout": True, **trainer},
        evaluation=evaluation or {"enabled": False},
    )


def test_background_batch_is_the_behaviour_policys_and_continues_the_last(tmp_path):
    with Trainer(overlap_config(), run_dir=tmp_path / "ov", console=False) as trainer:
        rm, policy = trainer.rollout, trainer.policy
        rm.collect(policy, trainer.progress)
        first = rm.buffer
        last_obs = first.obs[:, HORIZON].clone()
        carried_state = tuple(s.clone() for s in first.next_state0)
        before = copy.deepcopy(policy)

        default_interval = sys.getswitchinterval()
        rm.start_next(policy, trainer.progress)
        assert sys.getswitchinterval() < default_interval  # quick GIL hand-offs while it runs
        with torch.no_grad():  # the "update": weights move while the thread collects
            for p in policy.parameters():
                p.add_(0.5 * torch.randn_like(p))
        rm.collect(policy, trainer.progress)
        assert sys.getswitchinterval() == default_interval
        second = rm.buffer

        assert second is not first  # two buffers: the trained one was never overwritten
        torch.testing.assert_close(second.obs[:, 0], last_obs, rtol=0, atol=0)
        torch.testing.assert_close(second.state0[0], carried_state[0], rtol=0, atol=0)
        torch.testing.assert_close(second.state0[1], carried_state[1], rtol=0, atol=0)
        check_episode_boundaries(second, first_epoch=False)
        replay_matches_buffer(before, second)  # collected with the weights before the update
        with pytest.raises(AssertionError):
            replay_matches_buffer(policy, second)


def test_overlapped_run_counts_every_step_once_and_learns_nothing_twice(tmp_path):
    steps = 6 * 4 * HORIZON
    with Trainer(overlap_config(total_timesteps=steps), run_dir=tmp_path / "run", console=False) as trainer:
        seen = []
        for _ in range(6):
            metrics = trainer.train_epoch()
            seen.append(trainer.rollout.buffer)
            assert np.isfinite(metrics["losses/policy_loss"])
        assert trainer.progress.agent_step == steps and trainer.progress.done
        # Epochs alternate between the two buffers; the last epoch started no collection.
        assert seen[0] is seen[2] is seen[4] and seen[1] is seen[3] is seen[5] and seen[0] is not seen[1]
        assert trainer.rollout._thread is None


def test_a_failure_in_the_background_collection_reaches_the_trainer(tmp_path):
    with Trainer(overlap_config(), run_dir=tmp_path / "fail", console=False) as trainer:
        trainer.train_epoch()
        env = trainer.rollout.env

        def broken(*args, **kwargs):
            raise RuntimeError("env worker 3 died")

        env.recv = broken
        trainer.train_epoch()  # this epoch's batch was collected before the env broke
        with pytest.raises(RuntimeError, match="env worker 3 died"):
            trainer.train_epoch()


def test_stopping_at_the_target_leaves_no_thread_running(tmp_path):
    cfg = overlap_config(
        total_timesteps=40 * 4 * HORIZON, target_return=1.0,
        evaluation={"enabled": True, "evaluate_interval": 2, "num_episodes": 2},
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "target", console=False)
    with trainer:
        result = trainer.train()
        assert result.summary["stop_reason"] == "target_return"
        pending = trainer.rollout._thread
        assert pending is not None  # the next batch was under way when the target was reached
    assert not pending.is_alive()  # cleanup waited for it
    assert not [t for t in threading.enumerate() if t.name == "metta_rl-rollout" and t.is_alive()]


def test_ctrl_c_during_an_overlapped_run_checkpoints_and_the_same_command_resumes_to_the_budget(tmp_path):
    import json
    import signal

    from metta_rl.records import checkpoint as ck
    from tests.test_faults import epochs_written, train_cli, wait_for

    run = tmp_path / "ov"
    args = ("env=cartpole", "run=ov", f"runs_dir={tmp_path}", "trainer.overlap_rollout=true",
            "trainer.total_timesteps=40960", "logging.console=plain", "logging.log_interval_s=0")
    proc = train_cli(*args)
    try:
        wait_for(lambda: proc.poll() is not None or epochs_written(run) >= 3, timeout=120)
        proc.send_signal(signal.SIGINT)  # a background collection is under way at every epoch
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped by SIGINT" in err
    stopped = ck.load_checkpoint(run)
    assert stopped.epoch >= 3 and str(stopped.path) in err
    again = train_cli(*args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "total_timesteps" and summary["agent_steps"] == 40960
    assert summary["resumed_from"] == str(stopped.path)
