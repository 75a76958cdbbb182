"""Small statistics shared by the lab's services, drivers and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable


def quantile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by rank ``int(q·n)`` of the sorted values (p50 of an even count: the upper
    middle); None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
