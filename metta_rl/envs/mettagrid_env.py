"""MettaGrid adapted to metta_rl's episode rule, seeding and env stats, in one place.

mettagrid's ``MettaGridPufferEnv.step()`` starts the next episode inside the step that follows
the end of one and applies that step's actions to the new episode: the action chosen on the
last observation lands in the next episode, and the reward of that transition goes uncounted
(episodes of ``max_steps=20`` measured 20, 20, 19, 19, ...). :class:`MettaGridEnv` follows the
rule every other env follows (DESIGN.md, "Episodes"), the one pufferlib's emulated envs follow
and :class:`~metta_rl.core.episodes.EpisodeTracker` expects:

- the step that reports done delivers the episode's last observation and its reward;
- the next ``step()`` discards its actions, starts the new episode and returns its first
  observation with rewards 0 and no terminal or truncation;
- the time limit is a truncation (``episode_truncates``, set by
  :func:`metta_rl.envs.mettagrid_config.build_mettagrid_config`), so PPO bootstraps there.

Seeds: an explicit reset with seed ``S`` (the env's own, see :mod:`metta_rl.envs.seeding`)
replays the same episodes: episode ``k`` after it draws its map and its simulation seed from
``(S, k)`` alone. mettagrid's ``Simulator`` would add a map-seed offset that grows with every
simulation it ever built, so two resets with one seed gave two maps; the simulator here
leaves the map seed as given. Automatic resets between episodes advance ``k``: a new map each
episode, the same sequence of maps after every reset with ``S``.

Stats: mettagrid's own ``StatsTracker`` is attached to the simulator; at the end of each
episode its ``game`` stats and ``agent`` means (``heart.gained``, ``action.move.success``, ...)
come out in that step's infos, which the rollout reports as ``env/game/...`` and
``env/agent/...``. mettagrid leaves out a stat that stayed 0 in an episode; here every stat the
env has reported before is reported again, as 0, so that the mean over episodes is not the
mean over only those in which it happened.

Tasks (a curriculum, ``env.tasks``): the env holds one config per task and, at each reset,
draws the next episode's (:class:`~metta_rl.envs.tasks.TaskDraw`); mettagrid builds every
episode's simulation from the env's current config, so a task switch is a config switch. At
the end of an episode the stats also come out nested under the task's name, with the mean agent
return as ``episode_return`` (``env/<task>/episode_return``, ``env/<task>/game/...``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv
from mettagrid.envs.stats_tracker import StatsTracker
from mettagrid.simulator import Simulator
from mettagrid.util.stats_writer import NoopStatsWriter

from metta_rl.envs.mettagrid_config import build_mettagrid_config
from metta_rl.envs.seeding import EnvSeeds
from metta_rl.envs.tasks import TaskDraw

# Info sections of mettagrid's StatsTracker passed on: numeric means. Left out: per_agent (one
# entry per agent), attributes, the per-label dicts and timing.
STATS_SECTIONS = ("game", "agent")


def make_mettagrid_env(
    env_id: str, kwargs: dict[str, Any], *, seeds: EnvSeeds, buf: Any = None,
    tasks: list[tuple[str, dict[str, Any]]] | None = None, draw: TaskDraw | None = None,
) -> MettaGridEnv:
    """The env an :class:`~metta_rl.envs.factories.EnvCreator` builds for ``kind=mettagrid``;
    with ``tasks`` (``(id, kwargs)`` each) and their ``draw``, a curriculum's env."""
    if tasks:
        cfgs = [build_mettagrid_config(task_id, task_kwargs) for task_id, task_kwargs in tasks]
        return MettaGridEnv(cfgs[0], seeds=seeds, buf=buf, tasks=cfgs, draw=draw)
    return MettaGridEnv(build_mettagrid_config(env_id, kwargs), seeds=seeds, buf=buf)


