"""How a metric function declares which way is better and which paper defines it."""
from __future__ import annotations

__all__ = ['DIRECTIONS', 'metric']

DIRECTIONS = ('higher', 'lower')


def metric(direction: str, paper: str):
    """Declare a metric function's better direction and the paper that defines it (set as the
    function's attributes ``direction`` and ``paper``).

    Args:
        direction: 'higher' or 'lower'.
        paper: the citation.

    Returns:
        callable: the decorator.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {DIRECTIONS}, got {direction!r}')

    def declare(fn):
        fn.direction, fn.paper = direction, paper
        return fn
    return declare
