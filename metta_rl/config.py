"""Dataclass configs for a training run, validated when they are built.

Every config class checks its own fields in ``__post_init__`` and raises :class:`ConfigError`
with one line that names the field, the bad value and what is allowed. ``TrainerConfig.from_dict``
builds the whole tree from a plain dict (Hydra's resolved config, a YAML file, a notebook
literal) and rejects unknown keys by name, so a typo such as ``ppo.gama`` fails loudly instead
of silently training with the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value is invalid. The message is one line naming the field."""


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field_name}={value!r} is invalid: expected {allowed}")


def _check_choice(field_name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(field_name, value, "one of " + ", ".join(choices))


def _check_positive(field_name: str, value: Any, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field_name, value, "a number")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        _fail(field_name, value, "a number >= 0" if allow_zero else "a number > 0")


def _check_int(field_name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(field_name, value, f"an integer >= {minimum}")


ENV_KINDS = ("gym", "pettingzoo", "mettagrid")


@dataclass
class EnvConfig:
    """Which environment to train on.

    ``kind=gym``: ``id`` is any registered Gymnasium id (``CartPole-v1``).
    ``kind=pettingzoo``: ``id`` is ``module:callable`` returning a PettingZoo ParallelEnv.
    ``kind=mettagrid``: ``id`` is a MettaGrid preset (``default``); ``kwargs`` override
    ``game`` fields such as ``num_agents`` or ``max_steps``.
    """

    name: str = "cartpole"
    kind: str = "gym"
    id: str = "CartPole-v1"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("env.kind", self.kind, ENV_KINDS)
        if not isinstance(self.id, str) or not self.id:
            _fail("env.id", self.id, "a non-empty string")
        # Imported lazily: the env registry imports gymnasium, which configs need not pay for.
        from metta_rl.envs.factories import check_env_id

        check_env_id(self.kind, self.id)


@dataclass
class PolicyConfig:
    """Actor-critic network. MLP encoder (orthogonal init), optional LSTM core."""

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    shared_trunk: bool = False
    lstm: bool = False
    lstm_hidden_size: int = 128

    def __post_init__(self) -> None:
        if not self.hidden_sizes or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden_sizes
        ):
            _fail("policy.hidden_sizes", self.hidden_sizes, "a non-empty list of integers >= 1")
        _check_choice("policy.activation", self.activation, ("tanh", "relu", "gelu"))
        _check_int("policy.lstm_hidden_size", self.lstm_hidden_size, minimum=1)


@dataclass
class PPOConfig:
    """PPO loss and advantage estimation."""

    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = False
    vf_clip_coef: float = 10.0
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    norm_adv: bool = True
    target_kl: float | None = None

    def __post_init__(self) -> None:
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                _fail(f"ppo.{name}", value, "a number in [0, 1]")
        _check_positive("ppo.clip_coef", self.clip_coef)
        _check_positive("ppo.vf_clip_coef", self.vf_clip_coef)
        _check_positive("ppo.vf_coef", self.vf_coef, allow_zero=True)
        _check_positive("ppo.ent_coef", self.ent_coef, allow_zero=True)
        if self.target_kl is not None:
            _check_positive("ppo.target_kl", self.target_kl)


LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class OptimizerConfig:
    """Optimizer, learning-rate schedule over agent steps, and grad-norm clipping."""

    type: str = "adam"
    learning_rate: float = 3e-4
    schedule: str = "constant"
    min_lr_fraction: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 0.5

    def __post_init__(self) -> None:
        _check_choice("optimizer.type", self.type, ("adam", "adamw"))
        _check_choice("optimizer.schedule", self.schedule, LR_SCHEDULES)
        _check_positive("optimizer.learning_rate", self.learning_rate)
        if not 0 <= self.min_lr_fraction <= 1:
            _fail("optimizer.min_lr_fraction", self.min_lr_fraction, "a number in [0, 1]")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail("optimizer.betas", self.betas, "two numbers in [0, 1)")
        _check_positive("optimizer.eps", self.eps)
        _check_positive("optimizer.weight_decay", self.weight_decay, allow_zero=True)
        if self.max_grad_norm is not None:
            _check_positive("optimizer.max_grad_norm", self.max_grad_norm)


VECTOR_BACKENDS = ("serial", "multiprocessing")


@dataclass
class VectorizationConfig:
    """How environments are vectorized (pufferlib.vector).

    ``batch_size`` (envs per policy step) below ``num_envs`` makes Multiprocessing
    asynchronous: the policy acts on one batch while the other steps. ``None`` means all envs.
    """

    backend: str = "serial"
    num_envs: int = 8
    num_workers: int = 1
    batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_choice("vectorization.backend", self.backend, VECTOR_BACKENDS)
        _check_int("vectorization.num_envs", self.num_envs, minimum=1)
        _check_int("vectorization.num_workers", self.num_workers, minimum=1)
        if self.num_workers > self.num_envs:
            raise ConfigError(
                f"vectorization.num_workers={self.num_workers} is invalid: expected at most "
                f"vectorization.num_envs={self.num_envs}"
            )
        if self.num_envs % self.num_workers:
            raise ConfigError(
                f"vectorization.num_envs={self.num_envs} is invalid: expected a multiple of "
                f"vectorization.num_workers={self.num_workers}"
            )
        if self.batch_size is not None:
            _check_int("vectorization.batch_size", self.batch_size, minimum=1)
            envs_per_worker = self.num_envs // self.num_workers
            if self.num_envs % self.batch_size or self.batch_size % envs_per_worker:
                raise ConfigError(
                    f"vectorization.batch_size={self.batch_size} is invalid: expected a divisor of "
                    f"num_envs={self.num_envs} and a multiple of envs per worker ({envs_per_worker})"
                )
            if self.backend == "serial" and self.batch_size != self.num_envs:
                raise ConfigError(
                    f"vectorization.batch_size={self.batch_size} is invalid: the serial backend "
                    f"steps all {self.num_envs} envs together (use backend=multiprocessing)"
                )

    @property
    def envs_per_batch(self) -> int:
        return self.batch_size or self.num_envs


@dataclass
class TrainingLoopConfig:
    """Sizes of the training loop, in agent steps.

    ``batch_size`` agent steps are collected per epoch; the rollout horizon is
    ``batch_size / agents per env batch``. The batch is cut into minibatches of
    ``minibatch_size`` and swept ``update_epochs`` times.
    """

    total_timesteps: int = 100_000
    batch_size: int = 256
    minibatch_size: int = 256
    update_epochs: int = 4
    device: str = "cpu"
    torch_threads: int = 1

    def __post_init__(self) -> None:
        _check_int("trainer.total_timesteps", self.total_timesteps, minimum=1)
        _check_int("trainer.batch_size", self.batch_size, minimum=1)
        _check_int("trainer.minibatch_size", self.minibatch_size, minimum=1)
        _check_int("trainer.update_epochs", self.update_epochs, minimum=1)
        _check_int("trainer.torch_threads", self.torch_threads, minimum=0)
        if self.total_timesteps < self.batch_size:
            raise ConfigError(
                f"trainer.total_timesteps={self.total_timesteps} is invalid: expected at least one batch "
                f"(trainer.batch_size={self.batch_size})"
            )
        if self.batch_size % self.minibatch_size:
            raise ConfigError(
                f"trainer.batch_size={self.batch_size} is invalid: expected a multiple of "
                f"trainer.minibatch_size={self.minibatch_size}"
            )
        if not isinstance(self.device, str) or not (
            self.device == "cpu" or self.device.startswith("cuda")
        ):
            _fail("trainer.device", self.device, "'cpu' or 'cuda[:N]'")


@dataclass
class EvaluationConfig:
    """Evaluation on envs of its own, every ``evaluate_interval`` epochs (crossing) and at the end.

    ``tasks`` lists the env configs to score (one score each); empty means the training env.
    ``replay=true`` writes an animated GIF of one eval episode to ``<run>/replays/``.
    """

    enabled: bool = True
    num_episodes: int = 20
    num_envs: int = 4
    evaluate_interval: int = 0
    deterministic: bool = True
    max_steps: int = 1_000_000
    tasks: list[EnvConfig] = field(default_factory=list)
    replay: bool = False
    replay_max_frames: int = 500

    def __post_init__(self) -> None:
        _check_int("evaluation.num_episodes", self.num_episodes, minimum=1)
        _check_int("evaluation.num_envs", self.num_envs, minimum=1)
        _check_int("evaluation.evaluate_interval", self.evaluate_interval, minimum=0)
        _check_int("evaluation.max_steps", self.max_steps, minimum=1)
        _check_int("evaluation.replay_max_frames", self.replay_max_frames, minimum=2)
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            _fail("evaluation.tasks", names, "tasks with distinct names")


@dataclass
class CheckpointConfig:
    """Checkpoint cadence and retention.

    A checkpoint is written every ``interval`` epochs (crossing semantics; 0: only at the end
    and on a signal). The newest ``keep_last`` are kept, plus the best by eval score when
    ``keep_best``.
    """

    interval: int = 25
    keep_last: int = 3
    keep_best: bool = True

    def __post_init__(self) -> None:
        _check_int("checkpoint.interval", self.interval, minimum=0)
        _check_int("checkpoint.keep_last", self.keep_last, minimum=1)


@dataclass
class GuardConfig:
    """What happens when a loss or gradient is not finite.

    Such an optimizer step is skipped and counted. After ``max_nonfinite_steps`` skipped steps
    in a row the trainer restores the last good checkpoint and multiplies the learning rate by
    ``lr_backoff``; if that happens ``max_rollbacks`` times in a row, the run stops.
    """

    max_nonfinite_steps: int = 10
    lr_backoff: float = 0.5
    max_rollbacks: int = 1

    def __post_init__(self) -> None:
        _check_int("guard.max_nonfinite_steps", self.max_nonfinite_steps, minimum=1)
        if isinstance(self.lr_backoff, bool) or not isinstance(self.lr_backoff, (int, float)) or not 0 < self.lr_backoff <= 1:
            _fail("guard.lr_backoff", self.lr_backoff, "a number in (0, 1]")
        _check_int("guard.max_rollbacks", self.max_rollbacks, minimum=0)


@dataclass
class WandbConfig:
    """Weights & Biases logging. Offline by default: this works with no network and no key."""

    enabled: bool = False
    project: str = "metta_rl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"
    log_checkpoints: bool = False

    def __post_init__(self) -> None:
        _check_choice("wandb.mode", self.mode, ("online", "offline", "disabled"))


@dataclass
class TensorboardConfig:
    """TensorBoard scalars (the optional ``tensorboard`` extra), written to ``<run>/tensorboard``."""

    enabled: bool = False

    def __post_init__(self) -> None:
        import importlib.util

        if self.enabled and importlib.util.find_spec("tensorboard") is None:
            _fail("tensorboard.enabled", True, "false, or install the extra: pip install 'metta_rl[tensorboard]'")


@dataclass
class LoggingConfig:
    """Console output and run monitoring.

    ``console=auto`` uses a live table on a terminal, plain lines otherwise. ``heartbeat``
    touches ``<run>/heartbeat`` every epoch for external watchdogs. ``profile_epochs=[a, b]``
    records a torch-profiler trace of epochs a..b-1 to ``<run>/profile/``.
    """

    console: str = "auto"
    log_interval_s: float = 1.0
    system_monitor: bool = True
    heartbeat: bool = True
    profile_epochs: list[int] | None = None

    def __post_init__(self) -> None:
        _check_choice("logging.console", self.console, ("auto", "rich", "plain", "off"))
        _check_positive("logging.log_interval_s", self.log_interval_s, allow_zero=True)
        if self.profile_epochs is not None and (
            len(self.profile_epochs) != 2 or not 0 <= self.profile_epochs[0] < self.profile_epochs[1]
        ):
            _fail("logging.profile_epochs", self.profile_epochs, "[first, end) epochs with 0 <= first < end")


@dataclass
class TrainerConfig:
    """The whole run: what to train, how, and where records go."""

    seed: int = 0
    run: str | None = None
    runs_dir: str = "runs"
    resume: str = "auto"
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    trainer: TrainingLoopConfig = field(default_factory=TrainingLoopConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    vectorization: VectorizationConfig = field(default_factory=VectorizationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: TensorboardConfig = field(default_factory=TensorboardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # User hooks: "module:Class" or {"target": "module:Class", <constructor kwargs>}.
    hooks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, minimum=0)
        if self.run is not None and (not self.run or "/" in self.run or self.run in (".", "..")):
            _fail("run", self.run, "a folder name without '/'")
        if not isinstance(self.resume, str) or not self.resume:
            _fail("resume", self.resume, "'auto', 'never' or a checkpoint path")
        for i, spec in enumerate(self.hooks):
            target = spec.get("target") if isinstance(spec, dict) else spec
            if not isinstance(target, str) or target.count(":") != 1:
                _fail(f"hooks[{i}]", spec, "'module:Class' or a mapping with target: 'module:Class'")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        """Build and validate from a nested dict; unknown keys are errors naming the key."""
        return _build(cls, data, prefix="")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def did_you_mean(key: str, allowed: list[str], prefix: str = "") -> str:
    """`` (did you mean 'ppo.gamma'?)`` for the closest allowed name, or nothing."""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _build(cls: type, data: Any, prefix: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}={data!r} is invalid: expected a mapping")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config field '{prefix}{key}'{did_you_mean(str(key), list(fields), prefix)}; "
                f"allowed: {', '.join(fields)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value if value is not None else {}, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", hint, value)
    return cls(**kwargs)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Light type checking: ints stay ints, floats accept ints, lists stay lists."""
    origin = get_origin(hint)
    args = get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}=None is invalid: a value is required")
    if origin is not None and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value) if len(inner) == 1 else value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} is invalid: expected a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}={value!r} is invalid: expected an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} is invalid: expected true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} is invalid: expected a string")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} is invalid: expected a list")
        if args and dataclasses.is_dataclass(args[0]):
            return [_build(args[0], v, prefix=f"{name}[{i}].") for i, v in enumerate(value)]
        return [_coerce(f"{name}[{i}]", args[0], v) for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} is invalid: expected a mapping")
        return dict(value)
    return value
