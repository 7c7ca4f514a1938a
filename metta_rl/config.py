"""Declared configs for a training run: pydantic v2 models, validated when they are built.

Every field says its type and bounds (``Field(ge=...)``, ``Literal[...]``); rules that tie
fields together are ``model_validator``\\ s. Every model forbids unknown keys and validates
assignments, so a typo such as ``ppo.gama`` fails loudly instead of silently training with the
default, and ``config.ppo.gamma = 2`` is refused like ``ppo.gamma=2`` on the command line.

pydantic's multi-line ``ValidationError`` becomes one :class:`ConfigError` line in one place
(:func:`_config_error`), naming the field by its dotted path, the bad value and what is
allowed, e.g. ``ppo.gamma=1.5 is invalid: expected a number in [0, 1]`` or
``unknown config field 'ppo.gama' (did you mean 'ppo.gamma'?); allowed: gamma, ...``.

Types are strict, as a config file's author expects: an integer field takes an integer (or a
whole float such as ``4.0``, which YAML and JSON writers produce) and rejects ``1.5``, ``"4"``
and ``True``; a number field takes ints and floats (finite ones only); a boolean takes only a
boolean; a string field also takes a number (``run=123`` on the command line).

Building a config has no side effects: nothing is imported and nothing is installed-checked
here. Checks that need the runtime (is this Gymnasium id registered, does this module import,
is TensorBoard installed) are :func:`metta_rl.envs.checks.check_runtime`, run once at set-up.
This module imports nothing from ``metta_rl``.
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A config value is invalid. The message is one line naming the field."""


class _Invalid(ValueError):
    """Raised inside validators; :func:`_config_error` turns it into the one-line message.

    ``field`` is relative to the location that raised (a model's field name, a list index;
    None: the value being validated itself). ``allowed`` may name sibling fields as
    ``{p}name``; ``{p}`` becomes the model's dotted path, so the message reads the same for a
    nested and a direct build."""

    def __init__(self, allowed: str, *, field: str | int | None = None, value: Any = None) -> None:
        super().__init__(allowed)
        self.allowed = allowed
        self.field = field
        self.value = value


# ---------------------------------------------------------------------------------- types
def _integral(value: Any) -> Any:
    """``4.0`` -> ``4``: YAML/JSON writers and ``1e5`` on a command line give whole floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _number_to_str(value: Any) -> Any:
    """``run=123`` on the command line parses as an int; for a string field it is the text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _tuple_to_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


Int = Annotated[int, BeforeValidator(_integral)]
Str = Annotated[str, BeforeValidator(_number_to_str)]


def _list(item: Any) -> Any:
    """``list[item]`` that also takes a tuple (``betas=(0.9, 0.999)`` in Python)."""
    return Annotated[list[item], BeforeValidator(_tuple_to_list)]


_PositiveInts = _list(Annotated[int, BeforeValidator(_integral), Field(ge=1)])
_Fractions = _list(Annotated[float, Field(ge=0, lt=1)])
_IntList = _list(Int)
_StrList = _list(Str)
_AnyList = _list(Any)

_ConfigMeta = type(BaseModel)


