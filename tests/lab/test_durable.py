"""Durable Objects on global.yaml: six failovers (region-down, owner host crash, owner cut off from the
directory) under Jepsen-style load from every client. The history is linearizable, no acknowledged
increment is lost, the old owner is fenced after a partition heals, and every failover is served by the
new owner within the bound its timers give."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lab.load.do_nemesis import Nemesis, NemesisSpec
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "global.yaml", name="tdo") as running:
        yield running


@pytest.fixture(scope="module")
def result(lab: Lab) -> dict[str, Any]:
    return Nemesis(lab, NemesisSpec(failovers=6, seed="lab-test")).run()


def test_history_is_linearizable_and_nothing_acknowledged_is_lost(result: dict[str, Any]) -> None:
    assert result["failovers"] == 6
    assert result["linearizable"], result["verdicts"]
    assert result["acked_lost"] == 0
    assert result["final_reads"] == 6  # every object readable after the last failover
    assert result["ops"] > 300


def directory_events(lab: Lab) -> list[dict[str, Any]]:
    """The DO directory's decisions (do-events.jsonl on the control node)."""
    path = lab.node_dir(lab.topo.control.name) / "do-events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def spawn_s(lab: Lab, regions: list[str], t0: float, t1: float) -> float:
    """The isolate starts the hosts of ``regions`` reported between ``t0`` and ``t1``, added up per host
    and the largest of those sums: a host's spawner starts one isolate at a time, so the moved objects'
    first calls wait for each other's starts (0: none)."""
    per_host = []
    for region in regions:
        events = lab.node_dir(lab.topo.kv_master_of(region).name) / "do-events.jsonl"
        per_host.append(sum(float(e["spawn_s"]) for e in map(json.loads, events.read_text().splitlines())
                            if e["event"] == "isolate" and t0 <= e["time"] <= t1))
    return max(per_host, default=0.0)


def test_every_failover_is_served_by_the_new_owner_within_the_timers(lab: Lab, result: dict[str, Any]) -> None:
    s = lab.topo.spec.settings
    # The directory declares the region down lease + margin after the last renewal it got (at most one
    # check tick, renew/2, later); the new owner hears of it on its next renewal (≤ renew) or from the
    # first call with the new epoch; the routers retry every 50 ms. 0.5 s of margin for a call through
    # the lab on a busy 2-core machine.
    # The new owner then starts the moved objects' sandboxed isolates (each object's first event spawns
    # one, one at a time): those starts, as the host measured them (its "isolate" events during the
    # failover), come on top.
    bound = s.do_lease_s + s.do_margin_s + s.do_renew_s * 1.5 + 0.05 + 0.5
    for run in result["runs"]:
        phases = run["phases_s"]
        assert run["moved"] >= 1, run
        # Detection, the timers' part: the directory declares the region down lease + margin after the last
        # renewal it got, at most one check tick (renew/2) late — 0.1 s for its loop on a busy machine.
        tick = s.do_lease_s + s.do_margin_s + s.do_renew_s / 2
        downs = [e for e in directory_events(lab) if e["event"] == "region_down" and e["region"] == run["region"]
                 and e["time"] >= run["t_fault"]]
        assert downs and downs[0]["silent_s"] <= tick + 0.1, (run["scenario"], run["region"], downs[:1])
        # End to end from the fault, the cut's own time on top (nftables on the region's nodes, a renewal
        # already on its way): 1.0 s of margin — 0.5 s was exceeded twice in one day (1.86 and 1.89 s) on
        # this 2-core machine under the nemesis's load; the check above now tells the timers' part apart.
        assert phases["detect"] <= tick + 1.0, phases
        spawn = spawn_s(lab, run["to"], run["t_fault"], run["t_fault"] + phases["first_served"])
        assert phases["first_served"] <= bound + spawn, (run["scenario"], run["region"], run["moved"], phases,
                                                         spawn)
    assert bound <= 2.0  # the goal for the default timers


def test_a_partitioned_owner_is_fenced_when_it_heals(lab: Lab, result: dict[str, Any]) -> None:
    """The owner cut off from the directory is fenced once the partition heals, and a write sent to it at
    the epoch it owned — as a router that had not heard of the move would — is refused as certainly not
    done (issue 20: this counted "fenced" lines without ever trying a write on the old owner)."""
    import base64

    from core import unix_http

    cuts = [r for r in result["runs"] if r["scenario"] == "do-cut"]
    assert cuts
    for run in cuts:
        host_dir = lab.node_dir(lab.topo.kv_master_of(run["region"]).name)
        fenced = [line for line in (host_dir / "do-events.jsonl").read_text().splitlines() if '"fenced"' in line]
        assert len(fenced) >= run["moved"], run
        for key, epoch in run["moved_from"].items():
            call = {"key": key, "epoch": epoch, "version": "any",
                    "request": {"method": "POST", "url": "/incr", "headers": {},
                                "body": base64.b64encode(b"1").decode()}}
            status, body = unix_http.request(str(host_dir / "do.sock"), "POST", "/v1/call", json.dumps(call).encode(),
                                             {"Content-Type": "application/json"}, timeout=10.0)
            reply = json.loads(body)
            assert (status, reply["error"], reply["definite"]) == (421, "not_owner", True), (key, epoch, reply)


def test_every_object_has_a_live_owner_and_a_backup_afterwards(lab: Lab, result: dict[str, Any]) -> None:
    listing = lab.wait_do_leases()
    assert len(listing["objects"]) == 6
    for key, placed in listing["objects"].items():
        assert listing["regions"][placed["owner"]]["live"], key
        assert placed["backup"] not in (None, placed["owner"]), key
