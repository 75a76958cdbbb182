"""The shared quantile."""

from core.stats import quantile


def test_quantile_by_rank() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0  # the upper middle
    assert quantile(range(100), 0.99) == 99 and quantile([5.0], 0.99) == 5.0
