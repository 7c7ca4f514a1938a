"""Env seeds: one per (run seed, stream, env index, start point), never pufferlib's.

pufferlib gives env ``j`` of worker ``w`` the reset seed ``key + w + j``, so two envs in
different workers can share a seed, and a resumed run would replay the opening episodes of
epoch 0. Here every env draws its own seed from ``SeedSequence([seed, stream, env_index])`` and,
for a run that starts later than step 0 (a resume), the start point as well: a run resumed at
epoch E starts its envs on fresh episodes, as an uninterrupted run would be at that point, not
on a repeat of epoch 0's.

The start point travels through pufferlib's reset seed, the one channel that reaches every env
in every worker: :func:`reset_key` puts it in the high bits (``start * RESET_SPAN``), pufferlib
adds its small per-env offset, and :meth:`EnvSeeds.for_reset` takes it back out with a floor
division. ``stream`` separates the training envs from the evaluation envs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Larger than any offset pufferlib adds to a reset seed (worker index + env index).
RESET_SPAN = 1 << 24


def env_seed(seed: int, stream: int, env_index: int, start: int = 0) -> int:
    """The reset seed of one env: distinct per (run seed, stream, env index, start point)."""
    entropy = [seed, stream, env_index] + ([start] if start else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def reset_key(start: int) -> int:
    """The seed to hand ``vecenv.async_reset`` so that every env sees start point ``start``."""
    if start < 0:
        raise ValueError(f"start={start} is invalid: expected an integer >= 0")
    return start * RESET_SPAN


@dataclass(frozen=True)
class EnvSeeds:
    """What one env needs to seed itself; picklable, so it travels to vector-env workers."""

    seed: int
    stream: int
    env_index: int

    def for_reset(self, key: int | None) -> int | None:
        """The env's own seed for a reset pufferlib called with ``key`` (``None``: an automatic
        reset between episodes, which continues the env's own RNG)."""
        if key is None:
            return None
        return env_seed(self.seed, self.stream, self.env_index, int(key) // RESET_SPAN)
