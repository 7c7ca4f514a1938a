"""The declared config of a sweep: the ``sweep`` node of ``configs/sweep.yaml`` (a group in
``configs/sweep/``), validated like every other section (one :class:`ConfigError` line naming
``sweep.<field>``).

The search space nests like the run config it changes; a mapping with a ``type`` is one
parameter, named by its dotted path, and the same path is the override a trial gets::

    parameters:
      optimizer:
        learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      trainer:
        update_epochs: {type: int, low: 4, high: 20}
      policy: {type: categorical, choices: [mlp, lstm]}     # a config group choice

so ``sweep.parameters.optimizer.learning_rate.high=0.01`` works on the command line too.
Samplers and pruners are Optuna's own classes, named with their keyword arguments
(``pruner: MedianPruner``, ``pruner_kwargs: {n_warmup_steps: 10000}``); the sampler's seed is
``sweep.seed``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from metta_rl.config import Int, Str, _Config, _Invalid

OBJECTIVES = {"best_eval_return": "maximize", "steps_to_target": "minimize"}
Objective = Literal["best_eval_return", "steps_to_target"]


class ParamSpec(_Config):
    """One searched value: ``float``/``int`` between ``low`` and ``high`` (``log`` scale, or a
    ``step``), or one of ``choices``. Passed to ``trial.suggest_float/int/categorical``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _fits_type(self) -> ParamSpec:
        if self.type == "categorical":
            if self.choices is None:
                raise _Invalid("a non-empty list for a categorical parameter", field="choices", value=None)
            for name in ("low", "high", "step"):
                if getattr(self, name) is not None:
                    raise _Invalid("null for a categorical parameter (use choices)", field=name,
                                   value=getattr(self, name))
            if any(not isinstance(c, (type(None), bool, int, float, str)) for c in self.choices):
                raise _Invalid("null, booleans, numbers or strings (what Optuna stores)", field="choices",
                               value=self.choices)
            return self
        if self.choices is not None:
            raise _Invalid(f"null for a {self.type} parameter (use low and high)", field="choices", value=self.choices)
        if self.low is None or self.high is None:
            missing = "low" if self.low is None else "high"
            raise _Invalid(f"a number for a {self.type} parameter", field=missing, value=None)
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and not float(value).is_integer():
                    raise _Invalid("an integer for an int parameter", field=name, value=value)
        if self.low > self.high:
            raise _Invalid(f"at most {{p}}high={self.high:g}", field="low", value=self.low)
        if self.log and self.low <= 0:
            raise _Invalid("> 0 on a log scale", field="low", value=self.low)
        if self.log and self.step is not None:
            raise _Invalid("null on a log scale (Optuna takes one of log and step)", field="step", value=self.step)
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    @property
    def bounds(self) -> list[Any]:
        """The values a pre-flight check builds a config with: both ends, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameters -> ``{"optimizer.learning_rate": {...}}``: a mapping with a ``type`` is
    a parameter, any other mapping a level of the run config."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "type" not in value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class SweepConfig(_Config):
    """What a sweep searches and how.

    ``name``: the sweep folder under ``runs_dir`` (and the Optuna study's name); ``trials``:
    how many trials the study should have finished (complete, pruned or failed), counting
    those of earlier commands and other processes sharing the study; ``objective``:
    ``best_eval_return`` (the best evaluation of the run, maximized) or ``steps_to_target``
    (the agent steps until an evaluation reached ``trainer.target_return``, minimized; twice
    the step budget when none did); ``direction`` follows from the objective;
    ``storage``: an Optuna storage URL, by default ``sqlite:///<runs_dir>/<name>/study.db``.
    """

    section: ClassVar[str] = "sweep"

    name: Str = Field("sweep", min_length=1)
    trials: Int = Field(8, ge=1)
    objective: Objective = "best_eval_return"
    direction: Literal["maximize", "minimize"] | None = None
    seed: Int = Field(0, ge=0)
    sampler: Str = "TPESampler"
    sampler_kwargs: dict[str, Any] = Field(default_factory=dict)
    pruner: Str = "MedianPruner"
    pruner_kwargs: dict[str, Any] = Field(default_factory=dict)
    storage: Str | None = None
    parameters: dict[str, ParamSpec] = Field(default_factory=dict, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _flat_parameters(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
            data = {**data, "parameters": _flatten(data["parameters"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if "/" in self.name or self.name in (".", ".."):
            raise _Invalid("a folder name without '/'", field="name", value=self.name)
        natural = OBJECTIVES[self.objective]
        if self.direction is not None and self.direction != natural:
            raise _Invalid(f"{natural} for objective {self.objective} (or null)", field="direction",
                           value=self.direction)
        if "seed" in self.sampler_kwargs:
            raise _Invalid("no seed (sweep.seed seeds the sampler)", field="sampler_kwargs",
                           value=self.sampler_kwargs)
        return self

    @property
    def study_direction(self) -> str:
        return OBJECTIVES[self.objective]
