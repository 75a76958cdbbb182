"""The health agent's decision core: a pure state machine, ``step(config, state, event) -> (state, actions)``.

No I/O, no clock of its own: every event carries its CLOCK_MONOTONIC time, every effect is returned as
an action for the thin I/O layer to carry out. Semantics (ExaBGP healthcheck's, made explicit):

- Health: ``init`` → ``rising``/``falling`` → ``up``/``down``. ``rise`` consecutive passes make a server
  up, ``fall`` consecutive failures make it down; while rising or falling the agent checks at
  ``fast_interval``, otherwise at ``interval``, counted from each check's start (a fixed cadence: a hung
  check costs its timeout, not its timeout plus the interval). So detection is bounded by
  ``max(interval, timeout) + (fall − 1) × max(fast_interval, timeout) + timeout``
  (:meth:`Config.detection_bound`).
- Announcement, derived from health and the drain file: ``normal`` when up; when down ``withdrawn`` or
  ``demoted`` (``on_down``); while the drain file exists, at least ``drain_mode`` (demoted or
  withdrawn) — the worse of the two wins, so a failed server is never announced because it drains.
  Demoting first lets traffic move *before* the route disappears (make-before-break).
- Overload (``overload_above`` set): a server whose utilisation (the edge's, ``Load`` events) stays at or
  above ``overload_above`` for ``overload_after`` seconds is *overloaded* and announces at least
  ``demoted`` — the design's "demote the PoP's announcement" beside L7 spillover — until it has stayed
  below ``restore_below`` for ``restore_after`` seconds (hysteresis: the traffic it sheds by demoting
  would otherwise bring it straight back).
- Debounce: the announcement changes at most once per ``debounce`` seconds; a change wanted sooner is
  kept pending and applied by the first event at or after the deadline (a ``Tick`` is scheduled).
- ``Stop`` (SIGTERM) withdraws and ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from core.timers import detection_bound

Health = Literal["init", "rising", "up", "falling", "down", "exit"]
Announcement = Literal["normal", "demoted", "withdrawn"]
_BADNESS: tuple[Announcement, ...] = ("normal", "demoted", "withdrawn")


@dataclass(frozen=True)
class Config:
    rise: int = 2
    fall: int = 2
    interval: float = 0.05
    fast_interval: float = 0.02
    timeout: float = 0.03
    on_down: Literal["withdrawn", "demoted"] = "withdrawn"
    drain_mode: Literal["withdrawn", "demoted"] = "demoted"
    debounce: float = 0.0
    overload_above: float | None = None
    overload_after: float = 2.0
    restore_below: float = 0.5
    restore_after: float = 5.0

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if self.overload_above is not None and not 0 <= self.restore_below < self.overload_above:
            raise ValueError("restore_below must be below overload_above (and not negative)")
        if min(self.interval, self.fast_interval, self.timeout) <= 0 or self.debounce < 0:
            raise ValueError("interval, fast_interval and timeout must be positive, debounce ≥ 0")

    def detection_bound(self) -> float:
        """Worst case from a failure to the down decision (:func:`core.timers.detection_bound`), a hung
        check counted at its timeout."""
        return detection_bound(self.interval, self.fast_interval, self.fall, self.timeout)


@dataclass(frozen=True)
class State:
    health: Health = "init"
    count: int = 0  # consecutive results pushing towards the next health state
    draining: bool = False
    announced: Announcement = "withdrawn"
    last_change: float = float("-inf")
    pending: Announcement | None = None
    overloaded: bool = False
    #: Since when the load has been on the other side of the threshold that would flip ``overloaded``.
    load_since: float | None = None


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    t: float
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class DrainChanged:
    t: float
    present: bool


@dataclass(frozen=True)
class Load:
    """The server's utilisation (requests taken on / capacity) at ``t``."""

    t: float
    utilisation: float


@dataclass(frozen=True)
class Tick:
    t: float


@dataclass(frozen=True)
class Stop:
    t: float


Event = CheckResult | DrainChanged | Load | Tick | Stop

# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announce:
    """Send the route as ``mode`` (``normal`` or ``demoted``) — replaces whatever was sent before."""

    mode: Literal["normal", "demoted"]


@dataclass(frozen=True)
class Withdraw:
    pass


@dataclass(frozen=True)
class RunHooks:
    """Health changed: run the hooks with STATE=<health> in their environment."""

    health: Health


@dataclass(frozen=True)
class Log:
    t: float
    event: str
    health: Health
    announced: Announcement
    detail: str = ""


@dataclass(frozen=True)
class ScheduleCheck:
    """Run the next check ``delay`` seconds after the last one started (at once if that has passed)."""

    delay: float


