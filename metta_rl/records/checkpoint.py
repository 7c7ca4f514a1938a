"""Checkpoints: one directory per save, written atomically and verified before it is loaded.

    <run>/checkpoints/epoch_000123/
        policy.pt           the policy's state_dict (all an evaluation needs)
        trainer_state.pt    every manager's state_dict, TrainingProgress, RNG states
        metadata.json       progress, resolved config, versions, metrics, eval score, spaces,
                            and the sha256 of the two files above; written last
    <run>/checkpoints/best -> epoch_000100   (a symlink: the best eval score so far)

A checkpoint is written into a hidden temp directory (each file the way every record is
written, :func:`~metta_rl.records.atomic.atomic_write`), then the directory is renamed into
place, so a crash mid-write leaves only a ``.tmp-*`` directory that nothing reads. Loading
checks the checksums first: a truncated or overwritten file is reported by name, never
half-loaded. Tensors load with ``weights_only=True``, so a checkpoint cannot run code.

This module knows files, not trainers: :meth:`Trainer.checkpoint_state` and
:meth:`Trainer.load_checkpoint` say what goes in and where it goes back, and
:class:`~metta_rl.records.checkpointer.Checkpointer` decides when, where and which one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metta_rl.config import TrainerConfig
from metta_rl.core.progress import TrainingProgress
from metta_rl.records.atomic import Content, atomic_write, fsync_dir
from metta_rl.records.run_dir import _jsonable

FORMAT = 1
CHECKPOINTS = "checkpoints"
BEST = "best"
POLICY_FILE = "policy.pt"
STATE_FILE = "trainer_state.pt"
METADATA_FILE = "metadata.json"
_NAME = re.compile(r"^epoch_(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not fit this run. One line naming it."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    metadata: dict[str, Any]
    state: dict[str, Any]

    @property
    def progress(self) -> TrainingProgress:
        return TrainingProgress(**self.metadata["progress"])

    @property
    def config(self) -> TrainerConfig:
        return TrainerConfig.from_dict(self.metadata["config"])

    @property
    def epoch(self) -> int:
        return int(self.metadata["progress"]["epoch"])


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:06d}"


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("metta_rl", "torch", "numpy", "pufferlib-core", "gymnasium", "pettingzoo", "mettagrid"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------- writing
def _write_synced(path: Path, content: Content) -> dict[str, Any]:
    """One checkpoint file, written like every record (:func:`atomic_write`); its checksum."""
    atomic_write(path, content)
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, *, state: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write ``state`` (``state["policy"]`` to policy.pt, the rest to trainer_state.pt) and
    ``metadata`` to ``directory`` atomically; an existing checkpoint there is replaced whole."""
    directory = Path(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{directory.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        rest = {k: v for k, v in state.items() if k != "policy"}
        files = {
            POLICY_FILE: _write_synced(tmp / POLICY_FILE, lambda f: torch.save(state["policy"], f)),
            STATE_FILE: _write_synced(tmp / STATE_FILE, lambda f: torch.save(rest, f)),
        }
        meta = {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **metadata,
            "files": files,
        }
        _write_synced(tmp / METADATA_FILE, json.dumps(_jsonable(meta), indent=2))
        if directory.exists():
            old = parent / f".old-{directory.name}-{os.getpid()}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def set_best(checkpoints_dir: Path, target: Path) -> None:
    """Point ``checkpoints/best`` at ``target`` (atomically: a new link renamed over the old)."""
    link = checkpoints_dir / BEST
    tmp = checkpoints_dir / f".tmp-{BEST}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def best_checkpoint(checkpoints_dir: Path) -> Path | None:
    link = checkpoints_dir / BEST
    return (checkpoints_dir / os.readlink(link)) if link.is_symlink() else None


def prune(checkpoints_dir: Path, *, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and the best; also stale temp dirs
    (of this process or dead ones). Returns what was deleted."""
    checkpoints = list_checkpoints(checkpoints_dir)
    keep = set(checkpoints[:keep_last])
    best = best_checkpoint(checkpoints_dir)
    if best is not None:
        keep.add(best)
    removed = []
    for path in checkpoints:
        if path not in keep:
            # Hide it first: a kill mid-delete must not leave a visible, half-deleted checkpoint.
            trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(path)
    for path in checkpoints_dir.glob(".*-epoch_*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- reading
def list_checkpoints(path: str | Path) -> list[Path]:
    """Checkpoint directories under a run dir or its ``checkpoints/``, newest epoch first.
    Temp directories of unfinished writes are not listed."""
    path = Path(path)
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _NAME.match(p.name)) and p.is_dir() and not p.is_symlink()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a complete checkpoint, after checking every file against its checksum."""
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {METADATA_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {meta_path} is damaged: not valid checkpoint metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}: expected {FORMAT}")
    for name in (POLICY_FILE, STATE_FILE):
        file = path / name
        if name not in files or not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if file.stat().st_size != files[name]["bytes"] or _sha256(file) != files[name]["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is damaged: its contents do not match the checksum")
    return meta


def _load_dir(path: Path, map_location: Any) -> Checkpoint:
    meta = read_metadata(path)
    state: dict[str, Any] = {}
    for name in (STATE_FILE, POLICY_FILE):
        try:
            loaded = torch.load(path / name, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a checksum-clean file that torch cannot read
            raise CheckpointError(f"checkpoint file {path / name} cannot be read: {type(exc).__name__}") from None
        if name == POLICY_FILE:
            state["policy"] = loaded
        else:
            state.update(loaded)
    return Checkpoint(path=path, metadata=meta, state=state)


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> Checkpoint:
    """Load a checkpoint directory, or the newest complete checkpoint of a run directory.

    A damaged checkpoint directory raises :class:`CheckpointError` naming the file; given a
    run directory, damaged ones are skipped (newest to oldest) and named only if none loads.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if (path / METADATA_FILE).exists() or _NAME.match(path.name):
        return _load_dir(path.resolve(), map_location)
    candidates = list_checkpoints(path)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {path}: expected a run directory with checkpoints/ or an epoch_* directory")
    errors = []
    for candidate in candidates:
        try:
            return _load_dir(candidate, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
    raise CheckpointError(f"no complete checkpoint in {path}: " + "; ".join(errors))


def policy_from_checkpoint(checkpoint: Checkpoint | str | Path, *, device: str | torch.device = "cpu") -> Any:
    """Rebuild the policy of a checkpoint (its env's spaces come from one env of its config)."""
    from metta_rl.config import VectorizationConfig
    from metta_rl.managers.environment import EVAL_STREAM, EnvironmentManager
    from metta_rl.core.policy_factory import make_policy

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    config = ckpt.config
    env = EnvironmentManager(
        env=config.env, vectorization=VectorizationConfig(num_envs=1), seed=config.seed, stream=EVAL_STREAM
    )
    try:
        policy = make_policy(
            obs_space=env.observation_space, action_space=env.action_space, config=config.policy,
            token_layout=env.token_layout, env_kind=config.env.kind,
        )
    finally:
        env.close()
    load_policy_state(policy, ckpt)
    return policy.to(device)


def check_spaces(checkpoint: Checkpoint, spaces: dict[str, Any]) -> None:
    """Refuse a checkpoint saved for other observation/action spaces (older ones say none)."""
    saved = checkpoint.metadata.get("spaces")
    if saved is not None and saved != spaces:
        raise CheckpointError(f"checkpoint {checkpoint.path} was saved for other env spaces ({saved}); this env has {spaces}")


def load_policy_state(policy: torch.nn.Module, checkpoint: Checkpoint) -> None:
    try:
        policy.load_state_dict(checkpoint.state["policy"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit this policy: {detail[:300]}") from None


# ---------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """python, numpy and torch global RNG states, in types ``weights_only`` loading accepts."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