class _GivenMapSeed(Simulator):
    """A simulator that builds each map from the seed in the config, with no offset of its own."""

    def next_map_seed(self, base_seed: int) -> int:
        return base_seed


class MettaGridEnv(MettaGridPufferEnv):
    """``MettaGridPufferEnv`` with the episode rule, the seeds and the stats described above."""

    def __init__(
        self, cfg: MettaGridConfig, *, seeds: EnvSeeds, buf: Any = None,
        tasks: list[MettaGridConfig] | None = None, draw: TaskDraw | None = None,
    ) -> None:
        self.seeds = seeds
        self._stream_seed = int(seeds.for_reset(0))
        self._episode = 0
        self._episode_over = False
        self._stat_names: dict[str, dict[str, float]] = {section: {} for section in STATS_SECTIONS}
        cfg = cfg.model_copy(deep=True)  # its map seed is set per episode
        # A curriculum: one config per task (copies: their map seeds are set per episode).
        self._task_cfgs = [c.model_copy(deep=True) for c in tasks] if tasks else None
        self._draw = draw
        self._task = 0
        self._task_stat_names: dict[str, dict[str, float]] = {}
        if self._task_cfgs is not None:
            cfg = self._task_cfgs[0]
        simulator = _GivenMapSeed()
        simulator.add_event_handler(StatsTracker(NoopStatsWriter()))
        super().__init__(simulator, cfg, buf=buf, seed=self._apply_episode_seeds(cfg))

    def _apply_episode_seeds(self, cfg: MettaGridConfig) -> int:
        """Seed episode ``self._episode`` of the stream: the map (in ``cfg``) and the simulation
        (returned, and kept for the next simulation the parent builds)."""
        map_seed, sim_seed = np.random.SeedSequence([self._stream_seed, self._episode]).generate_state(2) >> 1
        if hasattr(cfg.game.map_builder, "seed"):
            cfg.game.map_builder.seed = int(map_seed)
        self._current_seed = int(sim_seed)
        return self._current_seed

    def reset(self, seed: int | None = None):
        own = self.seeds.for_reset(seed)
        if own is None:
            self._episode += 1
        else:
            self._stream_seed, self._episode = int(own), 0
            if self._draw is not None:
                self._draw.reseed(self._stream_seed)
        if self._task_cfgs is not None:
            assert self._draw is not None
            self._task = self._draw.draw()
            self.set_mg_config(self._task_cfgs[self._task])
        self._apply_episode_seeds(self._current_cfg)
        self._episode_over = False
        return super().reset()

    def step(self, actions: np.ndarray):
        if self._episode_over:
            obs, _ = self.reset()
            self.rewards[:] = 0
            self.terminals[:] = False
            self.truncations[:] = False
            return obs, self.rewards, self.terminals, self.truncations, {}
        obs, rewards, terminals, truncations, infos = super().step(actions)
        if terminals.all() or truncations.all():  # mettagrid's own end of episode
            self._episode_over = True
            stats = self._episode_stats(infos, self._stat_names)
            if self._draw is not None:
                name = self._draw.names[self._task]
                seen = self._task_stat_names.setdefault(name, {section: {} for section in STATS_SECTIONS})
                task_stats: dict[str, Any] = self._episode_stats(infos, seen)
                task_stats["episode_return"] = float(np.mean(self.get_episode_rewards()))
                stats = {**stats, name: task_stats}
            return obs, rewards, terminals, truncations, stats
        return obs, rewards, terminals, truncations, {}

    @staticmethod
    def _episode_stats(infos: dict[str, Any], stat_names: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The StatsTracker's sections we pass on, each with every stat seen so far (0 if absent)."""
        out = {}
        for section, seen in stat_names.items():
            stats = infos.get(section)
            if stats is None:
                continue
            seen.update(dict.fromkeys(stats, 0.0))
            out[section] = {**seen, **{k: float(v) for k, v in stats.items()}}
        return out
