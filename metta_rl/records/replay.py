"""Replays of one evaluation episode: an animated GIF for envs that render RGB frames, and
MettaGrid's own replay format (MettaScope's zlib-compressed JSON, ``.json.z``, written by
mettagrid's ``ReplayLogWriter``) for MettaGrid.

Recording uses an env of its own, built exactly like evaluation env 0 of the task (same seed,
same seed stream, same env index, so the same reset seed) but with ``render_mode="rgb_array"``.
Why a separate env: rendering then never touches the scored episodes (a render-mode env can
differ in speed or even state, and a replay that fails must not cost the score), and with
deterministic actions the recorded episode is env 0's first scored episode.

Replays are a side effect: :func:`record_replay` returns ``(path, None)`` or
``(None, reason)`` for an env it cannot record, and the caller warns once.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from metta_rl.config import EnvConfig, VectorizationConfig
from metta_rl.managers.environment import EnvironmentManager
from metta_rl.core.episodes import FinishedEpisodes, play_episodes
from metta_rl.records.atomic import atomic_write

# The policy acting on one env: ``(obs [agents, ...], first [agents] bool) -> actions [agents, heads]``.
Act = Callable[[np.ndarray, np.ndarray], np.ndarray]

GIF_MIN_FRAME_MS = 20  # browsers show GIF frames shorter than 20 ms at 100 ms
DEFAULT_FPS = 30.0


def gif_bytes(frames: Sequence[np.ndarray], *, fps: float = DEFAULT_FPS) -> bytes:
    """An animated, looping GIF of ``[H, W, 3]`` uint8 frames.

    All frames share one palette, computed once from a sample of frames: Pillow's default
    (a palette per frame) is about ten times slower and makes colours flicker.
    """
    from PIL import Image

    if not frames:
        raise ValueError("a GIF needs at least one frame")
    sample = frames[:: max(1, len(frames) // 8)][:8]
    palette = Image.fromarray(np.concatenate(sample, axis=0)).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    out = io.BytesIO()
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(GIF_MIN_FRAME_MS, round(1000.0 / fps)),
        loop=0,
    )
    return out.getvalue()


def write_gif(frames: Sequence[np.ndarray], path: Path, *, fps: float = DEFAULT_FPS) -> Path:
    atomic_write(path, gif_bytes(frames, fps=fps))
    return path


def _rgb(frame: Any) -> np.ndarray:
    """A rendered frame as ``[H, W, 3]`` uint8, or a ValueError naming what came instead."""
    arr = np.asarray(frame) if frame is not None else None
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        shape = None if arr is None else arr.shape
        raise ValueError(f"render() returned {type(frame).__name__} of shape {shape}, expected an [H, W, 3] image")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


def _gym_render_modes(env_id: str) -> list[str]:
    """The render modes a registered Gymnasium env declares (what ``gymnasium.make`` checks)."""
    try:
        from gymnasium.envs.registration import load_env_creator

        spec = gymnasium.spec(env_id)
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
        return list(getattr(creator, "metadata", {}).get("render_modes", []))
    except Exception:  # noqa: BLE001 - unknown means "cannot record", not a failure
        return []


def _base_env(puffer_env: Any) -> Any:
    """The env under pufferlib's emulation layer (and our seeding wrapper)."""
    return getattr(puffer_env, "env", puffer_env)


def record_replay(
    task: EnvConfig,
    *,
    seed: int,
    stream: int,
    act: Callable[[int], Act],
    max_frames: int,
    path_stem: Path,
) -> tuple[Path | None, str | None]:
    """Play one episode of ``task`` on a recording env and write its replay.

    ``act(num_agents)`` makes the acting policy for that many agent rows. ``path_stem`` gets
    the suffix ``.gif`` or ``.json.z``. At most ``max_frames`` frames (MettaGrid: steps) are
    kept: a longer episode is cut there. Returns ``(path, None)``, or ``(None, reason)`` when
    this env cannot be recorded; errors while recording propagate.
    """
    if task.kind == "gym" and "rgb_array" not in _gym_render_modes(task.id):
        return None, f"Gymnasium env {task.id!r} has no render_mode='rgb_array'"
    # Gymnasium's classic-control envs draw with pygame, whose import prints a banner to stdout.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    render_mode = "rgb_array" if task.kind == "gym" else None
    if render_mode and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # Off-screen frames need no window; without this SDL probes for one and prints a bogus error.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = EnvironmentManager(
        env=task,
        vectorization=VectorizationConfig(backend="serial", num_envs=1, num_workers=1),
        seed=seed,
        stream=stream,
        render_mode=render_mode,
    )
    try:
        puffer_env = env.vecenv.envs[0]
        if task.kind == "mettagrid":
            return _record_mettagrid(env, puffer_env, act(env.num_agents), max_frames, path_stem)
        if getattr(puffer_env, "render_mode", None) != "rgb_array":
            return None, f"{task.kind} env {task.id!r} was not created with render_mode='rgb_array'"
        return _record_gif(env, puffer_env, act(env.num_agents), max_frames, path_stem)
    finally:
        env.close()


