"""The servers' cheap waits: a Flag pauses until set or timed out; ticks share one grid per server."""

from __future__ import annotations

import asyncio

import pytest

from core.clock import monotonic
from core.timers import SLACK_S, Flag, next_tick, phase_of


def test_pause_times_out_false_and_wakes_true_when_set() -> None:
    async def scenario() -> None:
        flag = Flag()
        t0 = monotonic()
        assert await flag.pause(0.05) is False
        assert monotonic() - t0 >= 0.05 - SLACK_S  # a loop may run a timer within its clock step early
        asyncio.get_running_loop().call_later(0.02, flag.set)
        t0 = monotonic()
        assert await flag.pause(5.0) is True
        assert monotonic() - t0 < 1.0  # woken by set, not by the timeout
        assert await flag.pause(5.0) is True and await flag.wait() is True  # stays set
        flag.clear()
        assert not flag.is_set() and await flag.pause(0.0) is False

    asyncio.run(scenario())


def test_set_wakes_every_waiter() -> None:
    async def scenario() -> list[bool]:
        flag = Flag()
        waiters = [asyncio.create_task(flag.pause(5.0)) for _ in range(3)] + [asyncio.create_task(flag.wait())]
        await asyncio.sleep(0)
        flag.set()
        return list(await asyncio.gather(*waiters))

    assert asyncio.run(scenario()) == [True, True, True, True]


@pytest.mark.parametrize(("now", "period", "phase", "tick"), [
    (10.0, 1.0, 0.0, 11.0),       # on the grid: the next point, never now
    (10.2, 1.0, 0.25, 10.25),
    (10.3, 1.0, 0.25, 11.25),
    (0.05, 0.1, 0.0, 0.1),
])
def test_next_tick(now: float, period: float, phase: float, tick: float) -> None:
    assert next_tick(now, period, phase) == pytest.approx(tick)


def test_phases_are_stable_within_the_period_and_spread() -> None:
    phases = {phase_of(f"eu-p{i:02d}-s1", 1.0) for i in range(50)}
    assert all(0.0 <= p < 1.0 for p in phases) and len(phases) > 40
    assert phase_of("a", 1.0) == phase_of("a", 1.0)
