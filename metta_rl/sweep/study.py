"""A sweep: an Optuna study over trainer runs, stored in the sweep folder, and its record.

    <runs_dir>/<sweep.name>/
      study.db          the Optuna study (sqlite; sweep.storage names another database)
      sweep.json        every trial (state, value, parameters, run folder) and the best one
      trial_0000/ ...   each trial's run folder (config.yaml, metrics.jsonl, summary.json, ...)

Optuna does the searching: its study (``load_if_exists``: running the command again continues
it), sampler, pruner and storage (with heartbeats, so a trial of a killed process is marked
failed once its heartbeat is stale). A trial that raises is recorded as failed and the sweep
goes on (``optimize(catch=...)``); a signal stops the sweep after writing the trial's checkpoint.

The study runs until ``sweep.trials`` trials are finished (complete, pruned or failed; an
interrupted one does not count), however many commands or processes that takes, so several
processes running the same command share the work.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.records.atomic import atomic_write
from metta_rl.sweep.config import SweepConfig
from metta_rl.sweep.trial import check_objective, compose_sweep, override, run_trial

HEARTBEAT_S = 30
GRACE_S = 120
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class Sweep:
    """One sweep command: the search, the base overrides, the folder."""

    sweep: SweepConfig
    overrides: list[str]
    base: TrainerConfig

    @property
    def dir(self) -> Path:
        return Path(self.base.runs_dir) / self.sweep.name

    @property
    def storage_url(self) -> str:
        return self.sweep.storage or f"sqlite:///{self.dir.resolve() / 'study.db'}"

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Before any trial: the objective fits the run config, every parameter names a config
        field and both ends of its range (every choice) make a valid config, and Optuna has
        the sampler and pruner named."""
        check_objective(self.sweep, self.base)
        base = self.base.to_dict()
        for name, spec in self.sweep.parameters.items():
            if _is_group(base, name):
                continue  # a config group choice: checked when a trial composes it
            for value in spec.bounds:
                try:
                    TrainerConfig.from_dict(_with(base, name, value))
                except ConfigError as exc:
                    raise ConfigError(f"sweep.parameters.{name}={value!r} does not make a valid run config: {exc}") from None
        self.sampler(0)
        self.pruner()

    def sampler(self, offset: int) -> Any:
        """The sampler, seeded with ``sweep.seed`` plus the trials the study already has, so a
        continued study draws new parameters rather than its first ones again."""
        return _optuna_object("samplers", self.sweep.sampler, "sampler", self.sweep.sampler_kwargs,
                              seed=self.sweep.seed + offset)

    def pruner(self) -> Any:
        return _optuna_object("pruners", self.sweep.pruner, "pruner", self.sweep.pruner_kwargs)

    # ------------------------------------------------------------------ the study
    def open_study(self) -> Any:
        import optuna

        self.dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5: stable enough here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                self.storage_url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
        study = optuna.create_study(
            storage=storage, study_name=self.sweep.name, direction=self.sweep.study_direction,
            pruner=self.pruner(), load_if_exists=True,
        )
        if study.direction.name.lower() != self.sweep.study_direction:
            raise ConfigError(
                f"sweep.objective={self.sweep.objective!r} is invalid here: the study {self.sweep.name!r} in "
                f"{self.storage_url} was made to {study.direction.name.lower()}; use another sweep.name"
            )
        study.sampler = self.sampler(len(study.trials))
        return study

    def run(self, *, out: TextIO) -> dict[str, Any]:
        """Check, then run trials until the study has ``sweep.trials`` finished ones; returns
        the record written to sweep.json."""
        import optuna

        self.check()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours
        study = self.open_study()
        left = self.sweep.trials - finished(study)
        if left > 0:
            print(f"sweep {self.sweep.name}: {left} more trial(s) of {self.sweep.trials} -> {self.dir}",
                  file=out, flush=True)

        def after_trial(study: Any, trial: Any) -> None:
            print(trial_line(trial), file=out, flush=True)
            self.write_record(study)
            if finished(study) >= self.sweep.trials:
                study.stop()  # other processes' trials count too

        if left > 0:
            study.optimize(
                lambda trial: run_trial(trial, self.sweep, self.overrides, self.dir),
                n_trials=left, catch=(Exception,), callbacks=[after_trial], gc_after_trial=True,
            )
        record = self.write_record(study)
        print(table(record), file=out, flush=True)
        return record

    # ------------------------------------------------------------------ the record
    def write_record(self, study: Any) -> dict[str, Any]:
        record = sweep_record(study, self.sweep, self.storage_url)
        atomic_write(self.dir / "sweep.json", _json(record))
        return record


