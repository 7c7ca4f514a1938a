"""The functional entry point: one ``train()`` call, and the pure building blocks in one place.

For scripts that want a run without managing a Trainer's lifecycle::

    from metta_rl.functional import train
    result = train({"env": {"name": "cartpole"}, "trainer": {"total_timesteps": 50_000}})
    print(result.summary["eval_mean_return"])

``train()`` is exactly ``Trainer.setup()``, ``Trainer.train()``, ``Trainer.cleanup()``, with the
cleanup in a ``finally``, so envs, workers and loggers are closed however the run ends (an
exception, Ctrl-C, a ``SystemExit`` from a hook). It is an adapter, not a second trainer: the
same config and seed give the same metrics and weights as the class.

For users who write their own loop, the math and the checkpoint format are importable from
here too (they live in :mod:`metta_rl.core.ppo` and :mod:`metta_rl.records.checkpoint`)::

    from metta_rl.functional import compute_advantages, ppo_loss, save_checkpoint, load_checkpoint

    advantages, returns = compute_advantages(rewards, values, terminated, truncated, gamma=0.99, gae_lambda=0.95)
    save_checkpoint(run / "checkpoints" / "epoch_000010", state={"policy": policy.state_dict()},
                    metadata={"progress": ..., "config": config.to_dict()})
    policy = policy_from_checkpoint(load_checkpoint(run))   # the run's newest complete checkpoint
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metta_rl.records.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    policy_from_checkpoint,
    save_checkpoint,
)
from metta_rl.config import TrainerConfig
from metta_rl.hooks import Hook
from metta_rl.core.ppo import (
    PPOLosses,
    explained_variance,
    normalize_advantages,
    ppo_loss,
)
from metta_rl.core.ppo import compute_gae as compute_advantages
from metta_rl.trainer import Trainer, TrainResult

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "PPOLosses",
    "TrainResult",
    "as_trainer_config",
    "compute_advantages",
    "explained_variance",
    "load_checkpoint",
    "normalize_advantages",
    "policy_from_checkpoint",
    "ppo_loss",
    "save_checkpoint",
    "train",
]


def as_trainer_config(config: TrainerConfig | Mapping[str, Any] | Any) -> TrainerConfig:
    """A validated :class:`TrainerConfig` from a TrainerConfig, a plain mapping or an OmegaConf
    config (resolved; a composed Hydra config's ``hydra`` node is dropped)."""
    if isinstance(config, TrainerConfig):
        return config
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()  # type: ignore[assignment,misc]
    if DictConfig and isinstance(config, DictConfig):
        data = OmegaConf.to_container(config, resolve=True)
        assert isinstance(data, dict)
        data.pop("hydra", None)
        return TrainerConfig.from_dict(data)
    if isinstance(config, Mapping):
        return TrainerConfig.from_dict(dict(config))
    raise TypeError(
        f"config must be a TrainerConfig, a dict or an OmegaConf DictConfig, not {type(config).__name__}"
    )


def train(
    config: TrainerConfig | Mapping[str, Any] | Any,
    *,
    run_dir: str | Path | None = None,
    hooks: Iterable[Hook] = (),
    console: bool = True,
) -> TrainResult:
    """Train to ``trainer.total_timesteps`` and return the :class:`TrainResult`.

    ``run_dir`` defaults to ``<runs_dir>/<run>`` as for the class; ``console=False`` (or
    ``logging.console=off`` in the config) keeps the run quiet.
    """
    trainer = Trainer(as_trainer_config(config), run_dir=run_dir, hooks=list(hooks), console=console)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
