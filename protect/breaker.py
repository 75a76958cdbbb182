"""A circuit breaker as a pure state machine (the design's "Circuit Breaker Pattern"):
``step(state, event) -> (state, actions)``, no clock and no I/O — the caller passes ``now``.

- **closed**: calls go through; ``failure_threshold`` failures in a row open it.
- **open**: calls are refused at once (``reject``) until ``open_s`` has passed since it opened.
- **half-open**: exactly ``half_open_probes`` calls at a time are let through as probes (``admit_probe``);
  every other call is refused. A probe's failure opens it again (a new ``open_s``); ``success_threshold``
  probe successes in a row close it.

A result that arrives for a call admitted in an earlier state (a slow call from before the breaker
opened) is ignored: only probes decide a half-open breaker. Why not pybreaker or purgatory: neither
limits a half-open breaker to one probe *at a time* under asyncio nor counts a success threshold there,
and both read the clock themselves, which a table test cannot drive.

The design's settings are :data:`DESIGN` (origin, KV, DO).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Mode = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Config:
    failure_threshold: int = 5
    success_threshold: int = 3
    open_s: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1 or self.half_open_probes < 1 or self.open_s <= 0:
            raise ValueError(f"breaker config out of range: {self}")


#: The design's "Circuit Breaker Configuration" (KV and DO give no success threshold: 1 probe closes).
DESIGN = {
    "origin": Config(failure_threshold=5, success_threshold=3, open_s=30.0, half_open_probes=1),
    "kv": Config(failure_threshold=10, success_threshold=1, open_s=10.0, half_open_probes=1),
    "do": Config(failure_threshold=3, success_threshold=1, open_s=60.0, half_open_probes=1),
}


@dataclass(frozen=True)
class State:
    mode: Mode = "closed"
    failures: int = 0  # in a row, while closed
    successes: int = 0  # probe successes in a row, while half-open
    opened_at: float = 0.0
    probes: int = 0  # probes in flight
    generation: int = 0  # bumped on every change of mode: results of older calls are ignored


@dataclass(frozen=True)
class Call:
    """A call wants to go through at ``now``."""

    now: float


@dataclass(frozen=True)
class Result:
    """A call admitted in ``generation`` ended (``ok`` or not) at ``now``."""

    now: float
    ok: bool
    generation: int
    probe: bool = False


Action = Literal["admit", "admit_probe", "reject", "opened", "half_opened", "closed"]


def _to(state: State, mode: Mode, now: float) -> State:
    return State(mode=mode, opened_at=now if mode == "open" else state.opened_at, generation=state.generation + 1)


def step(cfg: Config, state: State, event: Call | Result) -> tuple[State, list[Action]]:
    """The breaker's next state and what to do. For a Call: exactly one of ``admit``, ``admit_probe``,
    ``reject`` (after a possible ``half_opened``); for a Result: ``opened``/``closed`` when it changed."""
    if isinstance(event, Call):
        actions: list[Action] = []
        if state.mode == "open" and event.now - state.opened_at >= cfg.open_s:
            state, actions = _to(state, "half_open", event.now), ["half_opened"]
        if state.mode == "closed":
            return state, [*actions, "admit"]
        if state.mode == "half_open" and state.probes < cfg.half_open_probes:
            return replace(state, probes=state.probes + 1), [*actions, "admit_probe"]
        return state, [*actions, "reject"]
    if event.generation != state.generation:
        return state, []  # from before the last change of mode
    if state.mode == "closed":
        if event.ok:
            return replace(state, failures=0), []
        if state.failures + 1 >= cfg.failure_threshold:
            return _to(state, "open", event.now), ["opened"]
        return replace(state, failures=state.failures + 1), []
    if state.mode == "half_open" and event.probe:
        if not event.ok:
            return _to(state, "open", event.now), ["opened"]
        if state.successes + 1 >= cfg.success_threshold:
            return _to(state, "closed", event.now), ["closed"]
        return replace(state, successes=state.successes + 1, probes=state.probes - 1), []
    return state, []
