"""Training progress: one frozen value, replaced (never mutated) once per epoch.

The Trainer holds the only reference and passes it as an argument to whatever needs it, so
no manager keeps its own copy of the step counter that could drift after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TrainingProgress:
    agent_step: int = 0
    epoch: int = 0
    episodes: int = 0
    total_timesteps: int = 0
    wall_seconds: float = 0.0

    def advance(self, *, agent_steps: int, episodes: int, wall_seconds: float) -> TrainingProgress:
        """The progress after one more epoch; the only place counters move."""
        return replace(
            self,
            agent_step=self.agent_step + agent_steps,
            epoch=self.epoch + 1,
            episodes=self.episodes + episodes,
            wall_seconds=self.wall_seconds + wall_seconds,
        )

    @property
    def fraction(self) -> float:
        """Share of the step budget used, in [0, 1]: the x-axis of every schedule."""
        if self.total_timesteps <= 0:
            return 0.0
        return min(1.0, self.agent_step / self.total_timesteps)

    @property
    def done(self) -> bool:
        return self.agent_step >= self.total_timesteps


def crossed(prev_epoch: int, epoch: int, interval: int) -> bool:
    """True when an interval boundary lies in (prev_epoch, epoch].

    Crossing semantics, not ``epoch % k == 0``: an epoch that advances by more than one, or a
    resume from an odd epoch, never skips a boundary.
    """
    return interval > 0 and epoch // interval > prev_epoch // interval


def steps_per_second(agent_steps: float, seconds: float) -> float:
    """The one SPS formula (metrics, summary, console, bench): 0 until time has passed."""
    return agent_steps / seconds if seconds > 0 else 0.0


def resumed_message(checkpoint: object, progress: TrainingProgress) -> str:
    """The one "resumed from" line (the trainer's log and the console say the same)."""
    return f"resumed from {checkpoint} at agent step {progress.agent_step:,} (epoch {progress.epoch})"
