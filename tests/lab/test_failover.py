"""Fault timing on real daemons, FRR and BIRD: each bound follows from the configured timers, with its
margin written next to it (lab/measure/runner.py defines every figure).

failover.yaml, profile ``fast``: health checks every 50 ms (20 ms while falling), fall 2, timeout 30 ms
→ detection bound 0.11 s; BFD 50 ms × 3 between PoP servers and r2; BGP keepalive 1 s / hold 3 s.
A withdrawal reaches the clients' router r1 through two bgpd hops; FRR holds each update ~50 ms
(hard-coded in bgpd) + 10 ms in zebra, BIRD ~0.2 ms — both inside the 0.3 s margins below.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from core.clock import monotonic
from core.wait import wait_for
from lab.measure.runner import measure
from lab.record.probes import last_answer
from lab.run.lab import Lab
from model.load import load_topology
from tests.conftest import TOPOLOGIES
from tests.lab.dead_man import stopped_holder_is_withdrawn

FAST = load_topology(TOPOLOGIES / "failover.yaml").spec.settings.profile
assert FAST.bfd is not None
DETECTION_S = FAST.health.detection_bound  # 0.11 s
BFD_S = FAST.bfd.detect_s  # 0.15 s
MARGIN_S = 0.3  # two relaying hops (≤ 0.12 s on FRR) and scheduling on a busy 2-core machine


@pytest.fixture(scope="module", params=["frr", "bird"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "failover.yaml", name=f"tfo{request.param}", router_kind=request.param) as up:
        yield up


def moves(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (run,) = result["runs"]
    return {c: r for c, r in run["clients"].items() if r["shift_s"] is not None}


def test_service_crash_shifts_within_detection_bound(lab: Lab) -> None:
    result, _ = measure(lab, "service-crash", "sjc")
    moved = moves(result)
    assert set(moved) == {"c1", "c2", "c3", "c4"} and {m["to_pop"] for m in moved.values()} == {"lax"}
    assert result["runs"][0]["decision_s"] <= DETECTION_S + 0.05  # 50 ms: the agent's own scheduling
    assert max(m["shift_s"] for m in moved.values()) <= DETECTION_S + MARGIN_S
    assert result["catchment_restored"]


def test_server_silent_moves_only_its_flows_within_bfd_time(lab: Lab) -> None:
    # ECMP hashes each client's flow (its source port is random) to one of sjc's two servers: fail the
    # one serving more of them, so that some move and, usually, some stay.
    serving = [p.server for c in lab.topo.clients if (p := last_answer(lab.probes(c.name)))]
    target = max(("sjc-s1", "sjc-s2"), key=serving.count)
    sibling = "sjc-s2" if target == "sjc-s1" else "sjc-s1"
    result, _ = measure(lab, "server-silent", target)
    clients = result["runs"][0]["clients"]
    on_target = {c for c, r in clients.items() if r["from_server"] == target}
    assert on_target, clients
    for c, r in clients.items():
        if c in on_target:  # to its sibling: the PoP keeps serving
            assert r["to_server"] == sibling and r["shift_s"] <= BFD_S + MARGIN_S, (c, r)
        else:  # flows on the sibling are not touched
            assert r["lost"] == 0 and r["shift_s"] is None, (c, r)
    assert result["catchment_restored"]


def test_drain_with_demotion_loses_nothing(lab: Lab) -> None:
    result, _ = measure(lab, "drain", "sjc")
    moved = moves(result)
    assert set(moved) == {"c1", "c2", "c3", "c4"}
    # make-before-break: sjc keeps answering until the demoted route has moved every client
    assert all(m["lost"] == 0 and m["to_pop"] == "lax" for m in moved.values()), moved
    assert result["catchment_restored"]


def test_speaker_crash_is_seen_at_once(lab: Lab) -> None:
    """ExaBGP killed: the kernel closes its TCP sessions, so r2 drops the routes without waiting for
    BFD or the hold timer."""
    result, _ = measure(lab, "speaker-crash", "sjc")
    moved = moves(result)
    assert set(moved) == {"c1", "c2", "c3", "c4"}
    assert max(m["shift_s"] for m in moved.values()) <= MARGIN_S + 0.2  # 0.2 s: the TCP teardown
    assert result["catchment_restored"]


def test_bad_fault_requests_leave_the_lab_untouched(lab: Lab) -> None:
    from core.errors import UsageError

    for args in (("meteor", "sjc"), ("drain", "nowhere"), ("link-down", "sjc")):
        with pytest.raises(UsageError):
            lab.fail(*args)
    with pytest.raises(UsageError):
        lab.restore("sjc")
    assert lab.injector.active == {}


def _variant(name: str, profile: str | dict[str, Any]) -> Lab:
    return Lab.from_file(TOPOLOGIES / "failover.yaml", name, profile=profile)


def test_silent_server_without_bfd_waits_for_the_hold_timer() -> None:
    """FRR, BFD off: r2 notices only when the hold timer (3 s) runs out, at most one keepalive early."""
    with _variant("tfonobfd", {"base": "fast", "bfd": None}) as lab:
        prof = lab.topo.spec.settings.profile
        result, _ = measure(lab, "server-silent", "sjc")
        moved = moves(result)
        assert moved
        for m in moved.values():
            # 0.5 s: hold expiry → withdrawal → two hops, on a busy machine
            assert prof.hold - prof.keepalive <= m["shift_s"] <= prof.hold + 0.5, m


@pytest.mark.slow
def test_seed_profile_reproduces_the_design_timeline() -> None:
    """The design's settings (health every 1 s, fall 5; MRAI 30 s): detection takes seconds ("health check
    detects in 5 s"), and FRR holds the withdrawal at r2 until r2's MRAI timer towards r1 — started by
    its last UPDATE to r1, when the lab came up — runs out: up to 30 s ("BGP converged at 30 s")."""
    with _variant("tfoseed", "seed") as lab:
        prof = lab.topo.spec.settings.profile
        result, _ = measure(lab, "service-crash", "sjc")
        shifts = [m["shift_s"] for m in moves(result).values()]
        low = prof.health.fast_interval * (prof.health.fall - 1)  # the fastest a fall-5 verdict can come
        high = prof.health.detection_bound + prof.mrai + MARGIN_S
        assert shifts and all(low <= s <= high for s in shifts), shifts


@pytest.mark.parametrize(("scenario", "target", "bound_s"), [
    ("pop-down", "sjc", BFD_S + MARGIN_S),  # every server silent: BFD at r2
    ("server-crash", "sjc", BFD_S + MARGIN_S),  # carrier lost: r2 drops the sessions at once
    ("link-down", "r1:r2", MARGIN_S),  # r1 loses the link itself and already holds the path via r3
])
def test_other_faults_move_everyone_to_lax_and_restore(lab: Lab, scenario: str, target: str,
                                                        bound_s: float) -> None:
    result, _ = measure(lab, scenario, target)
    moved = moves(result)
    assert set(moved) == {"c1", "c2", "c3", "c4"} and {m["to_pop"] for m in moved.values()} == {"lax"}
    assert max(m["shift_s"] for m in moved.values()) <= bound_s, moved
    assert result["catchment_restored"]


def test_flap_ends_restored(lab: Lab) -> None:
    result, _ = measure(lab, "flap", "lax", count=2, period=0.4)  # the backup flaps: nobody moves
    (run,) = result["runs"]
    assert all(c["lost"] == 0 for c in run["clients"].values())
    assert result["catchment_restored"] and lab.injector.active == {}


def health_events(lab: Lab, server: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (lab.node_dir(server) / "health-events.jsonl").read_text().splitlines()]


def pid_of(lab: Lab, server: str, daemon: str) -> int:
    (d,) = [d for d in lab.daemons[server] if d.name == daemon]
    assert d.proc is not None
    return d.proc.pid


def test_a_hung_service_is_withdrawn_within_the_detection_bound(lab: Lab) -> None:
    """Issue 20: the edge worker stopped (SIGSTOP: it accepts nothing, answers nothing) — every check hangs
    to its timeout; the down decision comes within the detection bound, which counts a hung check at its
    timeout (core.timers.detection_bound), plus the agent's own scheduling."""
    server = "sjc-s1"
    pid = pid_of(lab, server, "edge")
    t_stop = monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        down = wait_for(lambda: [e for e in health_events(lab, server) if e["health"] == "down" and e["t"] >= t_stop],
                        timeout=5.0, what="the agent to decide down", interval=0.02)
        assert down[0]["t"] - t_stop <= DETECTION_S + 0.05, down[0]  # 50 ms: the agent's own scheduling
        assert down[0]["announced"] == "withdrawn"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: lab.exabgp(server).api("status")["mode"] == "normal", timeout=10.0,
             what="the resumed server to be announced again", interval=0.05)


def test_a_hung_health_agent_is_withdrawn_when_its_lease_runs_out(lab: Lab) -> None:
    """Issue 20: the split server's health agent holds the ExaBGP API with a lease (a dead-man's switch, as
    the folded one does); stopped, it renews nothing and the API withdraws when the lease runs out — before,
    a dead or hung agent left its server announced for good. Resumed, it holds again."""
    stopped_holder_is_withdrawn(lab, "sjc-s2", pid_of(lab, "sjc-s2", "health"), MARGIN_S)
