"""two_pops.yaml end to end: preferred PoP, failover on withdrawal, and back.

Timing bound: a withdrawal reaches c1's router r1 through two bgpd hops (r2, then r1 switches to the
path via r3 that it already holds). FRR holds each update ~50 ms before relaying it (hard-coded
process-queue hold in bgpd) plus 10 ms in zebra, so the floor is ≈ 0.12 s; MARGIN_S covers a busy
2-core CI machine. Nothing here depends on the hold timer: a graceful withdrawal is sent at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.load.client_http import client_request
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES

BGPD_HOLD_S = 0.05
ZEBRA_HOLD_S = 0.01
HOPS = 2
MARGIN_S = 1.0
SHIFT_BOUND_S = HOPS * (BGPD_HOLD_S + ZEBRA_HOLD_S) + MARGIN_S


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "two_pops.yaml", name="ttwo") as running:
        yield running


def test_client_reaches_preferred_pop(lab: Lab) -> None:
    assert lab.catchment() == {"c1": "sjc"} == lab.predicted()
    assert all(s.up == s.total for s in lab.sessions())


def test_withdraw_moves_client_to_backup_and_back(lab: Lab) -> None:
    t = lab.withdraw("sjc")
    shift = lab.wait_shifted(["c1"], t)["c1"]
    assert (shift.from_pop, shift.to_pop) == ("sjc", "lax")
    assert shift.shift_s is not None and shift.shift_s < SHIFT_BOUND_S
    # sjc keeps answering until the route moves: a graceful withdrawal loses nothing.
    assert shift.lost == 0
    t = lab.announce("sjc")
    back = lab.wait_shifted(["c1"], t)["c1"]
    assert (back.from_pop, back.to_pop) == ("lax", "sjc")
    assert back.shift_s is not None and back.shift_s < SHIFT_BOUND_S


def http_get(lab: Lab, client: str, host: str) -> str:
    status, server, body = client_request(lab, client, host, "/hello", timeout=5)
    return f"{status} {server} {body}"


def test_deployed_worker_answers_through_anycast(lab: Lab) -> None:
    assert http_get(lab, "c1", "nobody.example").startswith("404 sjc/sjc-s1 ")
    lab.deploy("hello", "hello.example", "async def fetch(request, env, ctx):\n    return 'hi ' + env.WHO\n",
               {"WHO": "c1"})
    assert http_get(lab, "c1", "hello.example") == "200 sjc/sjc-s1 hi c1"
