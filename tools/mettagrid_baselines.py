#!/usr/bin/env python
"""Baseline returns of a MettaGrid task: what a learned policy has to beat, and what a simple
scripted one reaches (to show the task can be scored well).

    python tools/mettagrid_baselines.py navigation --policy random --episodes 20
    python tools/mettagrid_baselines.py tiny --policy greedy --seeds 0 1 2 --kwargs '{"max_steps": 60}'
    python tools/mettagrid_baselines.py my_pkg.tasks:make_task --kwargs '{"size": 9}'

Prints the return per agent per episode: the mean over seeds, and each seed's mean over its
episodes. Episodes run in the env metta_rl trains on (:class:`metta_rl.envs.mettagrid_env.MettaGridEnv`),
seed ``s`` playing ``--episodes`` consecutive episodes (a new map each) after a reset with ``s``.

Policies: ``random`` takes uniform random actions. ``greedy`` (for the shipped tasks) walks, by
the shortest path, to the nearest object it needs among those in its 13x13 view (a full
heart source or mine; with ore in hand a generator, with a battery an altar) and otherwise
explores in a straight line, turning at random when blocked. It reads the simulation's object
list rather than the token observation, so it is a sanity check, not a policy to learn from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metta_rl.envs.mettagrid_env import make_mettagrid_env  # noqa: E402
from metta_rl.envs.seeding import EnvSeeds  # noqa: E402

MOVES = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}  # north, south, west, east as (row, col)
VIEW = 6  # cells seen in each direction (the 13x13 window)


def _wanted(agent: dict, types: dict) -> tuple[str, str | None]:
    """The object type an agent goes for next, and the item it must hold (None: any)."""
    if "mine" not in types:
        return "heart_source", "inv:heart"
    if agent.get("inv:battery", 0):
        return "altar", None
    if agent.get("inv:ore", 0):
        return "generator", None
    return "mine", "inv:ore"


def _step_towards(start: tuple[int, int], goals: set, blocked: np.ndarray) -> int | None:
    """The first move of a shortest path from ``start`` into one of ``goals`` (None: unreachable)."""
    prev = {start: start}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for move, (dr, dc) in MOVES.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt in prev:
                continue
            prev[nxt] = cell
            if nxt in goals:
                while prev[nxt] != start:
                    nxt = prev[nxt]
                return next(m for m, d in MOVES.items() if d == (nxt[0] - start[0], nxt[1] - start[1]))
            if 0 <= nxt[0] < blocked.shape[0] and 0 <= nxt[1] < blocked.shape[1] and not blocked[nxt]:
                queue.append(nxt)
    return None


def greedy_actions(env, rng: np.random.Generator, headings: np.ndarray) -> np.ndarray:
    sim = env.current_simulation
    blocked = np.zeros((sim.map_height, sim.map_width), dtype=bool)
    agents, by_type = {}, {}
    for obj in sim.grid_objects().values():
        blocked[obj["r"], obj["c"]] = True
        if "agent_id" in obj:
            agents[obj["agent_id"]] = obj
        else:
            by_type.setdefault(obj["type_name"], []).append(obj)
    actions = np.zeros(env.num_agents, dtype=np.int32)
    for i in range(env.num_agents):
        me = agents[i]
        kind, full = _wanted(me, by_type)
        goals = {
            (o["r"], o["c"])
            for o in by_type.get(kind, ())
            if (full is None or o.get(full, 0) > 0) and max(abs(o["r"] - me["r"]), abs(o["c"] - me["c"])) <= VIEW
        }
        move = _step_towards((me["r"], me["c"]), goals, blocked) if goals else None
        if move is None:
            dr, dc = MOVES[int(headings[i])]
            if blocked[me["r"] + dr, me["c"] + dc] or rng.random() < 0.05:
                headings[i] = rng.integers(1, 5)
            move = int(headings[i])
        actions[i] = move
    return actions


def episode_returns(task: str, kwargs: dict, policy: str, seed: int, episodes: int) -> list[float]:
    """Mean return per agent of each of ``episodes`` episodes after a reset with ``seed``."""
    env = make_mettagrid_env(task, kwargs, seeds=EnvSeeds(seed, 0, 0))
    rng = np.random.default_rng(seed)
    n = env.num_agents
    env.reset(seed=0)
    out = []
    try:
        for _ in range(episodes):
            total = np.zeros(n)
            headings = rng.integers(1, 5, size=n)
            while True:
                if policy == "random":
                    actions = rng.integers(0, env.single_action_space.n, size=n).astype(np.int32)
                else:
                    actions = greedy_actions(env, rng, headings)
                _, rewards, terminals, truncations, _ = env.step(actions)
                total += rewards
                if terminals.all() or truncations.all():
                    break
            out.append(float(total.mean()))
            env.step(np.zeros(n, dtype=np.int32))  # the step after the end starts the next episode
    finally:
        env.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="a task of metta_rl.envs.mettagrid_tasks.TASKS, or module:callable")
    parser.add_argument("--policy", choices=("random", "greedy"), default="random")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kwargs", type=json.loads, default={}, help="the task's keyword arguments, as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    per_seed = [float(np.mean(episode_returns(args.task, args.kwargs, args.policy, s, args.episodes)))
                for s in args.seeds]
    print(
        f"{args.task} {args.kwargs or ''} {args.policy}: {np.mean(per_seed):.3f} per agent per episode "
        f"(seeds {args.seeds}: {', '.join(f'{r:.3f}' for r in per_seed)}; {args.episodes} episodes each; "
        f"{time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
