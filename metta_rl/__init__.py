"""metta_rl: a component-manager PPO trainer for MettaGrid, Gymnasium and PettingZoo envs."""

from metta_rl.config import ConfigError, TrainerConfig
from metta_rl.hooks import Hook
from metta_rl.core.progress import TrainingProgress
from metta_rl.trainer import Trainer, TrainResult

__all__ = ["ConfigError", "Hook", "Trainer", "TrainerConfig", "TrainResult", "TrainingProgress"]
