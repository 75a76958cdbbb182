"""Cheap timed waits for the PoP server's idle loops.

At hundreds of servers on one machine the servers' idle work is the lab's floor, and most of it is
waking up: ``asyncio.wait_for(event.wait(), t)`` makes a task and takes several turns of the loop on every
timeout (measured ≈ 4× the cost of the wake-up itself). :class:`Flag` is an event whose :meth:`Flag.pause`
is one future and one timer. :func:`next_tick` puts a server's periodic loops on one grid, so that loops
of the same period wake the process once, not once each, while different servers keep different phases
(a grid shared by all would wake every server at the same instant).
"""

from __future__ import annotations

import asyncio
import math
import zlib


def detection_bound(interval: float, fast_interval: float, fall: int, timeout: float) -> float:
    """The health agent's worst case from a failure to the down decision, its checks on a cadence from
    each check's start (:mod:`health.agent`): the first failing check starts at most one ``interval`` (or
    one ``timeout``, if the check before it hung) after the failure; each of the ``fall − 1`` further ones
    ``fast_interval`` after the one before started — or when it timed out, if it hung; the last takes up
    to ``timeout``. The one definition, for the agent's config and the topology's profiles."""
    return max(interval, timeout) + (fall - 1) * max(fast_interval, timeout) + timeout


class Flag:
    """An event for one event loop: ``set``, ``clear``, ``is_set``, ``wait`` like :class:`asyncio.Event`,
    plus :meth:`pause`. Set it from the loop's thread (a signal handler added with the loop's
    ``add_signal_handler`` is)."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: set[asyncio.Future[bool]] = set()

    def set(self) -> None:
        self._set = True
        for w in self._waiters:
            if not w.done():
                w.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> bool:
        """Until set; True."""
        return await self.pause(None)

    async def pause(self, seconds: float | None) -> bool:
        """Until set (True) or ``seconds`` have passed (False); None: no time limit."""
        return await self.pause_until(None if seconds is None else asyncio.get_running_loop().time() + seconds)

    async def pause_until(self, when: float | None) -> bool:
        """Until set (True) or CLOCK_MONOTONIC reaches ``when`` (False); None: no time limit.

        A deadline, not a delay: the loop's clock is the one read when its turn began (uvloop's, in
        milliseconds), so a delay computed from a fresher reading would fire early by the work done since
        — and wake the loop twice for a deadline shared with another loop."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_at(when, _expire, waiter) if when is not None else None
        try:
            return await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def phase_of(name: str, period: float) -> float:
    """A stable offset in [0, period) for ``name``: spreads servers over the grid."""
    return (zlib.crc32(name.encode()) % 1000) / 1000 * period


#: How early a timer may fire (the loop's clock has millisecond steps): a deadline this close counts as met.
SLACK_S = 0.002


def next_tick(now: float, period: float, phase: float = 0.0) -> float:
    """The first instant after ``now`` on the grid ``phase + k × period``."""
    return phase + (math.floor((now - phase) / period) + 1) * period
