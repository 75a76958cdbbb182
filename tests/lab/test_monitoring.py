"""global.yaml's monitoring (issue 24): Prometheus on the ``mon`` node scrapes every service of the lab with
the lab's token, and a region going down pages with the design's alerts, each carrying the runbook phase it
starts, within the scrape and rule timers.

Bounds: a silenced target's scrape fails at its timeout (SCRAPE_S) and the next rule evaluation (every
SCRAPE_S) fires the alert, which Alertmanager sends at once (group_wait 0): 3 × SCRAPE_S from the fault,
whichever part of the interval it falls in, plus 2 s for four processes on a loaded 2-core box. The DO
directory fails the region over after its lease (global.yaml: do_lease_s 1 s + margin 0.25 s) and the
rule sees the counter at the next scrape. A resolution waits for the region's servers to serve again
(health rise) and a scrape: bounded at 10 s, the lab's restore being immediate.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import METRICS_PORT, TOKEN_FILE
from core.wait import wait_for
from lab.run.lab import Lab
from lab.run.monitoring import SCRAPE_S, Alert, alerts, http_get, query, targets
from tests.conftest import TOPOLOGIES

DELIVERY_S = 3 * SCRAPE_S + 2.0
RESOLVED_S = 10.0
REGION = "eu"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "global.yaml", name="tmon") as running:
        yield running


def mon(lab: Lab) -> tuple[str, str]:
    assert lab.topo.monitoring is not None
    return lab.netns[lab.topo.monitoring.name], str(lab.topo.monitoring.address)


def test_every_service_is_scraped_and_no_one_without_the_token_reads_its_metrics(lab: Lab) -> None:
    netns, address = mon(lab)
    up = {labels["instance"]: value for labels, value in query(netns, address, "up")}
    expected = {t for group in targets(lab.topo) for t in group.targets}
    assert len(expected) == 1 + 12 + 3 * 3 + 1  # itself, 12 servers, 3 regions × (cp, KV, DO host), directory
    assert set(up) == expected and set(up.values()) == {1.0}, up
    server = lab.topo.servers[0]
    edge = str(server.interfaces[0].address.ip)
    cp = lab.topo.control_planes[0]
    token = (lab.node_dir("mon") / TOKEN_FILE).read_text().strip()
    for host, port in ((edge, METRICS_PORT), (str(cp.address), cp.port)):
        assert http_get(netns, host, port, "/metrics")[0] == 401
        assert http_get(netns, host, port, "/metrics", {"Authorization": "Bearer not-the-token"})[0] == 401
        status, body = http_get(netns, host, port, "/metrics", {"Authorization": f"Bearer {token}"})
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "process_resident_memory_bytes" in names
    # The edge's scrape carries its health agent's and KV replica's files.
    assert {"anylab_edge_serving", "anylab_health_up", "anylab_kv_replica_lag_seconds"} <= {
        labels["__name__"] for labels, _ in query(netns, address, f'{{instance="{edge}:{METRICS_PORT}"}}')}
    assert not alerts(lab.node_dir("mon") / "alerts.jsonl"), "a clean lab pages no one"


def test_a_region_down_pages_its_pops_the_region_its_services_and_the_do_failover(lab: Lab) -> None:
    records = lab.node_dir("mon") / "alerts.jsonl"
    pops = {p.name for p in lab.topo.pops if p.region == REGION}
    expected = {("RegionDown", REGION), ("ControlPlaneUnreachable", REGION), ("KvMasterDown", REGION),
                ("DoFailover", REGION), *(("PopDown", p) for p in pops)}
    t_fault = lab.fail("region-down", REGION)
    try:
        def firing() -> dict[tuple[str, str], Alert] | None:
            seen: dict[tuple[str, str], Alert] = {}
            for a in alerts(records):
                if a.status == "firing" and a.t >= t_fault:
                    seen.setdefault((a.name, a.subject), a)
            return seen if expected <= set(seen) else None

        seen = wait_for(firing, timeout=30.0, what="every alert of the region's loss", interval=0.1,
                        describe=lambda: str(sorted({(a.name, a.subject, a.status) for a in alerts(records)})))
    finally:
        t_restore = lab.restore(REGION)
    assert set(seen) == expected, set(seen) ^ expected  # no other PoP, region or service paged
    phases = {key[0]: a.phase for key, a in seen.items()}
    assert phases == {"RegionDown": "containment", "PopDown": "containment", "ControlPlaneUnreachable": "containment",
                      "KvMasterDown": "recovery", "DoFailover": "recovery"}
    settings = lab.topo.spec.settings
    for key, a in seen.items():
        bound = DELIVERY_S + (settings.do_lease_s + settings.do_margin_s if key[0] == "DoFailover" else 0.0)
        assert a.t - t_fault <= bound, (key, a.t - t_fault)

    def resolved() -> bool:
        done = {(a.name, a.subject) for a in alerts(records) if a.status == "resolved" and a.t >= t_restore}
        return expected - {("DoFailover", REGION)} <= done

    wait_for(resolved, timeout=RESOLVED_S, what="the region's alerts resolved", interval=0.2)
