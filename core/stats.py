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


#: z of a two-sided 99 % interval.
Z99 = 2.5758


def wilson(k: int, n: int, z: float = Z99) -> tuple[float, float]:
    """The Wilson score interval of k successes in n draws (z = 2.576: 99 %); (0, 1) for no draws."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
