"""Polls with deadlines: the only way the lab waits (no fixed sleeps)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from core.clock import monotonic
from core.errors import AnylabError, WaitTimeout

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    node: str | None = None,
    daemon: str | None = None,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    A probe raising AnylabError ends the wait at once (that error propagates); other exceptions count
    as "not yet".
    Raises WaitTimeout after ``timeout`` seconds, naming ``what`` and the last state seen
    (``describe()`` if given, else the probe's last result or exception).
    """
    deadline = monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except AnylabError:
            raise  # the probe saw something that waiting will not fix
        except Exception as exc:  # a probe may fail while the thing comes up
            result, last = None, exc
        else:
            last = result
        if result:
            return result
        if monotonic() >= deadline:
            state = describe() if describe else repr(last)
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {what}; last state: {state}",
                              node=node, daemon=daemon)
        time.sleep(interval)  # poll interval, bounded by the deadline above


def socket_accepts(path: Path) -> bool:
    """One probe: whether a Unix stream socket at ``path`` accepts a connection (within 1 s)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True
