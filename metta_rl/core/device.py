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
