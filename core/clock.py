"""The lab's one clock: CLOCK_MONOTONIC, which every network namespace of the machine shares.

Every figure anylab reports (probe send and receive times, the moment a fault is injected, a router's
FIB change, a deploy's propagation, a DO call's invocation and completion) is read from this clock, so
times taken in different processes and namespaces can be subtracted from each other.
"""

from __future__ import annotations

import time


def monotonic() -> float:
    """Seconds on CLOCK_MONOTONIC (the same clock as :func:`time.monotonic` on Linux, named explicitly)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def wall() -> float:
    """Seconds since the epoch (CLOCK_REALTIME). Never for a figure: only for what must agree across
    machines — the time in a signed request (:mod:`core.peer_auth`), a KV entry's hybrid logical clock."""
    return time.time()


def realtime_offset() -> float:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC now, in seconds: subtract it from a time a program of this
    machine logged in wall-clock time (a router's log line) to place it on the lab's clock. Exact to the
    clocks' drift since (NTP slews the wall clock by at most 0.5 ms a second)."""
    return time.clock_gettime(time.CLOCK_REALTIME) - monotonic()
