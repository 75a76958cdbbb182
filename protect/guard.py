"""The thin I/O around :mod:`protect.breaker`: a breaker an asyncio caller wraps a dependency call in.

``await breaker.call(fn)`` runs ``fn()`` when the state machine admits it and feeds the outcome back; it
raises :class:`BreakerOpen` at once when refused (with how long until the next probe may go). Because the
state machine counts probes in flight, a half-open breaker lets exactly ``half_open_probes`` calls through
however many coroutines arrive at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from core.clock import monotonic
from protect.breaker import DESIGN, Call, Config, Result, State, step

T = TypeVar("T")


class BreakerOpen(ConnectionError):
    """Refused without calling the dependency; ``retry_after`` seconds until a probe may go. A
    ConnectionError, so that code handling an unreachable dependency handles this too."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker '{name}' is open (next probe in {retry_after:.1f} s)")
        self.name, self.retry_after = name, retry_after


class Breaker:
    def __init__(self, name: str, cfg: Config, clock: Callable[[], float] = monotonic,
                 is_failure: Callable[[BaseException], bool] = lambda exc: True) -> None:
        self.name, self.cfg, self.clock, self.is_failure = name, cfg, clock, is_failure
        self.state = State()
        self.transitions: list[tuple[float, str]] = []  # (time, opened|half_opened|closed)

    def _apply(self, event: Call | Result) -> list[str]:
        self.state, actions = step(self.cfg, self.state, event)
        for a in actions:
            if a in ("opened", "half_opened", "closed"):
                self.transitions.append((event.now, a))
        return [str(a) for a in actions]

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` through the breaker. Raises BreakerOpen when refused; otherwise what ``fn`` raises
        (counted as a failure when ``is_failure`` says so)."""
        actions = self._apply(Call(self.clock()))
        if "reject" in actions:
            wait = max(0.0, self.state.opened_at + self.cfg.open_s - self.clock()) if self.state.mode == "open" else 0.0
            raise BreakerOpen(self.name, wait)
        probe, generation = "admit_probe" in actions, self.state.generation
        try:
            result = await fn()
        except BaseException as exc:
            self._apply(Result(self.clock(), not self.is_failure(exc), generation, probe))
            raise
        self._apply(Result(self.clock(), True, generation, probe))
        return result


def configured(dependency: str) -> Config:
    """The breaker settings of ``dependency`` (``origin``, ``kv``, ``do``) the lab passed in
    ``ANYLAB_BREAKERS`` (the topology's ``settings.breakers``), else the design's. Raises KeyError for a
    dependency with neither."""
    given = json.loads(os.environ.get("ANYLAB_BREAKERS") or "{}").get(dependency)
    return Config(**given) if given else DESIGN[dependency]
