"""The health agent's state machine, as tables of (events → health, announcement, sent actions)."""

from __future__ import annotations

import pytest

from health.fsm import (
    Announce,
    CheckResult,
    Config,
    DrainChanged,
    Event,
    Load,
    Log,
    RunHooks,
    ScheduleCheck,
    ScheduleTick,
    State,
    Stop,
    Tick,
    Withdraw,
    step,
)


def run(config: Config, script: str, state: State | None = None) -> tuple[State, list[str]]:
    """Feed events, one letter each, 10 ms apart: ``+`` check ok, ``-`` check failed, ``D``/``d`` drain
    file created/removed, ``t`` a tick, ``S`` stop. Returns the last state and what was sent
    (``N`` announce normal, ``M`` announce demoted, ``W`` withdraw), one string per event."""
    state = state or State()
    sent = []
    for i, ch in enumerate(script):
        t = i * 0.01
        events: dict[str, Event] = {"+": CheckResult(t, True), "-": CheckResult(t, False),
                                    "D": DrainChanged(t, True), "d": DrainChanged(t, False), "t": Tick(t),
                                    "S": Stop(t)}
        event = events[ch]
        state, actions = step(config, state, event)
        sent.append("".join("N" if a == Announce("normal") else "M" if a == Announce("demoted") else "W"
                            for a in actions if isinstance(a, Announce | Withdraw)))
    return state, sent


@pytest.mark.parametrize(
    ("config", "script", "health", "announced", "sent"),
    [
        # rise 2: two passes to come up, announced once
        (Config(rise=2, fall=2), "++", "up", "normal", ["", "N"]),
        (Config(rise=1, fall=1), "+", "up", "normal", ["N"]),
        # a single failure while up only starts falling
        (Config(rise=2, fall=2), "++-", "falling", "normal", ["", "N", ""]),
        (Config(rise=2, fall=2), "++--", "down", "withdrawn", ["", "N", "", "W"]),
        # a pass while falling returns to up without re-announcing
        (Config(rise=2, fall=3), "++--+", "up", "normal", ["", "N", "", "", ""]),
        # a failure while rising goes back down
        (Config(rise=3, fall=2), "++-", "down", "withdrawn", ["", "", ""]),
        # failing from the start: init → down, never announced
        (Config(rise=2, fall=2), "--", "down", "withdrawn", ["", ""]),
        # issue 20: a failure, then a pass, in init is not up with rise=2 (the pass starts the climb at
        # one, as ExaBGP's healthcheck's INIT → RISING); a second pass is
        (Config(rise=2, fall=3), "-+", "rising", "withdrawn", ["", ""]),
        (Config(rise=2, fall=3), "-++", "up", "normal", ["", "", "N"]),
        (Config(rise=3, fall=3), "--+", "rising", "withdrawn", ["", "", ""]),
        # on_down=demoted: down sends the demoted route instead of withdrawing (make-before-break)
        (Config(rise=1, fall=1, on_down="demoted"), "+-", "down", "demoted", ["N", "M"]),
        (Config(rise=1, fall=1, on_down="demoted"), "+-+", "up", "normal", ["N", "M", "N"]),
        # drain: demoted while up, restored when the file goes
        (Config(rise=1, fall=1), "+Dd", "up", "normal", ["N", "M", "N"]),
        (Config(rise=1, fall=1, drain_mode="withdrawn"), "+D", "up", "withdrawn", ["N", "W"]),
        # draining wins over health; removing the file while down stays withdrawn
        (Config(rise=1, fall=1), "+D-d", "down", "withdrawn", ["N", "M", "W", ""]),
        # stop withdraws once, then nothing moves
        (Config(rise=1, fall=1), "+S+", "exit", "withdrawn", ["N", "W", ""]),
        (Config(rise=1, fall=1), "-S", "exit", "withdrawn", ["", ""]),
    ],
)
def test_table(config: Config, script: str, health: str, announced: str, sent: list[str]) -> None:
    state, got = run(config, script)
    assert (state.health, state.announced, got) == (health, announced, sent)


