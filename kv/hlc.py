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


#: How far ahead of a master's wall clock a peer's timestamp may be, in ms. The lab's nodes share one
#: machine's clock (their HLCs differ by what a request takes); NTP keeps real machines within tens of
#: ms; 5 s leaves room for a loaded host. A timestamp past it is refused: accepted, one entry stamped near
#: 2^63 would push the clock so far ahead that no later local write could ever win (or fit in SQLite).
MAX_AHEAD_MS = 5_000
#: Timestamps are stored in SQLite's signed 64-bit INTEGER.
MAX_HLC = (1 << 63) - 1


def admissible(remote: int, now_ms: int, max_ahead_ms: int = MAX_AHEAD_MS) -> bool:
    """Whether a timestamp from a peer may be taken: not negative, storable, and at most
    ``max_ahead_ms`` ahead of the local wall clock ``now_ms``."""
    return 0 <= remote <= MAX_HLC and physical_ms(remote) <= now_ms + max_ahead_ms


#: How far ahead a peer's timestamp may be and still be waited for rather than thrown away: a clock that
#: jumped this far is a clock to be mended; past it (or past MAX_HLC) the timestamp is garbage.
MAX_WAIT_AHEAD_MS = 3_600_000


def worth_waiting(remote: int, now_ms: int) -> bool:
    """Whether a timestamp that is not :func:`admissible` now may become so as the local clock goes on
    (at most :data:`MAX_WAIT_AHEAD_MS` ahead, storable): then it is held, not dropped."""
    return 0 <= remote <= MAX_HLC and physical_ms(remote) <= now_ms + MAX_WAIT_AHEAD_MS


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
