"""MettaGrid token observations as a grid: the layout a token-reading policy is built for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    """How a MettaGrid token observation maps onto a grid: the egocentric window and the features."""
    height: int
    width: int
    features: tuple[tuple[int, str, float], ...]  # (feature id, name, normalization)
