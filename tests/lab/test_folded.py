"""``settings.server_process: folded``: each PoP server's edge worker, health agent and KV replica run as
one pop agent process, and the ExaBGP API's dead-man's switch stands in for the agent that no longer
outlives the edge. failover.yaml (profile ``fast``) with FRR.

Bounds: a killed process's connection is closed by the kernel at once, so the withdrawal is no later than
a separate agent's detection bound (DETECTION_S, 0.11 s). A hung process is withdrawn when its lease runs
out: lease = max(1 s, fall × interval + timeout) = 1 s here, checked by the API's select wake-up; the
margin is scheduling on a busy 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from core.wait import wait_for
from kv.client import KvClient
from lab.measure.runner import measure
from lab.run.lab import Lab
from lab.run.launchers import MIN_LEASE_S
from tests.conftest import TOPOLOGIES
from tests.lab.dead_man import api_events, stopped_holder_is_withdrawn

FOLDED = "pop-agent"
MARGIN_S = 0.5


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    spec = yaml.safe_load((TOPOLOGIES / "failover.yaml").read_text())
    spec["settings"]["server_process"] = "folded"
    path = tmp_path_factory.mktemp("folded") / "failover-folded.yaml"
    path.write_text(yaml.safe_dump(spec))
    with Lab.from_file(path, name="tfold", router_kind="frr") as up:
        yield up


def pid_of(lab: Lab, server: str) -> int:
    (agent,) = [d for d in lab.daemons[server] if d.name == FOLDED]
    assert agent.proc is not None
    return agent.proc.pid


def test_one_process_serves_edge_health_and_kv(lab: Lab) -> None:
    health = lab.topo.spec.settings.profile.health
    for s in lab.topo.servers:
        names = [d.name for d in lab.daemons[s.name]]
        assert FOLDED in names and not {"edge", "health", "kv-replica"} & set(names), names
        assert KvClient(lab.node_dir(s.name) / "kv.sock", timeout=10).status()["server"] == s.name
        holds = [e for e in api_events(lab, s.name) if e["event"] == "agent-holds"]
        assert holds and holds[-1]["lease_s"] == max(MIN_LEASE_S, health.fall * health.interval + health.timeout)
    assert lab.catchment() == lab.predicted()


def test_a_killed_pop_agent_is_withdrawn_by_the_dead_mans_switch(lab: Lab) -> None:
    detection = lab.topo.spec.settings.profile.health.detection_bound
    result, _ = measure(lab, "service-crash", "sjc")
    (run,) = result["runs"]
    assert run["decision_s"] is not None and run["decision_s"] <= detection
    moved = {c: r for c, r in run["clients"].items() if r["shift_s"] is not None}
    assert {r["to_pop"] for r in moved.values()} == {"lax"} and len(moved) == len(lab.topo.clients)
    assert result["catchment_restored"]
    lost = [e for e in api_events(lab, "sjc-s1") if e["event"] == "agent-lost" and e["t"] >= run["t_fault"]]
    assert lost[0]["why"] == "connection closed"


def test_a_hung_pop_agent_is_withdrawn_when_its_lease_runs_out(lab: Lab) -> None:
    stopped_holder_is_withdrawn(lab, "sjc-s1", pid_of(lab, "sjc-s1"), MARGIN_S)


def test_drain_demotes_the_folded_server(lab: Lab) -> None:
    server = "lax-s1"
    drain: Path = lab.node_dir(server) / "drain"
    drain.write_text("test\n")
    try:
        wait_for(lambda: lab.exabgp(server).api("status")["mode"] == "demoted", timeout=10.0,
                 what="the drained server to be demoted", interval=0.05)
    finally:
        drain.unlink()
    wait_for(lambda: lab.exabgp(server).api("status")["mode"] == "normal", timeout=10.0,
             what="the undrained server to announce normally", interval=0.05)
