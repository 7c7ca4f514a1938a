"""Data-parallel training over processes: the torch.distributed process group of a torchrun launch.

    torchrun --standalone --nproc_per_node=2 tools/train.py env=cartpole

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each
worker's environment; :meth:`Distributed.from_env` joins that process group (gloo on the CPU,
NCCL for CUDA tensors with gloo for Python objects) and :meth:`Distributed.close` leaves it. With
no torchrun environment (or a world of one) it is :data:`SINGLE`: no process group, no
collective, and every caller takes exactly the single-process path it took before.

What is exchanged, and why no more (a collective costs ~1.6 ms of latency with gloo on 2 CPU
cores, as much as a small policy's whole optimizer step):

* the flat gradient buffer, once per optimizer step (:mod:`metta_rl.managers.optimizer`);
* the advantage moments and valid-step counts of every minibatch, once per update epoch, so
  advantages are normalized with the global mean and std and the loss is the global mean;
* the approximate KL once per update epoch when ``ppo.target_kl`` is set (the early stop is
  then the same on every rank), and the logged loss statistics once per update;
* once per epoch, each rank's rollout counts and episodes (agent steps are counted globally,
  logged means are over every rank's episodes) and then rank 0's stop decision.

Only rank 0 has side effects (console, metrics.jsonl, summary.json, W&B, TensorBoard,
checkpoints, evaluation, replays); see :class:`metta_rl.trainer.Trainer`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from metta_rl.config import ConfigError, TrainingLoopConfig

# torchrun's variables; a process without them is a single-process run.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def env_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment, ``(0, 1)`` without it. For messages
    printed before (or after) the process group exists: the CLI's one-line errors."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def rank_prefix() -> str:
    """``"rank 1/2: "`` under a multi-process launch, ``""`` otherwise: which rank a message is from."""
    rank, world = env_rank()
    return f"rank {rank}/{world}: " if world > 1 else ""


def global_batch(loop: TrainingLoopConfig, world_size: int) -> int:
    """Agent steps one epoch collects over all ranks (``trainer.batch_scope``)."""
    return loop.batch_size * world_size if loop.batch_scope == "per_rank" else loop.batch_size


def rank_batch(loop: TrainingLoopConfig, world_size: int) -> tuple[int, int]:
    """``(batch_size, minibatch_size)`` of one rank: the configured ones with
    ``batch_scope=per_rank`` (or one process), else 1/N of each, which must divide."""
    if world_size == 1 or loop.batch_scope == "per_rank":
        return loop.batch_size, loop.minibatch_size
    for name in ("batch_size", "minibatch_size"):
        value = getattr(loop, name)
        if value % world_size:
            raise ConfigError(
                f"trainer.{name}={value} is invalid: with trainer.batch_scope=global it is split over "
                f"{world_size} ranks, so expected a multiple of {world_size} (or trainer.batch_scope=per_rank)"
            )
    return loop.batch_size // world_size, loop.minibatch_size // world_size


class DistributedError(RuntimeError):
    """A collective failed: another rank died, or did not arrive within the timeout. One line."""


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # True when from_env created the process group (and close() destroys it); a group the
    # caller initialized before the Trainer is theirs to destroy.
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, *, device_type: str, timeout_s: float) -> Distributed:
        """Join torchrun's process group (``init_method=env://``), or :data:`SINGLE` without one.

        ``timeout_s`` bounds every collective, so a rank that hangs (rather than dies: a dead
        rank's peers fail at once, and torchrun stops the rest) ends the run with an error
        instead of a silent wait.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            if world == 1:
                return SINGLE
            return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", 0)), owns_group=False)
        rank, world = env_rank()
        if world <= 1:
            return SINGLE
        missing = [k for k in ENV_VARS + ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DistributedError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
                "(torchrun --nproc_per_node=N tools/train.py ...)"
            )
        local_rank = int(os.environ["LOCAL_RANK"])
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"  # NCCL for tensors on the GPU, gloo for Python objects
        else:
            backend = "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        except Exception as exc:  # noqa: BLE001 - any rendezvous failure, as one line
            raise DistributedError(f"could not join the process group ({backend}): {_one_line(exc)}") from exc
        return cls(rank, world, local_rank, owns_group=True)

    def device(self, name: str) -> torch.device:
        """``trainer.device``, with a bare ``cuda`` meaning this process's GPU (``cuda:LOCAL_RANK``)."""
        if name == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    # ------------------------------------------------------------------ collectives
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (nothing to do in a single process)."""
        if self.enabled:
            self._call("all_reduce", tensor)
        return tensor

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean over ranks (gloo has no AVG: a sum, then a division)."""
        if self.enabled:
            self._call("all_reduce", tensor)
            tensor.div_(self.world_size)
        return tensor

    def mean_floats(self, values: Mapping[str, float]) -> dict[str, float]:
        """The mean over ranks of a dict of floats (same keys on every rank), one collective."""
        if not self.enabled:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        self.mean_(t)
        return dict(zip(keys, t.tolist()))

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.enabled:
            self._call("broadcast", tensor, src=src)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; keep it small)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        self._call("broadcast_object_list", box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled; keep it small)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._call("all_gather_object", out, obj)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the same start, whatever the init)."""
        if self.enabled:
            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    self.broadcast_(t.data)

    def seed_rank(self, seed: int, start: int) -> None:
        """Give ranks other than 0 RNG streams of their own (python, numpy, torch: action
        sampling), from (seed, rank, start epoch); rank 0 keeps a single-process run's."""
        if self.rank == 0:
            return
        import random

        import numpy as np

        a, b, c = np.random.SeedSequence([seed, self.rank, start]).generate_state(3)
        random.seed(int(a))
        np.random.seed(int(b))
        torch.manual_seed(int(c))

    def agree_on_run(self, run_path: str, config: dict[str, Any]) -> str:
        """Rank 0's run directory for every rank, after checking that every rank runs the same
        config: ranks that differ would wait for each other's collectives forever. ``run`` may
        differ (its default has the start time in it); rank 0's names the folder."""
        mine = {k: v for k, v in config.items() if k != "run"}
        parts = self.all_gather_object((run_path, mine))
        for rank, (_, theirs) in enumerate(parts):
            if theirs != parts[0][1]:
                keys = _differing(parts[0][1], theirs)
                raise ConfigError(
                    f"rank {rank}'s config differs from rank 0's in {', '.join(keys)}: every rank must run "
                    "the same config (the same command line on every node)"
                )
        return parts[0][0]

    def barrier(self) -> None:
        if self.enabled:
            self._call("barrier")

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import torch.distributed as dist

        try:
            return getattr(dist, name)(*args, **kwargs)
        except RuntimeError as exc:
            # gloo's "Connection closed by peer" / a timeout: another rank failed or hangs; its
            # own message names it. Ours says so, on one line.
            raise DistributedError(
                f"{name} across {self.world_size} ranks failed (another rank failed or stopped "
                f"responding; its message names it): {_one_line(exc)}"
            ) from exc

    def close(self) -> None:
        """Leave the process group (only one this object created). Safe to call twice."""
        import torch.distributed as dist

        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differing(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


SINGLE = Distributed()
