"""How a metric function declares which way is better and which paper defines it."""
from __future__ import annotations

__all__ = ['DIRECTIONS', 'metric']

DIRECTIONS = ('higher', 'lower')


def metric(direction: str, paper: str):
    """Declare a metric function's better ``direction`` ('higher' | 'lower') and the
    ``paper`` that defines it (set as the function's attributes of those names)."""
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {DIRECTIONS}, got {direction!r}')

    def declare(fn):
        fn.direction, fn.paper = direction, paper
        return fn
    return declare
