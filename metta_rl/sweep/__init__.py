"""Hyperparameter sweeps on Optuna: ``tools/sweep.py sweep=cartpole [sweep.trials=8] [overrides]``.

:mod:`~metta_rl.sweep.config` declares the search (``configs/sweep/*.yaml``),
:mod:`~metta_rl.sweep.trial` runs one trial (a Trainer in this process), and
:mod:`~metta_rl.sweep.study` runs the Optuna study and writes ``sweep.json``. Optuna is
imported only when a sweep runs.
"""

from metta_rl.sweep.config import ParamSpec, SweepConfig
from metta_rl.sweep.study import Sweep, sweep_from_overrides

__all__ = ["ParamSpec", "Sweep", "SweepConfig", "sweep_from_overrides"]