@dataclass(frozen=True)
class ScheduleTick:
    """Wake the machine at ``at`` (a pending, debounced change is due then)."""

    at: float


Action = Announce | Withdraw | RunHooks | Log | ScheduleCheck | ScheduleTick


def _next_health(config: Config, health: Health, count: int, ok: bool) -> tuple[Health, int]:
    """Health after one check result, with the new consecutive count."""
    if health in ("up", "falling"):
        if ok:
            return "up", 0
        count = count + 1 if health == "falling" else 1
        return ("down", 0) if count >= config.fall else ("falling", count)
    # init, down, rising: climbing towards up
    if not ok:
        if health == "init":
            count = count + 1
            return ("down", 0) if count >= config.fall else ("init", count)
        return "down", 0
    # ``init`` counts only failures (towards ``fall``): like ExaBGP's healthcheck (INIT → RISING with one
    # pass), a pass after them starts the climb at one — counting on from the failures made a server up
    # after a single pass with rise=2.
    count = count + 1 if health == "rising" else 1
    return ("up", 0) if count >= config.rise else ("rising", count)


def wanted(config: Config, health: Health, draining: bool, overloaded: bool = False) -> Announcement:
    """What should be announced for this health, drain and overload state."""
    if health in ("exit", "init"):
        return "withdrawn"  # never announced before the first verdict, nor after the end
    by_health: Announcement = "normal" if health in ("up", "falling") else config.on_down
    # The worst wins: a failed server never attracts traffic because it is draining or overloaded.
    return max(by_health, config.drain_mode if draining else "normal", "demoted" if overloaded else "normal",
               key=_BADNESS.index)


def _overload(config: Config, state: State, event: Load) -> State:
    """``overloaded`` after one utilisation sample, with the hysteresis of the config."""
    if config.overload_above is None:
        return state
    if state.overloaded:
        away, hold = event.utilisation < config.restore_below, config.restore_after
    else:
        away, hold = event.utilisation >= config.overload_above, config.overload_after
    if not away:
        return replace(state, load_since=None)
    since = event.t if state.load_since is None else state.load_since
    if event.t - since >= hold:
        return replace(state, overloaded=not state.overloaded, load_since=None)
    return replace(state, load_since=since)


def _send(announcement: Announcement) -> Action:
    return Withdraw() if announcement == "withdrawn" else Announce(announcement)


def _apply(config: Config, state: State, want: Announcement, t: float) -> tuple[State, list[Action]]:
    """Move the announcement towards ``want``, honouring the debounce window."""
    if want == state.announced:
        return replace(state, pending=None), []
    due = state.last_change + config.debounce
    if t < due:
        return replace(state, pending=want), [ScheduleTick(due)]
    return replace(state, announced=want, last_change=t, pending=None), [_send(want)]


def step(config: Config, state: State, event: Event) -> tuple[State, list[Action]]:
    """One decision. Pure: the same inputs always give the same outputs."""
    if state.health == "exit":
        return state, []
    actions: list[Action] = []
    health: Health = state.health
    count, draining = state.count, state.draining
    name = type(event).__name__
    detail = ""
    if isinstance(event, Stop):
        new = replace(state, health="exit", announced="withdrawn", pending=None, last_change=event.t)
        acts: list[Action] = [] if state.announced == "withdrawn" else [Withdraw()]
        return new, [*acts, RunHooks("exit"), Log(event.t, "stop", "exit", "withdrawn")]
    if isinstance(event, CheckResult):
        health, count = _next_health(config, state.health, state.count, event.ok)
        name, detail = ("check-ok" if event.ok else "check-failed"), event.detail
        fast = health in ("rising", "falling", "init")
        actions.append(ScheduleCheck(config.fast_interval if fast else config.interval))
    elif isinstance(event, DrainChanged):
        draining = event.present
        name = "drain-on" if draining else "drain-off"
    elif isinstance(event, Load):
        loaded = _overload(config, state, event)
        if loaded.overloaded == state.overloaded:
            return loaded, []  # a sample that changes nothing is not worth a log line
        state = loaded
        name, detail = ("overload-on" if loaded.overloaded else "overload-off"), f"utilisation {event.utilisation:.2f}"
    state2 = replace(state, health=health, count=count, draining=draining)
    state3, sends = _apply(config, state2, wanted(config, health, draining, state2.overloaded), event.t)
    if health != state.health:
        actions.append(RunHooks(health))
    actions += sends
    if health != state.health or sends or not isinstance(event, CheckResult):
        actions.append(Log(event.t, name, health, state3.announced, detail))
    return state3, actions
