"""Hybrid logical clocks (Kulkarni et al., 2014): timestamps that follow the wall clock, never go
backwards on one node, and order an event after everything its node had seen.

A timestamp is one integer: milliseconds since the epoch << 16 | a 16-bit counter. Writes compare by
``(hlc, node)``: the larger wins (last writer wins), the node id breaking ties, so every replica that
has seen the same writes holds the same value. Pure: the clock is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(ms: int, logical: int) -> int:
    return (ms << LOGICAL_BITS) | logical


def physical_ms(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


@dataclass(frozen=True)
class Clock:
    """The last timestamp a node issued or saw."""

    last: int = 0

    def tick(self, now_ms: int) -> tuple[Clock, int]:
        """A timestamp for a local event at wall time ``now_ms``; returns the new clock and it."""
        ms = max(physical_ms(self.last), now_ms)
        logical = (self.last & LOGICAL_MASK) + 1 if ms == physical_ms(self.last) else 0
        if logical > LOGICAL_MASK:  # 65536 events in one millisecond: borrow the next one
            ms, logical = ms + 1, 0
        stamp = pack(ms, logical)
        return Clock(stamp), stamp

    def observe(self, remote: int, now_ms: int) -> Clock:
        """The clock after seeing ``remote`` (a replicated write): later than both."""
        later = max(self.last, remote)
        clock, _ = Clock(later).tick(now_ms)
        return clock


def wins(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Whether a write stamped ``a`` = (hlc, node) replaces one stamped ``b``."""
    return a > b
