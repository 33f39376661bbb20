"""Argument checks shared by the loader and the modules."""

from __future__ import annotations

__all__ = ["to_size"]


def to_size(size, name: str = "size") -> tuple[int, int]:
    """``(height, width)`` from an int (a square) or a pair of ints: ``TypeError`` for anything else,
    ``ValueError`` for a side below 1."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got {size!r}")
    if min(size) < 1:
        raise ValueError(f"{name} must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])