def _play(env: EnvironmentManager, act: Act, max_states: int, on_state: Callable[[], None]) -> None:
    """Play until every agent's first episode ended or ``max_states`` states were seen."""
    ended = np.zeros(env.num_agents, dtype=bool)

    def all_ended(finished: FinishedEpisodes) -> bool:
        ended[finished.rows] = True
        return bool(ended.all())

    play_episodes(env, act, stop=all_ended, max_states=max_states, on_state=on_state)


def _record_gif(env: EnvironmentManager, puffer_env: Any, act: Act, max_frames: int, stem: Path):
    frames: list[np.ndarray] = []
    _play(env, act, max_frames, lambda: frames.append(_rgb(puffer_env.render())))
    fps = float(getattr(_base_env(puffer_env), "metadata", {}).get("render_fps") or DEFAULT_FPS)
    return write_gif(frames, stem.with_name(stem.name + ".gif"), fps=fps), None


def _record_mettagrid(env: EnvironmentManager, puffer_env: Any, act: Act, max_steps: int, stem: Path):
    """MettaGrid writes its replay itself: mettagrid's ``ReplayLogWriter``, a simulator event
    handler attached before the reset that starts the recorded episode, writes the episode's
    ``.json.z`` when it ends. It writes into a private folder beside the target, and the file
    is then renamed into place: a replay is either complete or absent."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    path = stem.with_name(stem.name + ".json.z")
    with tempfile.TemporaryDirectory(dir=stem.parent, prefix=".replay-") as tmp:
        writer = _mettagrid_writer(tmp)
        puffer_env._simulator.add_event_handler(writer)
        # A replay holds steps, not states: max_steps states are max_steps - 1 steps.
        _play(env, act, max_steps + 1, lambda: None)
        written = writer.finish()
        if written is None:
            return None, "MettaGrid recorded no episode"
        os.replace(written, path)
    return path, None


def _mettagrid_writer(replay_dir: str) -> Any:
    """mettagrid's ReplayLogWriter, keeping the first episode only (built lazily: mettagrid
    imports slowly)."""
    from mettagrid.simulator.replay_log_writer import ReplayLogWriter

    class FirstEpisodeWriter(ReplayLogWriter):
        """Records the first episode the env starts; ``finish()`` returns its file, writing it
        first if the episode was cut at ``replay_max_frames`` before it ended."""

        def __init__(self, replay_dir: str) -> None:
            super().__init__(replay_dir)
            self._first_sim: Any = None

        def _mine(self) -> bool:
            return self._first_sim is None or self._sim is self._first_sim

        def on_episode_start(self) -> None:
            if self._first_sim is None:
                self._first_sim = self._sim
                super().on_episode_start()

        def on_step(self) -> None:
            if self._first_sim is not None and self._mine() and not self._episode_paths:
                super().on_step()

        def on_episode_end(self) -> None:
            if self._first_sim is not None and self._mine() and not self._episode_paths:
                super().on_episode_end()

        def finish(self) -> str | None:
            if self._first_sim is None:
                return None
            if not self._episode_paths:  # cut before its end: write what was played
                path = f"{self._replay_dir}/{self._episode_id}.json.z"
                self._episode_replay.write_replay(path)
                self._episode_paths[self._episode_id] = path
            return next(iter(self._episode_paths.values()))

    return FirstEpisodeWriter(replay_dir)


def read_mettagrid_replay(path: str | Path) -> dict[str, Any]:
    """Load a ``.json.z`` replay (for tests and tools)."""
    return json.loads(zlib.decompress(Path(path).read_bytes()))