class _BuildsWithConfigErrors(_ConfigMeta):  # type: ignore[misc,valid-type]
    """``PPOConfig(gamma=2)`` raises :class:`ConfigError`, not ``ValidationError``.

    On the metaclass, not ``__init__``: pydantic calls a model's own ``__init__`` for every
    nested section when one is defined, which would convert (and name) the error too early."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise _config_error(cls, exc) from None


class _Config(BaseModel, metaclass=_BuildsWithConfigErrors):
    """Base of every config section: strict, closed, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)
    # The section's dotted path when the model is built on its own (``PPOConfig`` -> "ppo").
    section: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        fields = type(self).model_fields
        if name not in fields:
            prefix = f"{self.section}." if self.section else ""
            raise ConfigError(_unknown_field(prefix, name, list(fields)))
        old = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # pydantic has already stored the value when a model-level rule rejects it.
            self.__dict__[name] = old
            raise _config_error(type(self), exc) from None

    def replace(self, **changes: Any) -> Any:
        """A validated copy with ``changes`` applied (``dataclasses.replace`` for these models)."""
        return type(self)(**{**{k: getattr(self, k) for k in type(self).model_fields}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (YAML- and JSON-safe for the built-in fields)."""
        return self.model_dump(mode="python")


# ---------------------------------------------------------------------------------- sections
EnvKind = Literal["gym", "pettingzoo", "mettagrid"]
ENV_KINDS: tuple[str, ...] = get_args(EnvKind)
# The names of metta_rl.envs.mettagrid_tasks.TASKS, kept here so that building a config
# imports no mettagrid (a test checks that the two agree).
METTAGRID_TASKS = ("navigation", "arena", "tiny")


class EnvConfig(_Config):
    """Which environment to train on.

    ``kind=gym``: ``id`` is a registered Gymnasium id (``CartPole-v1``), ``module:EnvId``
    (Gymnasium imports ``module``, which registers ``EnvId``), or ``module:callable`` returning
    a ``gymnasium.Env`` (called with ``kwargs``).
    ``kind=pettingzoo``: ``id`` is ``module:callable`` returning a PettingZoo ParallelEnv.
    ``kind=mettagrid``: ``id`` is a task of ``metta_rl.envs.mettagrid_tasks`` (``navigation``,
    ``arena``, ``tiny``) or ``module:callable`` returning a ``MettaGridConfig``; either is called
    with ``kwargs`` (the task's parameters, such as ``num_agents`` or ``max_steps``).

    ``tasks``: a curriculum, env configs of this one kind with one observation and action
    space (checked at set-up); each env draws its next task when it resets, with the
    probabilities of ``curriculum`` (``uniform``, or ``learning_progress``: see
    :class:`LearningProgressConfig`). A task may omit ``kind`` and ``id`` (this env's) and the
    ``kwargs`` it shares with this env. Episode stats are reported per task, under
    ``env/<task>/``; evaluation scores each task. PettingZoo envs have no curricula.

    Whether the id can be built is checked at set-up (:func:`metta_rl.envs.checks.check_runtime`),
    not here: that imports user modules.
    """

    section: ClassVar[str] = "env"

    name: Str = "cartpole"
    kind: EnvKind = "gym"
    id: Str = Field("CartPole-v1", min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    tasks: list[EnvConfig] = Field(default_factory=list)
    curriculum: Literal["uniform", "learning_progress"] = "uniform"
    learning_progress: LearningProgressConfig = Field(default_factory=lambda: LearningProgressConfig())

    @model_validator(mode="before")
    @classmethod
    def _tasks_inherit(cls, data: Any) -> Any:
        """A task omits what it shares with the env: ``kind`` and ``id`` (the env's), and the
        ``kwargs`` it does not change (merged, the task's win). Idempotent, so a dumped config
        validates to itself."""
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), (list, tuple)) or not data["tasks"]:
            return data
        data = dict(data)
        parent = {k: data[k] for k in ("kind", "id") if k in data}
        kwargs = data.get("kwargs") if isinstance(data.get("kwargs"), dict) else {}
        data["tasks"] = [
            {**parent, **t, "kwargs": {**kwargs, **(t.get("kwargs") or {})}} if isinstance(t, dict) else t
            for t in data["tasks"]
        ]
        return data

    @model_validator(mode="after")
    def _tasks_fit(self) -> EnvConfig:
        if self.curriculum != "uniform" and not self.tasks:
            raise _Invalid("uniform without {p}tasks (a curriculum draws among tasks)", field="curriculum",
                           value=self.curriculum)
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise _Invalid("tasks with distinct names", field="tasks", value=names)
        for i, name in enumerate(names):  # env/<task>/... beside the env's own env/game/...
            if "/" in name or name in ("game", "agent"):
                raise _Invalid("a name without '/', other than game and agent", field=f"tasks[{i}].name", value=name)
        if self.tasks and self.kind == "pettingzoo":
            raise _Invalid("gym or mettagrid with {p}tasks (no PettingZoo curricula)", field="kind", value=self.kind)
        for i, task in enumerate(self.tasks):
            if task.kind != self.kind:
                raise _Invalid(f"{self.kind!r} ({{p}}kind): a curriculum's tasks are of one kind",
                               field=f"tasks[{i}].kind", value=task.kind)
            if task.tasks:
                raise _Invalid("no tasks of its own (one level of tasks)", field=f"tasks[{i}].tasks",
                              value=[t.name for t in task.tasks])
        return self

    @model_validator(mode="after")
    def _id_fits_kind(self) -> EnvConfig:
        if self.kind == "mettagrid" and self.id not in METTAGRID_TASKS:
            module, _, attr = self.id.partition(":")
            if not module or not attr:
                raise _Invalid(
                    "a MettaGrid task, one of " + ", ".join(METTAGRID_TASKS)
                    + ", or 'module:callable' returning a MettaGridConfig",
                    field="id",
                    value=self.id,
                )
        if self.kind == "pettingzoo":
            module, _, attr = self.id.partition(":")
            if not module or not attr:
                raise _Invalid("'module:callable' for a PettingZoo env", field="id", value=self.id)
        return self


class LearningProgressConfig(_Config):
    """``env.curriculum=learning_progress`` (:mod:`metta_rl.core.curriculum`): per task a fast
    and a slow moving average of its episode return, moved once per epoch in which it finished
    episodes; tasks are drawn in proportion to their gap (scaled by the task's return range),
    with an ``explore`` share of draws uniform."""

    section: ClassVar[str] = "env.learning_progress"

    fast_rate: float = Field(0.1, gt=0, le=1)
    slow_rate: float = Field(0.02, gt=0, le=1)
    explore: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _slow_is_slower(self) -> LearningProgressConfig:
        if self.slow_rate >= self.fast_rate:
            raise _Invalid(f"less than {{p}}fast_rate={self.fast_rate}", field="slow_rate", value=self.slow_rate)
        return self


EnvConfig.model_rebuild()
_EnvList = _list(EnvConfig)


PolicyKind = Literal["auto", "mlp", "mettagrid", "token"]
POLICY_KINDS: tuple[str, ...] = get_args(PolicyKind)
LSTM_SIZES = {"mlp": 128, "mettagrid": 64}  # policy.lstm_hidden_size=null: the kind's default


class PolicyConfig(_Config):
    """Actor-critic network (orthogonal init).

    ``kind``: ``mlp`` flattens the observation into an MLP (``hidden_sizes``, ``activation``,
    ``shared_trunk``), with an LSTM core when ``lstm``; ``mettagrid`` scatters MettaGrid tokens
    into a grid for a CNN (``cnn_channels``, ``cnn_kernels``, ``cnn_strides``, then ``fc_size``)
    plus an encoder of the agent's own cell and the global tokens, and always has an LSTM core;
    ``token`` is mettagrid's feed-forward TokenPolicyNet (its own fixed sizes), for comparison;
    ``auto`` is ``mettagrid`` for ``env.kind=mettagrid`` and ``mlp`` otherwise.
    ``lstm_hidden_size`` sizes the LSTM core of both ``mlp`` and ``mettagrid``; null means each
    kind's default (:data:`LSTM_SIZES`: 128 for ``mlp``, 64 for ``mettagrid``, chosen by
    measurement on MettaGrid navigation).
    Whether the env has token observations is checked at set-up.
    """

    section: ClassVar[str] = "policy"

    kind: PolicyKind = "auto"
    hidden_sizes: _PositiveInts = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["tanh", "relu", "gelu"] = "tanh"
    shared_trunk: bool = False
    lstm: bool = False
    lstm_hidden_size: Int | None = Field(None, ge=1)
    cnn_channels: _PositiveInts = Field(default_factory=lambda: [32, 32], min_length=1)
    cnn_kernels: _PositiveInts = Field(default_factory=lambda: [5, 3], min_length=1)
    cnn_strides: _PositiveInts = Field(default_factory=lambda: [3, 1], min_length=1)
    fc_size: Int = Field(64, ge=1)

    @model_validator(mode="after")
    def _one_kernel_and_stride_per_conv(self) -> PolicyConfig:
        layers = len(self.cnn_channels)
        for name in ("cnn_kernels", "cnn_strides"):
            value = getattr(self, name)
            if len(value) != layers:
                raise _Invalid(
                    f"one entry per conv layer ({layers}, as {{p}}cnn_channels={self.cnn_channels})",
                    field=name,
                    value=value,
                )
        return self

    def lstm_size(self, kind: str) -> int:
        """The LSTM core's size for policy kind ``kind`` (``mlp`` or ``mettagrid``)."""
        return self.lstm_hidden_size if self.lstm_hidden_size is not None else LSTM_SIZES[kind]


class PPOConfig(_Config):
    """PPO loss and advantage estimation.

    ``vtrace_rho_clip`` and ``vtrace_c_clip`` (both or neither; unset: plain GAE): advantages
    whose TD errors and traces are clipped by the importance ratio of the current policy to the
    one that acted (V-trace, :func:`metta_rl.core.ppo.vtrace_advantages`), recomputed for each
    minibatch from its fresh log-ratios, as PufferLib 3 and Metta train. Minibatches are then
    whole agent rows (``trainer.minibatch_size`` a multiple of the rollout horizon).
    """

    section: ClassVar[str] = "ppo"

    gamma: float = Field(0.99, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_coef: float = Field(0.2, gt=0)
    clip_vloss: bool = False
    vf_clip_coef: float = Field(10.0, gt=0)
    vf_coef: float = Field(0.5, ge=0)
    ent_coef: float = Field(0.0, ge=0)
    norm_adv: bool = True
    target_kl: float | None = Field(None, gt=0)
    vtrace_rho_clip: float | None = Field(None, gt=0)
    vtrace_c_clip: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _vtrace_clips_together(self) -> PPOConfig:
        for name, other in (("vtrace_c_clip", "vtrace_rho_clip"), ("vtrace_rho_clip", "vtrace_c_clip")):
            if getattr(self, name) is None and getattr(self, other) is not None:
                raise _Invalid(f"a number > 0 with {{p}}{other} set (V-trace clips both ratios)",
                               field=name, value=None)
        return self

    @property
    def vtrace(self) -> bool:
        return self.vtrace_rho_clip is not None


LRSchedule = Literal["constant", "linear", "cosine"]
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)


class OptimizerConfig(_Config):
    """Optimizer, learning-rate schedule over agent steps, and grad-norm clipping."""

    section: ClassVar[str] = "optimizer"

    type: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(3e-4, gt=0)
    schedule: LRSchedule = "constant"
    min_lr_fraction: float = Field(0.0, ge=0, le=1)
    betas: _Fractions = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(0.5, gt=0)


VectorBackend = Literal["serial", "multiprocessing"]
VECTOR_BACKENDS: tuple[str, ...] = get_args(VectorBackend)


class VectorizationConfig(_Config):
    """How environments are vectorized (pufferlib.vector).

    ``batch_size`` (envs per policy step) below ``num_envs`` makes Multiprocessing
    asynchronous: the policy acts on one batch while the other steps. ``None`` means all envs.
    """

    section: ClassVar[str] = "vectorization"

    backend: VectorBackend = "serial"
    num_envs: Int = Field(8, ge=1)
    num_workers: Int = Field(1, ge=1)
    batch_size: Int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _workers_and_batches_divide(self) -> VectorizationConfig:
        if self.num_workers > self.num_envs:
            raise _Invalid(f"at most {{p}}num_envs={self.num_envs}", field="num_workers", value=self.num_workers)
        if self.num_envs % self.num_workers:
            raise _Invalid(
                f"a multiple of {{p}}num_workers={self.num_workers}", field="num_envs", value=self.num_envs
            )
        if self.batch_size is not None:
            envs_per_worker = self.num_envs // self.num_workers
            if self.num_envs % self.batch_size or self.batch_size % envs_per_worker:
                raise _Invalid(
                    f"a divisor of num_envs={self.num_envs} and a multiple of envs per worker ({envs_per_worker})",
                    field="batch_size",
                    value=self.batch_size,
                )
            if self.backend == "serial" and self.batch_size != self.num_envs:
                raise _Invalid(
                    f"{self.num_envs} (num_envs): the serial backend steps all envs together "
                    "(use backend=multiprocessing)",
                    field="batch_size",
                    value=self.batch_size,
                )
        return self

    @property
    def envs_per_batch(self) -> int:
        return self.batch_size or self.num_envs


class TrainingLoopConfig(_Config):
    """Sizes of the training loop, in agent steps.

    ``batch_size`` agent steps are collected per epoch; the rollout horizon is
    ``batch_size / agents per env batch``. The batch is cut into minibatches of
    ``minibatch_size`` and swept ``update_epochs`` times.

    ``target_return``: stop after the first evaluation whose mean return is at least this
    (Stable-Baselines3's ``StopTrainingOnRewardThreshold``); ``total_timesteps`` stays the cap.
    Needs periodic evaluation (``evaluation.enabled`` and ``evaluation.evaluate_interval > 0``,
    or ``evaluation.target_interval > 0``, the interval used while a target is set).

    ``torch_threads``: torch's intra-op threads (0: torch's default). ``update_threads``: threads
    for the PPO update only (0: as ``torch_threads``); the rollout, where one thread is best for
    small per-step batches, keeps ``torch_threads``. With the serial backend nothing else runs
    during the update, so a big policy's update can use every core.

    ``reuse_memory``: let the C library's malloc keep large freed blocks for the next update
    instead of returning them to the OS (glibc; :func:`metta_rl.core.device.keep_freed_memory`):
    fresh pages cost a quarter of a MettaGrid minibatch step on a 2-core CPU.

    ``overlap_rollout``: collect the next batch in a background thread, acting with the weights
    from before this update, while the update runs (off: collect, then update). On two or more
    cores the env and the update then each get one; the cost is one update of policy lag (the
    PPO ratio is always taken against the log-probs stored at collection). A batch collected
    when training stops (target, signal) is trained on by the next ``train()``, not dropped.

    Under torchrun (N ranks, :mod:`metta_rl.distributed`): ``batch_scope=global`` (the default)
    makes ``batch_size`` and ``minibatch_size`` totals over all ranks (each rank collects and
    trains on 1/N of them, which must divide), so a run means the same for any N;
    ``per_rank`` makes them each rank's, so the global batch is N x ``batch_size``.
    ``total_timesteps`` is always global agent steps. ``dist_timeout_s`` bounds every collective
    (a rank that hangs ends the run with an error).

    ``amp``: bf16 autocast of the policy's forward passes (rollout and update; the loss is
    computed in float32). ``compile``: ``torch.compile`` the policy's forward methods (the first
    epochs pay the compilation). Both off by default.

    ``prio_alpha`` and ``prio_beta0`` (both or neither; unset: uniform shuffled minibatches):
    prioritized segment sampling. Each minibatch is drawn, with replacement, from the agent rows
    (segments of one rollout horizon) with probability proportional to the row's mean
    |advantage| to the power ``prio_alpha``; each step's policy loss is weighted by
    ``(N * P) ** -beta``, with beta annealed linearly from ``prio_beta0`` to 1 over the run
    (:func:`metta_rl.core.ppo.segment_probabilities`, :func:`~metta_rl.core.ppo.importance_weights`).
    ``minibatch_size`` must then be a multiple of the rollout horizon.
    """

    section: ClassVar[str] = "trainer"

    total_timesteps: Int = Field(100_000, ge=1)
    batch_size: Int = Field(256, ge=1)
    minibatch_size: Int = Field(256, ge=1)
    update_epochs: Int = Field(4, ge=1)
    device: Str = "cpu"
    torch_threads: Int = Field(1, ge=0)
    update_threads: Int = Field(0, ge=0)
    overlap_rollout: bool = False
    reuse_memory: bool = True
    target_return: float | None = None
    batch_scope: Literal["global", "per_rank"] = "global"
    amp: bool = False
    compile: bool = False
    dist_timeout_s: float = Field(600.0, gt=0)
    prio_alpha: float | None = Field(None, ge=0)
    prio_beta0: float | None = Field(None, ge=0, le=1)

    @property
    def prioritized(self) -> bool:
        return self.prio_alpha is not None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not (value == "cpu" or value.startswith("cuda")):
            raise _Invalid("'cpu' or 'cuda[:N]'")
        return value

    @model_validator(mode="after")
    def _batches_fit(self) -> TrainingLoopConfig:
        if self.total_timesteps < self.batch_size:
            raise _Invalid(
                f"at least one batch ({{p}}batch_size={self.batch_size})",
                field="total_timesteps",
                value=self.total_timesteps,
            )
        if self.batch_size % self.minibatch_size:
            raise _Invalid(
                f"a multiple of {{p}}minibatch_size={self.minibatch_size}", field="batch_size", value=self.batch_size
            )
        for name, other in (("prio_beta0", "prio_alpha"), ("prio_alpha", "prio_beta0")):
            if getattr(self, name) is None and getattr(self, other) is not None:
                raise _Invalid(f"a number with {{p}}{other} set (prioritized sampling needs both)", field=name, value=None)
        if self.compile and self.overlap_rollout:
            # The background collection acts with a copy of the policy; a compiled forward is
            # bound to the original.
            raise _Invalid("false with {p}overlap_rollout=true", field="compile", value=self.compile)
        return self


class EvaluationConfig(_Config):
    """Evaluation on envs of its own, every ``evaluate_interval`` epochs (crossing) and at the end.

    ``target_interval``: while ``trainer.target_return`` is set, evaluate every this many epochs
    instead (0: ``evaluate_interval``). A run stops at the first evaluation that reaches its
    target, so checking often stops it soon after; the evaluations of the weak policies before
    that are cheap (their episodes are short).

    ``tasks`` lists the env configs to score (one score each); empty means the training env.
    ``replay=true`` writes an animated GIF of one eval episode to ``<run>/replays/``.
    """

    section: ClassVar[str] = "evaluation"

    enabled: bool = True
    num_episodes: Int = Field(20, ge=1)
    num_envs: Int = Field(4, ge=1)
    evaluate_interval: Int = Field(0, ge=0)
    target_interval: Int = Field(0, ge=0)
    deterministic: bool = True
    max_steps: Int = Field(1_000_000, ge=1)
    tasks: _EnvList = Field(default_factory=list)
    replay: bool = False
    replay_max_frames: Int = Field(500, ge=2)

    @model_validator(mode="after")
    def _task_names_unique(self) -> EvaluationConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise _Invalid("tasks with distinct names", field="tasks", value=names)
        for i, task in enumerate(self.tasks):
            if task.tasks:  # a training curriculum's tasks are scored one by one anyway
                raise _Invalid("no tasks (list each task to score here)", field=f"tasks[{i}].tasks",
                              value=[t.name for t in task.tasks])
        return self


class CheckpointConfig(_Config):
    """Checkpoint cadence and retention.

    A checkpoint is written every ``interval`` epochs (crossing semantics; 0: only at the end
    and on a signal). The newest ``keep_last`` are kept, plus the best by eval score when
    ``keep_best``.
    """

    section: ClassVar[str] = "checkpoint"

    interval: Int = Field(25, ge=0)
    keep_last: Int = Field(3, ge=1)
    keep_best: bool = True


class GuardConfig(_Config):
    """What happens when a loss or gradient is not finite.

    Such an optimizer step is skipped and counted. After ``max_nonfinite_steps`` skipped steps
    in a row the trainer restores the last good checkpoint and multiplies the learning rate by
    ``lr_backoff``; if that happens ``max_rollbacks`` times in a row, the run stops.
    """

    section: ClassVar[str] = "guard"

    max_nonfinite_steps: Int = Field(10, ge=1)
    lr_backoff: float = Field(0.5, gt=0, le=1)
    max_rollbacks: Int = Field(1, ge=0)


class WandbConfig(_Config):
    """Weights & Biases logging. Offline by default: this works with no network and no key."""

    section: ClassVar[str] = "wandb"

    enabled: bool = False
    project: Str = "metta_rl"
    entity: Str | None = None
    group: Str | None = None
    tags: _StrList = Field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] = "offline"
    log_checkpoints: bool = False


class TensorboardConfig(_Config):
    """TensorBoard scalars (the optional ``tensorboard`` extra), written to ``<run>/tensorboard``.

    Whether the extra is installed is checked at set-up, not here."""

    section: ClassVar[str] = "tensorboard"

    enabled: bool = False


class LoggingConfig(_Config):
    """Console output and run monitoring.

    ``console=auto`` uses a live table on a terminal, plain lines otherwise. ``heartbeat``
    rewrites ``<run>/heartbeat`` for external watchdogs, and ``system_monitor`` adds the
    ``system/*`` metrics (CPU, memory), each at the end of an epoch at most every
    ``monitor_interval_s`` seconds (0: every epoch; in between an epoch's row repeats the last
    sample): together they cost 0.4 ms, 2% of a CartPole epoch. ``profile_epochs=[a, b]``
    records a torch-profiler trace of epochs a..b-1 to ``<run>/profile/``.
    """

    section: ClassVar[str] = "logging"

    console: Literal["auto", "rich", "plain", "off"] = "auto"
    log_interval_s: float = Field(1.0, ge=0)
    system_monitor: bool = True
    heartbeat: bool = True
    monitor_interval_s: float = Field(1.0, ge=0)
    profile_epochs: _IntList | None = None

    @field_validator("profile_epochs")
    @classmethod
    def _epoch_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or not 0 <= value[0] < value[1]):
            raise _Invalid("[first, end) epochs with 0 <= first < end")
        return value


class TrainerConfig(_Config):
    """The whole run: what to train, how, and where records go."""

    seed: Int = Field(0, ge=0)
    run: Str | None = None
    runs_dir: Str = "runs"
    resume: Str = "auto"
    env: EnvConfig = Field(default_factory=EnvConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    trainer: TrainingLoopConfig = Field(default_factory=TrainingLoopConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    vectorization: VectorizationConfig = Field(default_factory=VectorizationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    tensorboard: TensorboardConfig = Field(default_factory=TensorboardConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # User hooks: "module:Class" or {"target": "module:Class", <constructor kwargs>}.
    hooks: _AnyList = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _null_sections_are_defaults(cls, data: Any) -> Any:
        """A section given as ``null`` (an empty YAML mapping) means all its defaults."""
        if isinstance(data, dict):
            return {k: {} if v is None and k in _SECTIONS else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _target_needs_evaluations(self) -> TrainerConfig:
        """A target is checked at evaluations: without periodic ones it could never stop a run."""
        target, ev = self.trainer.target_return, self.evaluation
        if target is not None and not (ev.enabled and (ev.evaluate_interval > 0 or ev.target_interval > 0)):
            why = "evaluation.enabled=false" if not ev.enabled else "evaluation.evaluate_interval=0"
            raise _Invalid(
                f"null when {why} (the target is checked at each evaluation: "
                "enable evaluation with evaluate_interval > 0 or target_interval > 0)",
                field="trainer.target_return",
                value=target,
            )
        return self

    @field_validator("run")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise _Invalid("a folder name without '/'")
        return value

    @field_validator("resume")
    @classmethod
    def _resume_given(cls, value: str) -> str:
        if not value:
            raise _Invalid("'auto', 'never' or a checkpoint path")
        return value

    @field_validator("hooks")
    @classmethod
    def _hook_specs(cls, value: list[Any]) -> list[Any]:
        for i, spec in enumerate(value):
            target = spec.get("target") if isinstance(spec, dict) else spec
            if not isinstance(target, str) or target.count(":") != 1:
                raise _Invalid(
                    "'module:Class' or a mapping with target: 'module:Class'", field=i, value=spec
                )
        return value

    @classmethod
    def from_dict(cls, data: Any) -> TrainerConfig:
        """Build and validate from a nested dict (Hydra's resolved config, a YAML file, a
        notebook literal); unknown keys are errors naming the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"config={data!r} is invalid: expected a mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(cls, exc) from None


# ---------------------------------------------------------------------------------- messages
def did_you_mean(key: str, allowed: list[str], prefix: str = "") -> str:
    """`` (did you mean 'ppo.gamma'?)`` for the closest allowed name, or nothing."""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _unknown_field(prefix: str, key: str, allowed: list[str]) -> str:
    return f"unknown config field '{prefix}{key}'{did_you_mean(key, allowed, prefix)}; allowed: {', '.join(allowed)}"


def _dotted(section: str, loc: tuple[Any, ...]) -> str:
    path = section
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _config_error(model: type[BaseModel], exc: ValidationError) -> ConfigError:
    """pydantic's ValidationError as one :class:`ConfigError` line about its first error
    (an unknown key first: a typo is the likeliest cause of everything else)."""
    errors = exc.errors(include_url=False)
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    section = getattr(model, "section", "")
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        parent = _annotation_at(model, loc[:-1])
        allowed = list(_model_of(parent).model_fields) if _model_of(parent) else []
        prefix = _dotted(section, loc[:-1])
        return ConfigError(_unknown_field(f"{prefix}." if prefix else "", str(loc[-1]), allowed))
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Invalid):
        has_field = cause.field is not None
        path = _dotted(section, loc + ((cause.field,) if has_field else ()))
        value = cause.value if has_field else error["input"]
        prefix = _dotted(section, loc)
        allowed = cause.allowed.replace("{p}", f"{prefix}." if prefix else "")
        return ConfigError(f"{path}={value!r} is invalid: expected {allowed}")
    expected = _describe(_annotation_at(model, loc)) or error["msg"].removeprefix("Input should be ")
    if error["type"] == "finite_number":
        expected = "a finite " + expected.removeprefix("a ")
    return ConfigError(f"{_dotted(section, loc) or 'config'}={error['input']!r} is invalid: expected {expected}")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _strip(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X, *meta]`` -> (X, constraints); FieldInfo metadata is flattened."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, metadata


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The declared type (with its constraints, as ``Annotated``) at an error location."""
    annotation: Any = model
    for part in loc:
        inner, _ = _strip(annotation)
        if _is_optional(inner):
            inner = _non_none(inner)
        inner, _ = _strip(inner)
        if isinstance(part, int) and get_origin(inner) is list:
            annotation = get_args(inner)[0]
        elif isinstance(part, str) and _model_of(inner) and part in _model_of(inner).model_fields:
            info = _model_of(inner).model_fields[part]
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        else:
            return None
    return annotation


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def _non_none(annotation: Any) -> Any:
    rest = [a for a in get_args(annotation) if a is not type(None)]
    return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds(metadata: list[Any]) -> str:
    """`` in [0, 1]``, `` > 0``, `` >= 1`` or nothing, from a field's constraints."""
    ge, gt, le, lt = (next((getattr(m, k) for m in metadata if isinstance(m, c)), None)
                      for k, c in (("ge", at.Ge), ("gt", at.Gt), ("le", at.Le), ("lt", at.Lt)))
    low = f"[{_num(ge)}" if ge is not None else f"({_num(gt)}" if gt is not None else None
    high = f"{_num(le)}]" if le is not None else f"{_num(lt)})" if lt is not None else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" >= {_num(ge)}" if ge is not None else f" > {_num(gt)}"
    if high:
        return f" <= {_num(le)}" if le is not None else f" < {_num(lt)}"
    return ""


def _describe(annotation: Any) -> str | None:
    """What a declared type allows, in words: ``a number in [0, 1]``, ``one of adam, adamw``."""
    if annotation is None:
        return None
    annotation, metadata = _strip(annotation)
    if _is_optional(annotation):
        inner = _describe(Annotated[(_non_none(annotation), *metadata)] if metadata else _non_none(annotation))
        return f"{inner} or null" if inner else None
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + _bounds(metadata)
    if annotation is float:
        return "a number" + _bounds(metadata)
    if annotation is str:
        non_empty = any(isinstance(m, at.MinLen) and m.min_length > 0 for m in metadata)
        return "a non-empty string" if non_empty else "a string"
    if get_origin(annotation) is list:
        min_len = next((m.min_length for m in metadata if isinstance(m, at.MinLen)), 0)
        max_len = next((m.max_length for m in metadata if isinstance(m, at.MaxLen)), None)
        if max_len is not None and max_len == min_len:
            size = f"a list of {min_len} items"
        elif min_len:
            size = "a non-empty list" if min_len == 1 else f"a list of at least {min_len} items"
        else:
            size = "a list"
        item = _describe(get_args(annotation)[0]) if get_args(annotation) else None
        return f"{size}, each {item}" if item and get_args(annotation)[0] is not Any else size
    if get_origin(annotation) is dict or annotation is dict or _model_of(annotation):
        return "a mapping"
    return None


_SECTIONS = frozenset(k for k, f in TrainerConfig.model_fields.items() if _model_of(f.annotation))
