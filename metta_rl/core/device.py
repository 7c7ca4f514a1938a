"""The accelerator switches of ``trainer``: bf16 autocast (``amp``) and ``torch.compile``.

Both are off by default, and off they cost nothing: :func:`autocast` is a ``nullcontext`` and
the policy is not touched. Pinned host buffers and non-blocking copies are the rollout's and the
buffer's (only when the device is CUDA); see :mod:`metta_rl.managers.rollout`.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from metta_rl.core.policy import Policy


def autocast(device: torch.device, enabled: bool) -> ContextManager[object]:
    """bf16 autocast on ``device`` (CUDA or CPU) when ``enabled``; a no-op context otherwise.

    Only the policy's forward runs inside it: callers cast logits and values back to float32
    (``.float()``) before sampling and before the loss, so log-probabilities, advantages and the
    optimizer's float32 master weights keep their precision.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compile_policy(policy: Policy) -> Policy:
    """``torch.compile`` the policy's forward methods in place (its module, parameters and
    ``state_dict`` stay the same, so checkpoints are unchanged).

    The rollout and the update call ``forward_step`` / ``forward_sequence``, not ``forward``,
    so compiling the module (``torch.compile(policy)``) would compile nothing they run.
    Importing ``torch._dynamo`` costs seconds; it happens only here, when asked for.
    """
    policy.forward_step = torch.compile(policy.forward_step)  # type: ignore[method-assign]
    if policy.is_recurrent:
        policy.forward_sequence = torch.compile(policy.forward_sequence)  # type: ignore[method-assign]
    return policy


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_memory_kept = False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep large freed blocks for reuse (``trainer.reuse_memory``).

    By default glibc hands every block over 32 MB to ``mmap`` and returns it on free, so each
    update's tensors of that size (a MettaGrid minibatch's token grid is 66 MB) arrive as fresh
    pages the kernel must fault in and zero: on the 2-core development machine that was a
    quarter of a MettaGrid minibatch step (forward and backward 190 -> 140 ms with blocks kept).
    Raising the mmap and trim thresholds keeps those blocks in the heap; the process's memory
    then stays at its peak instead of shrinking between updates. Process-wide, once; False
    where the C library is not glibc.
    """
    global _memory_kept
    if _memory_kept:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31) == 1
    except (OSError, AttributeError):
        return False
    _memory_kept = ok
    return ok
