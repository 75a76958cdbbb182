"""Traffic protection on two_pops.yaml with its origin: a worker fetching from the origin through the
origin's circuit breaker. ``origin-errors`` opens the breaker after exactly the failure threshold (the
origin stops seeing requests), and once the origin is back the breaker closes through half-open probes
after the configured open time; ``origin-down`` and ``origin-slow`` are answered without the worker
failing. The breaker's open time is shortened to 2 s for the test (the design's 30 s otherwise).

Overload: a priority mix at twice sjc's capacity (50 requests/s per server here) from the client that
reaches sjc: P0 all served, P1 at least 99 %, the shedding from P3 upwards, and the excess spilled to lax
at L7."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.clock import monotonic
from core.wait import wait_for
from lab.load.overload import (
    FETCH_HOST,
    FETCH_WORKER,
    breaker_state,
    client_get,
    deploy_classes,
    level_of,
    origin_status,
    overload,
)
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES

OPEN_S = 2.0
CAPACITY_RPS = 50.0
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = yaml.safe_load((TOPOLOGIES / "two_pops.yaml").read_text())
    spec.setdefault("settings", {})["breakers"] = {"origin": {"failure_threshold": 5, "success_threshold": 3,
                                                              "open_s": OPEN_S}}
    spec["settings"]["server_capacity_rps"] = CAPACITY_RPS
    with tempfile.TemporaryDirectory(prefix="anylab-test-protect-") as tmp:
        path = Path(tmp) / "two_pops_protect.yaml"
        path.write_text(yaml.safe_dump(spec))
        with Lab.from_file(path, name="tprot") as running:
            running.deploy("fetcher", FETCH_HOST, FETCH_WORKER)
            yield running


def get(lab: Lab) -> tuple[int, str]:
    return client_get(lab, lab.topo.clients[0].name, FETCH_HOST)


def breaker(lab: Lab) -> dict[str, Any]:
    return breaker_state(lab, "fetcher/origin")


def test_a_worker_reaches_the_origin_by_name(lab: Lab) -> None:
    status, body = get(lab)
    assert status == 200 and json.loads(body)["origin"] == "origin"


def test_origin_errors_open_the_breaker_at_the_threshold_and_half_open_closes_it(lab: Lab) -> None:
    lab.fail("origin-errors", "origin")
    try:
        answers = [get(lab) for _ in range(4)]
        # Request 1 tries 4 times (the design's 3 retries), request 2 fails once more: 5 = the threshold.
        assert answers[0][0] == 500 and "circuit breaker 'origin' is open" in answers[1][1]
        assert all(a[0] == 503 for a in answers[1:])
        assert origin_status(lab)["failed"] == 5  # after that the origin saw nothing more
        assert breaker(lab)["mode"] == "open"
    finally:
        lab.restore("origin")
    t_open = monotonic()
    refused = get(lab)
    if monotonic() - t_open < OPEN_S:
        assert refused[0] == 503  # still open: nothing reaches the origin before open_s
    wait_for(lambda: get(lab)[0] == 200, timeout=OPEN_S + 10, what="a half-open probe to succeed", interval=0.2)
    for _ in range(2):  # the other two successes of the success threshold
        assert get(lab)[0] == 200
    state = breaker(lab)
    assert state["mode"] == "closed" and state["opened"] == 1


@pytest.mark.parametrize("scenario", ["origin-down", "origin-slow"])
def test_a_dead_or_slow_origin_is_an_answer_not_a_crash(lab: Lab, scenario: str) -> None:
    lab.fail(scenario, "origin")
    try:
        status, body = get(lab)
        assert status in (200, 503), body  # slow: answered after 2 s; down: refused, after retries
        if scenario == "origin-down":
            assert status == 503 and "origin unavailable" in body
    finally:
        lab.restore("origin")
    wait_for(lambda: get(lab)[0] == 200, timeout=OPEN_S + 30, what="the origin to serve again", interval=0.5)


def test_a_dead_control_plane_is_level_4_at_every_server(lab: Lab) -> None:
    def levels() -> dict[str, int]:
        return {s.name: level for s in lab.topo.servers if (level := level_of(lab, s.name)) is not None}

    lab.fail("control-down", "control")
    try:
        # The servers' next sync fails at once (connection refused); the edge writes its level every second.
        wait_for(lambda: (set(levels().values()) == {4} and len(levels()) == len(lab.topo.servers)) or None,
                 timeout=15, what="level 4 at every server", interval=0.2, describe=lambda: str(levels()))
        assert get(lab)[0] == 200  # existing code runs
    finally:
        lab.restore("control")
    wait_for(lambda: set(levels().values()) == {0} or None, timeout=20, what="level 0 again", interval=0.2,
             describe=lambda: str(levels()))


def test_twice_a_pops_capacity_sheds_p3_first_and_spills_the_excess(lab: Lab) -> None:
    deploy_classes(lab)
    result = overload(lab, "sjc", multiple=2.0, duration=10.0)
    c = result["classes"]
    assert all(v["failed"] == 0 for v in c.values()), c
    assert c["P0"]["served"] == c["P0"]["offered"] > 0 and c["P0"]["spilled"] == 0  # P0 never moves
    assert c["P1"]["served"] >= 0.99 * c["P1"]["offered"], c
    # Shed from P3 upwards: a class loses at least as much as the more important one above it.
    shed = [c[p]["shed"] / c[p]["offered"] for p in ("P1", "P2", "P3")]
    assert shed == sorted(shed) and shed[2] > 0, shed
    # The excess went to lax: it served spilled requests of every class but P0.
    assert 0.2 < result["spilled_share"] < 0.7, result["spilled_share"]
    assert result["protect"]["lax-s1"]["counters"]["spilled_in"] > 0
    assert result["protect"]["sjc-s1"]["counters"]["spill_failed"] == 0
