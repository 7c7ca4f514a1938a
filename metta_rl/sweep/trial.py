"""One Optuna trial: a Trainer run in this process, its objective read from its summary.

A trial's config is composed exactly as ``tools/train.py`` composes one (``configs/sweep.yaml``:
train.yaml plus the sweep group), with the trial's parameters as overrides, into its own run
folder ``<sweep folder>/trial_<number>``. Each trial is a fresh Trainer in a ``with`` block, so
its envs, workers and hooks are closed however it ends, and set-up re-seeds every RNG: a
trial after a crashed one trains exactly as it would alone.

Evaluations reach Optuna while the trial runs (:class:`PruningHook`: ``trial.report`` and
``trial.should_prune`` after each one); a pruned trial stops after that epoch with a checkpoint
(:class:`~metta_rl.hooks.StopTraining`, ``stop_reason="pruned"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metta_rl import cli
from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.hooks import EpochReport, Hook, StopTraining
from metta_rl.signals import TrainingInterrupted
from metta_rl.sweep.config import SweepConfig


class SweepInterrupted(KeyboardInterrupt):
    """A signal stopped a trial (its checkpoint is written): the sweep stops too. A
    KeyboardInterrupt, so Optuna marks the trial failed and re-raises it rather than going on."""

    def __init__(self, interrupted: TrainingInterrupted, number: int) -> None:
        import signal

        super().__init__(
            f"{signal.Signals(interrupted.signum).name}: trial {number} stopped at agent step "
            f"{interrupted.agent_step:,} (recorded as failed; it does not count); run the same command "
            "again to continue the sweep"
        )
        self.exit_code = interrupted.exit_code


# ---------------------------------------------------------------------------------- objective
def intermediate_value(sweep: SweepConfig, config: TrainerConfig, mean_return: float) -> float:
    """What an evaluation reports to the pruner, better in the study's direction: the return
    (``best_eval_return``) or how far it is short of the target (``steps_to_target``)."""
    if sweep.objective == "steps_to_target":
        assert config.trainer.target_return is not None
        return max(0.0, config.trainer.target_return - mean_return)
    return mean_return


def objective_value(sweep: SweepConfig, summary: Mapping[str, Any]) -> float:
    """The trial's value, from its run's summary."""
    if sweep.objective == "steps_to_target":
        if summary["stop_reason"] == "target_return":
            return float(summary["agent_steps"])
        # Never reached: worse than any run that did, even on its last step.
        return 2.0 * float(summary["total_timesteps"])
    best = summary.get("best_eval_mean_return")
    if best is None or not math.isfinite(best):
        raise ValueError("the run has no evaluation score (best_eval_mean_return is missing)")
    return float(best)


def check_objective(sweep: SweepConfig, config: TrainerConfig) -> None:
    """Objectives read evaluations: the run config must make them."""
    if not config.evaluation.enabled:
        raise ConfigError(f"sweep.objective={sweep.objective!r} is invalid: expected evaluation.enabled=true "
                          "(the objective and the pruner read evaluations)")
    if sweep.objective == "steps_to_target" and config.trainer.target_return is None:
        raise ConfigError("sweep.objective='steps_to_target' is invalid: expected trainer.target_return "
                          "to be set (e.g. trainer.target_return=475)")


class PruningHook(Hook):
    """Reports each evaluation to the Optuna trial at its agent step; stops the run when the
    pruner says so."""

    def __init__(self, trial: Any, sweep: SweepConfig, config: TrainerConfig) -> None:
        self.trial, self.sweep, self.config = trial, sweep, config

    def on_epoch_end(self, *, report: EpochReport) -> None:
        if report.eval is None or not math.isfinite(report.eval.mean_return):
            return
        value = intermediate_value(self.sweep, self.config, report.eval.mean_return)
        self.trial.report(value, step=report.progress.agent_step)
        if self.trial.should_prune():
            raise StopTraining("pruned")


# ---------------------------------------------------------------------------------- one trial
def override(name: str, value: Any) -> str:
    """``name=value`` as Hydra's override grammar reads it back to the same value."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{name}={text}"


def trial_overrides(overrides: list[str], params: Mapping[str, Any], *, sweep_dir: Path, number: int) -> list[str]:
    """The command line's overrides, then the trial's parameters and its own run folder."""
    return [
        *overrides,
        *(override(name, value) for name, value in params.items()),
        override("runs_dir", str(sweep_dir)),
        override("run", f"trial_{number:04d}"),
        "resume=never",
    ]


def compose_sweep(overrides: list[str]) -> tuple[SweepConfig, TrainerConfig]:
    """``configs/sweep.yaml`` composed with ``overrides`` (as tools/train.py composes
    train.yaml) and validated: its ``sweep`` node is the search, the rest a run config."""
    from omegaconf import OmegaConf

    try:
        composed = cli.compose(overrides, config_name=cli.SWEEP_CONFIG_NAME)
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors: one line, as for tools/train.py
        raise ConfigError(cli.one_line(exc)) from None
    data = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    sweep = SweepConfig(**(data.pop("sweep", None) or {}))
    return sweep, TrainerConfig.from_dict(data)


def trial_config(overrides: list[str]) -> TrainerConfig:
    return compose_sweep(overrides)[1]


def run_trial(trial: Any, sweep: SweepConfig, overrides: list[str], sweep_dir: Path) -> float:
    """Suggest, train, score. Raises ``optuna.TrialPruned`` for a pruned run, the run's own
    error for a failed one (Optuna records it as failed), :class:`SweepInterrupted` on a signal."""
    import optuna
    from metta_rl.trainer import Trainer

    params = {name: spec.suggest(trial, name) for name, spec in sweep.parameters.items()}
    config = trial_config(trial_overrides(overrides, params, sweep_dir=sweep_dir, number=trial.number))
    run_dir = Path(config.runs_dir) / str(config.run)
    trial.set_user_attr("run_dir", str(run_dir))
    try:
        with Trainer(config, run_dir=run_dir, hooks=[PruningHook(trial, sweep, config)], console=False) as trainer:
            summary = trainer.train().summary
    except TrainingInterrupted as exc:
        trial.set_user_attr("error", "interrupted")
        raise SweepInterrupted(exc, trial.number) from None
    except Exception as exc:
        trial.set_user_attr("error", one_line(exc))
        raise
    summary = {**summary, "total_timesteps": config.trainer.total_timesteps}
    for key in ("agent_steps", "stop_reason", "best_eval_mean_return"):
        trial.set_user_attr(key, summary.get(key))
    if summary["stop_reason"] == "pruned":
        raise optuna.TrialPruned(f"pruned at agent step {summary['agent_steps']:,}")
    return objective_value(sweep, summary)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]
