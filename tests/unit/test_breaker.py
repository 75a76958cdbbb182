"""The circuit breaker's state machine, by tables."""

from __future__ import annotations

import pytest

from protect.breaker import DESIGN, Call, Config, Result, State, step

CFG = Config(failure_threshold=3, success_threshold=2, open_s=10.0, half_open_probes=1)


Events = list[tuple[str, float]]


def run(events: Events, cfg: Config = CFG) -> list[tuple[str, list[str]]]:
    """('call', t) or ('ok'|'fail'|'probe_ok'|'probe_fail', t) → (mode after, actions) each."""
    state, out = State(), []
    for kind, now in events:
        if kind == "call":
            state, acts = step(cfg, state, Call(now))
        else:
            state, acts = step(cfg, state, Result(now, kind.endswith("ok"), state.generation, kind.startswith("probe")))
        out.append((str(state.mode), [str(a) for a in acts]))
    return out


@pytest.mark.parametrize(("events", "expected"), [
    # closed: successes reset the count; three failures in a row open
    ([("fail", 0), ("ok", 1), ("fail", 2), ("fail", 3)], [("closed", [])] * 4),
    ([("fail", 0), ("fail", 1), ("fail", 2)], [("closed", []), ("closed", []), ("open", ["opened"])]),
])
def test_closed(events: Events, expected: list[tuple[str, list[str]]]) -> None:
    assert run(events) == expected


def test_open_refuses_then_admits_exactly_one_probe_after_open_s() -> None:
    out = run([("fail", 0), ("fail", 0), ("fail", 1),
               ("call", 5),            # still open
               ("call", 11),           # open_s passed: half-open, this one is the probe
               ("call", 11.1),         # a second call while the probe is out: refused
               ("probe_ok", 12),       # one success of two
               ("call", 12.1),         # the next probe
               ("probe_ok", 13)])      # success threshold: closed
    assert out[3] == ("open", ["reject"])
    assert out[4] == ("half_open", ["half_opened", "admit_probe"])
    assert out[5] == ("half_open", ["reject"])
    assert out[6] == ("half_open", [])
    assert out[7] == ("half_open", ["admit_probe"])
    assert out[8] == ("closed", ["closed"])


def test_a_failed_probe_opens_again_for_a_whole_period() -> None:
    out = run([("fail", 0), ("fail", 0), ("fail", 0), ("call", 10), ("probe_fail", 10.5),
               ("call", 19), ("call", 20.5)])
    assert out[4] == ("open", ["opened"])
    assert out[5] == ("open", ["reject"])  # 8.5 s after reopening
    assert out[6] == ("half_open", ["half_opened", "admit_probe"])


def test_results_of_calls_from_before_a_change_are_ignored() -> None:
    state = State()
    old = state.generation
    for _ in range(3):
        state, _acts = step(CFG, state, Result(0, False, state.generation))
    assert state.mode == "open"
    state, acts = step(CFG, state, Result(1, True, old))  # a slow call admitted while closed
    assert state.mode == "open" and acts == []


def test_the_designs_settings() -> None:
    origin = DESIGN["origin"]
    assert (origin.failure_threshold, origin.success_threshold, origin.open_s) == (5, 3, 30)
    assert (DESIGN["kv"].failure_threshold, DESIGN["kv"].open_s) == (10, 10)
    assert (DESIGN["do"].failure_threshold, DESIGN["do"].open_s) == (3, 60)
    with pytest.raises(ValueError):
        Config(failure_threshold=0)
