"""Degradation levels from signals, by table."""

from __future__ import annotations

import pytest

from protect.levels import Signals, level


@pytest.mark.parametrize(("signals", "expected", "holding"), [
    (Signals(), 0, []),
    (Signals(kv_lag_s=301), 1, [1]),
    (Signals(kv_lag_s=299), 0, []),
    (Signals(kv_master_reachable=False), 1, [1]),
    (Signals(utilisation=0.95), 2, [2]),
    (Signals(utilisation=0.9), 0, []),
    (Signals(pops_down=1), 0, []),
    (Signals(pops_down=2, utilisation=0.95), 3, [2, 3]),
    (Signals(control_reachable=False, kv_lag_s=400), 4, [1, 4]),
])
def test_levels(signals: Signals, expected: int, holding: list[int]) -> None:
    got = level(signals)
    assert got.level == expected and sorted(got.reasons) == holding
    assert got.name == f"L{expected}"
