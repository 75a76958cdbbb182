"""Scaling a PoP within its rack, on two_pops.yaml with room for a second sjc server: by hand (the new
server announces, both upstream next hops are in the router's FIB, new connections spread over both;
scaling down withdraws it first), and by the autoscaler on real load (one server's capacity, 50
requests/s here, kept above 70 % for the up period adds the standby server; idle for the down period
removes it). The design's periods (5 min up, 15 min down, 5 min cooldown) are shortened to seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bgp.routers import fib_nexthops
from core.wait import wait_for
from lab.load.overload import deploy_classes, overload
from lab.load.priority_load import connections_for
from lab.run.autoscaler import EVENTS
from lab.run.lab import Lab
from lab.run.rundir import in_service
from tests.conftest import TOPOLOGIES

CAPACITY_RPS = 50.0
UP_FOR_S, DOWN_FOR_S, COOLDOWN_S = 3.0, 4.0, 2.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = yaml.safe_load((TOPOLOGIES / "two_pops.yaml").read_text())
    spec.setdefault("settings", {})["server_capacity_rps"] = CAPACITY_RPS
    sjc = next(p for p in spec["pops"] if p["name"] == "sjc")
    sjc["max_servers"] = 2
    sjc["autoscale"] = {"up_utilisation": 0.7, "up_for_s": UP_FOR_S, "down_utilisation": 0.3,
                        "down_for_s": DOWN_FOR_S, "cooldown_s": COOLDOWN_S}
    with tempfile.TemporaryDirectory(prefix="anylab-test-scale-") as tmp:
        path = Path(tmp) / "two_pops_scale.yaml"
        path.write_text(yaml.safe_dump(spec))
        with Lab.from_file(path, name="tscale") as running:
            deploy_classes(running)
            yield running


def servers_answering(lab: Lab, n: int = 40) -> dict[str, int]:
    """``n`` requests from the client, each on a new connection (a new flow for ECMP): who answered."""
    code = ("import http.client, collections, json\n"
            "seen = collections.Counter()\n"
            f"for _ in range({n}):\n"
            f"    c = http.client.HTTPConnection('{lab.topo.anycast[0].network_address}', 80, timeout=5)\n"
            "    c.request('GET', '/', headers={'Host': 'p0.load.example'})\n"
            "    r = c.getresponse(); r.read(); c.close()\n"
            "    seen[r.getheader('x-anylab-server')] += 1\n"
            "print(json.dumps(seen))")
    res = subprocess.run(["nsenter", f"--net={lab.netns['c1']}", "--", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, check=True)
    counts: dict[str, int] = json.loads(res.stdout)
    return counts


def events(lab: Lab) -> list[dict[str, Any]]:
    path = lab.run_dir / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_standby_servers_have_no_processes_and_their_sessions_do_not_count(lab: Lab) -> None:
    assert in_service(lab.topo, lab.run_dir)["sjc"] == ["sjc-s1"]
    assert not any(d.proc is not None for d in lab.daemons["sjc-s2"])
    assert all(s.up == s.total for s in lab.sessions())
    assert set(servers_answering(lab, 10)) == {"sjc/sjc-s1"}


def test_scaling_by_hand_adds_a_server_to_the_ecmp_set_and_removes_it(lab: Lab) -> None:
    up = lab.scale("sjc", 2)
    assert up["added"] == ["sjc-s2"] and up["servers"] == ["sjc-s1", "sjc-s2"]
    r2 = lab.topo.router("r2")
    assert fib_nexthops(lab.netns["r2"], r2, str(lab.topo.anycast[0])) == {str(n.address) for n in r2.neighbors
                                                                       if n.node.startswith("sjc-")}
    # The new server synced its deployments from the control plane when it started.
    assert set(servers_answering(lab)) == {"sjc/sjc-s1", "sjc/sjc-s2"}
    down = lab.scale("sjc", 1)
    assert down["removed"] == ["sjc-s2"]
    assert set(servers_answering(lab, 10)) == {"sjc/sjc-s1"}
    assert all(s.up == s.total for s in lab.sessions())


def test_the_autoscaler_adds_a_server_under_load_and_removes_it_when_idle(lab: Lab) -> None:
    before = len(events(lab))
    # One server's whole capacity of P0 (never shed nor spilled): 100 % > 70 % for the up period.
    result = overload(lab, "sjc", multiple=1.0, duration=UP_FOR_S + 6.0, mix={"P0": 1.0})
    p0 = result["classes"]["P0"]
    # Adding a next hop re-hashes flows: a kept-alive connection the router now sends to the new server
    # is reset there (it has no such socket) — once per connection at most, then it reconnects.
    assert p0["failed"] <= connections_for(CAPACITY_RPS) and set(p0["errors"]) <= {"reset", "eof"}, p0
    added = [e for e in events(lab)[before:] if e["to"] == 2]
    assert added and added[0]["rule"] == "utilisation_high" and "error" not in added[0], events(lab)
    # Triggered within the up period + 1 s sampling + 1 s for the rate window to fill, after the load began.
    assert added[0]["t"] - result["start"] <= UP_FOR_S + 2.0 + 0.5
    # Idle now: below 30 % for the down period (after the cooldown) brings it back to one server.
    removed = wait_for(lambda: [e for e in events(lab)[before:] if e["to"] == 1] or None,
                       timeout=DOWN_FOR_S + COOLDOWN_S + 15, what="the autoscaler to remove the second server",
                       interval=0.2)
    assert removed[0]["rule"] == "utilisation_low" and "error" not in removed[0], removed
    assert in_service(lab.topo, lab.run_dir)["sjc"] == ["sjc-s1"]