def finished(study: Any) -> int:
    """Trials that count towards ``sweep.trials``: finished, and not stopped by a signal."""
    return sum(t.state.name in FINISHED and t.user_attrs.get("error") != "interrupted" for t in study.trials)


def sweep_record(study: Any, sweep: SweepConfig, storage: str) -> dict[str, Any]:
    trials = [_trial_record(t) for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    counts = {state.lower(): sum(t["state"] == state for t in trials) for state in (*FINISHED, "RUNNING")}
    return {
        "name": sweep.name,
        "storage": storage,
        "objective": sweep.objective,
        "direction": sweep.study_direction,
        "trials_wanted": sweep.trials,
        "counts": counts,
        "best": None if best is None else {
            "number": best.number, "value": best.value, "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
        },
        "trials": trials,
    }


def _trial_record(t: Any) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration is not None else None
    steps = sorted(t.intermediate_values)
    return {
        "number": t.number,
        "state": t.state.name,
        # Optuna gives a pruned trial its last report as its value: that is in last_report.
        "value": t.value if t.state.name == "COMPLETE" else None,
        "params": t.params,
        "run_dir": t.user_attrs.get("run_dir"),
        "agent_steps": t.user_attrs.get("agent_steps"),
        "stop_reason": t.user_attrs.get("stop_reason"),
        "best_eval_return": t.user_attrs.get("best_eval_mean_return"),
        "last_report": None if not steps else {"agent_step": steps[-1], "value": t.intermediate_values[steps[-1]]},
        "seconds": duration,
        "error": t.user_attrs.get("error"),
    }


# ---------------------------------------------------------------------------------- printing
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def trial_line(t: Any) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    seconds = t.duration.total_seconds() if t.duration is not None else math.nan
    what = f"value={_fmt(t.value)}" if t.state.name == "COMPLETE" else t.user_attrs.get("error") or ""
    steps = t.user_attrs.get("agent_steps")
    where = f" at {steps:,} steps" if isinstance(steps, int) else ""
    return f"trial {t.number} {t.state.name.lower()}{where} {what} ({params}) {seconds:.1f}s".replace("  ", " ")


def table(record: dict[str, Any]) -> str:
    """The trials as a plain-text table, then the best trial."""
    names = sorted({k for t in record["trials"] for k in t["params"]})
    header = ["trial", "state", "value", "agent_steps", "stop", *names, "seconds"]
    rows = [header] + [
        [str(t["number"]), t["state"].lower(), _fmt(t["value"]), _fmt(t["agent_steps"]), t["stop_reason"] or "-",
         *(_fmt(t["params"].get(n)) for n in names), "-" if t["seconds"] is None else f"{t['seconds']:.1f}"]
        for t in record["trials"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    best = record["best"]
    counts = ", ".join(f"{n} {s}" for s, n in record["counts"].items() if n)
    lines.append(f"{record['objective']} ({record['direction']}); trials: {counts or 'none'}")
    if best is None:
        lines.append("best: none yet (no complete trial)")
    else:
        params = " ".join(override(k, v) for k, v in best["params"].items())
        lines.append(f"best: trial {best['number']} value={_fmt(best['value'])} {params} ({best['run_dir']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- helpers
def _optuna_object(module: str, name: str, field: str, kwargs: dict[str, Any], **extra: Any) -> Any:
    import optuna

    namespace = getattr(optuna, module)
    cls = getattr(namespace, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(namespace) if n.endswith(field.capitalize()) and not n.startswith("_"))
        raise ConfigError(f"sweep.{field}={name!r} is invalid: expected one of optuna.{module}: {', '.join(known)}")
    try:
        return cls(**kwargs, **extra) if "seed" not in extra or _takes_seed(cls) else cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sweep.{field}_kwargs={kwargs!r} is invalid for optuna.{module}.{name}: {exc}") from None


def _takes_seed(cls: type) -> bool:
    import inspect

    return "seed" in inspect.signature(cls).parameters


def _is_group(base: dict[str, Any], name: str) -> bool:
    """A top-level section named whole (``policy``) is a config group choice, not a value."""
    return "." not in name and isinstance(base.get(name), dict)


def _with(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``data`` with ``dotted`` set to ``value``."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    out[head] = _with(out.get(head) if isinstance(out.get(head), dict) else {}, rest, value) if rest else value
    return out


def _json(record: dict[str, Any]) -> str:
    import json

    from metta_rl.records.run_dir import _jsonable

    return json.dumps(_jsonable(record), indent=2, default=str) + "\n"


def sweep_from_overrides(overrides: list[str]) -> Sweep:
    """Compose and validate the sweep once; the run config every trial starts from comes with it."""
    sweep, base = compose_sweep(overrides)
    return Sweep(sweep=sweep, overrides=list(overrides), base=base)