def test_debounce_defers_and_tick_applies() -> None:
    config = Config(rise=1, fall=1, debounce=0.025)
    state, sent = run(config, "+-")  # t=0 announce, t=0.01 wants withdraw: too soon
    assert (state.announced, state.pending, sent) == ("normal", "withdrawn", ["N", ""])
    _, actions = step(config, State(health="up", announced="normal", last_change=0.0), CheckResult(0.01, False))
    assert ScheduleTick(0.025) in actions
    state, actions = step(config, state, Tick(0.03))
    assert state.announced == "withdrawn" and Withdraw() in actions and state.pending is None


def test_debounced_change_that_reverts_is_never_sent() -> None:
    config = Config(rise=1, fall=1, debounce=1.0)
    state, sent = run(config, "+-+t")
    assert (state.announced, state.pending, sent) == ("normal", None, ["N", "", "", ""])


def test_fast_interval_while_moving() -> None:
    config = Config(rise=2, fall=3, interval=1.0, fast_interval=0.1)
    state = State(health="up")
    state, actions = step(config, state, CheckResult(0.0, False))
    assert ScheduleCheck(0.1) in actions and state.health == "falling"
    state, actions = step(config, State(health="up"), CheckResult(0.0, True))
    assert ScheduleCheck(1.0) in actions


def test_hooks_and_log_on_health_change_only() -> None:
    config = Config(rise=1, fall=2)
    state, actions = step(config, State(health="up", announced="normal"), CheckResult(1.0, True))
    assert not [a for a in actions if isinstance(a, RunHooks | Log)]
    _, actions = step(config, state, CheckResult(2.0, False, "HTTP 503"))
    assert RunHooks("falling") in actions
    assert Log(2.0, "check-failed", "falling", "normal", "HTTP 503") in actions


def test_detection_bound() -> None:
    assert Config(interval=0.05, fast_interval=0.02, fall=2, timeout=0.03).detection_bound() == pytest.approx(0.11)
    assert Config(interval=0.3, fast_interval=0.1, fall=3, timeout=0.2).detection_bound() == pytest.approx(0.9)


@pytest.mark.parametrize("bad", [{"rise": 0}, {"fall": 0}, {"interval": 0}, {"debounce": -1}])
def test_config_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Config(**bad)  # type: ignore[arg-type]


OVERLOAD = Config(overload_above=0.9, overload_after=2.0, restore_below=0.5, restore_after=5.0)


@pytest.mark.parametrize(("samples", "overloaded", "sent"), [
    # (time, utilisation) after the server is up and announced normal at t=0
    ([(1, 0.95), (2.9, 0.99)], False, ""),            # not yet 2 s above the threshold
    ([(1, 0.95), (3, 0.92)], True, "M"),               # 2 s at ≥ 90 %: demoted
    ([(1, 0.95), (2, 0.5), (3, 0.95)], False, ""),     # a dip below restarts the count
    ([(1, 0.95), (3, 0.95), (4, 0.6), (20, 0.7)], True, "M"),        # 0.6–0.7 is not low enough to restore
    ([(1, 0.95), (3, 0.95), (4, 0.3), (8.9, 0.3)], True, "M"),       # not yet 5 s below 50 %
    ([(1, 0.95), (3, 0.95), (4, 0.3), (9, 0.2)], False, "MN"),       # 5 s below: normal again
])
def test_overload_demotes_with_hysteresis(samples: list[tuple[float, float]], overloaded: bool, sent: str) -> None:
    state, _ = run(OVERLOAD, "++")
    out = ""
    for t, u in samples:
        state, actions = step(OVERLOAD, state, Load(t, u))
        out += "".join("N" if a == Announce("normal") else "M" for a in actions if isinstance(a, Announce))
    assert (state.overloaded, out) == (overloaded, sent)


def test_an_overloaded_server_that_fails_is_withdrawn_and_load_is_ignored_when_off() -> None:
    state, _ = run(OVERLOAD, "++")
    state, _ = step(OVERLOAD, state, Load(1, 1.0))
    state, _ = step(OVERLOAD, state, Load(3, 1.0))
    state, actions = step(OVERLOAD, state, CheckResult(3.1, False))
    state, actions = step(OVERLOAD, state, CheckResult(3.2, False))
    assert state.announced == "withdrawn" and Withdraw() in actions
    plain, _ = run(Config(), "++")
    assert step(Config(), plain, Load(5, 5.0)) == (plain, [])
