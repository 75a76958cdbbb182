"""global.yaml's disaster recovery (issue 24): Prometheus on the ``mon`` node scrapes every service of the lab
with the lab's token, and a region going down pages with the design's alerts, each carrying the runbook phase
it starts, within the scrape and rule timers; the backup node's KV WAL and snapshots bring the KV data back
after every master and replica lost it, losing exactly what the WAL had not received; Durable Objects and
the control plane (its etcd keys and code artifacts) are restored as of a time, the artifacts even after
every region's store lost them.

Bounds: a silenced target's scrape fails at its timeout (SCRAPE_S) and the next rule evaluation (every
SCRAPE_S) fires the alert, which Alertmanager sends at once (group_wait 0): 3 × SCRAPE_S from the fault,
whichever part of the interval it falls in, plus 2 s for four processes on a loaded 2-core box. The DO
directory fails the region over after its lease (global.yaml: do_lease_s 1 s + margin 0.25 s) and the
rule sees the counter at the next scrape. A resolution waits for the region's servers to serve again
(health rise) and a scrape: bounded at 10 s, the lab's restore being immediate.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.clock import monotonic
from core.metrics import METRICS_PORT, TOKEN_FILE
from core.netns import connect_in
from core.wait import wait_for
from kv.client import KvClient
from lab.measure.drill import run_drill
from lab.record.status_page import PORT as PAGE_PORT
from lab.run.lab import Lab
from lab.run.monitoring import SCRAPE_S, Alert, alerts, http_get, query, targets
from model.constants import DR_POP, DR_REGION
from model.load import load_topology
from model.profiles import LOADED_BOX
from tests.conftest import TOPOLOGIES

DELIVERY_S = 3 * SCRAPE_S + 2.0
SERVED_S = 2.0
RESOLVED_S = 10.0
REGION = "eu"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # fast's 30 ms health checks flap on a loaded box (CI: a PopDown paged in the "clean lab" below); the
    # windows checked here are the design's, seconds to minutes.
    with Lab(load_topology(TOPOLOGIES / "global.yaml", profile=LOADED_BOX), name="tdr") as running:
        yield running


def mon(lab: Lab) -> tuple[str, str]:
    assert lab.topo.monitoring is not None
    return lab.netns[lab.topo.monitoring.name], str(lab.topo.monitoring.address)


def test_every_service_is_scraped_and_no_one_without_the_token_reads_its_metrics(lab: Lab) -> None:
    netns, address = mon(lab)
    up = {labels["instance"]: value for labels, value in query(netns, address, "up")}
    expected = {t for group in targets(lab.topo) for t in group.targets}
    # Itself, 12 servers, 3 regions × (control plane, KV master, DO host), the DO directory, the backup service
    # and its DR copy.
    assert len(expected) == 1 + 12 + 3 * 3 + 1 + 1 + 1
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


NS = "dr"
#: How long after its acknowledgement a KV write may still be missing from the backup's WAL: the follower's
#: long poll answers at the master's commit, then one append and fsync (ms); 0.5 s on a loaded 2-core box.
KV_SHIP_WINDOW_S = 0.5


def readable(lab: Lab, keys: set[str]) -> dict[str, set[str]]:
    """Per KV master, which of ``keys`` it holds."""
    out = {}
    for km in lab.topo.kv_masters:
        client = KvClient(lab.node_dir(km.name) / "kv.sock", timeout=10)
        out[km.name] = {k for k in keys if client.get(NS, k) is not None}
    return out


def write(client: KvClient, keys: list[str], acked_at: dict[str, float]) -> set[str]:
    """Put each key; the ones acknowledged (committed on two regions' masters), with when (into
    ``acked_at``)."""
    out = set()
    for k in keys:
        if client.put(NS, k, k.encode()).get("committed"):
            out.add(k)
            acked_at[k] = monotonic()
    return out


def test_kv_global_loss_is_restored_from_snapshot_and_wal_losing_exactly_what_the_wal_had_not(lab: Lab) -> None:
    client = KvClient(lab.node_dir(lab.topo.pop("sjc").servers[0]) / "kv.sock", timeout=10)
    backup = lab.backup_api()
    acked_at: dict[str, float] = {}
    before = write(client, [f"a{i}" for i in range(20)], acked_at)
    snaps = backup.call("POST", "/v1/snapshot")
    snap = snaps["kv"]
    # Each restored elsewhere (KV) or read back (DO, control): the same data.
    assert {k: s["digest"] == s["verified"] for k, s in snaps.items()} == {"kv": True, "do": True, "control": True}
    after = write(client, [f"b{i}" for i in range(20)], acked_at)
    assert len(before) == len(after) == 20
    t_fault = lab.fail("kv-global-loss", "global")
    lab.restore("global")  # every master and replica back, empty
    assert readable(lab, before | after) == {km.name: set() for km in lab.topo.kv_masters}

    # Restored as of the snapshot: the accounting sees the second batch lost, exactly (a restore that could
    # not lose anything would not need counting).
    early = lab.restore_backup("kv", snap["t"])
    assert early["snapshot"] == snap["n"]
    assert readable(lab, before | after) == {km.name: before for km in lab.topo.kv_masters}
    # As of the fault: the snapshot plus the WAL after it; lost = acknowledged and not shipped by then.
    full = lab.restore_backup("kv", t_fault)
    acked = before | after
    lost_expected = acked - lab.backup_received(NS, t_fault)
    assert full["snapshot"] == snap["n"] and full["wal_replayed"] >= len(after - lost_expected)
    for master, have in readable(lab, acked).items():
        assert acked - have == lost_expected, master
    # The WAL's shipping is asynchronous (a long poll answered at the master's commit): the fault, injected
    # as the last write is acknowledged, may beat the last few records to the backup's disk — never more
    # than the shipping window.
    behind = {k: round(t_fault - acked_at[k], 3) for k in lost_expected if t_fault - acked_at[k] > KV_SHIP_WINDOW_S}
    assert not behind, f"the WAL fell behind the acknowledgements by more than {KV_SHIP_WINDOW_S} s: {behind}"
    # The replicas follow their restored masters.
    wait_for(lambda: all(client.get(NS, k) is not None for k in acked - lost_expected), timeout=10.0,
             what="the restored keys at a PoP's replica", interval=0.2)


def worker_call(lab: Lab, host: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the anycast address from the first client, Host ``host``: status and the JSON answer
    (or the text)."""
    netns, target = lab.netns[lab.topo.clients[0].name], str(lab.topo.anycast[0].network_address)
    conn = http.client.HTTPConnection(target, 80, timeout=10)
    try:
        conn.sock = connect_in(netns, target, 80, 5.0)
        conn.request("POST" if body is not None else "GET", path, json.dumps(body) if body is not None else None,
                     {"Host": host})
        resp = conn.getresponse()
        raw = resp.read().decode()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def counter(lab: Lab, name: str, f: str = "read", value: Any = None) -> dict[str, Any]:
    status, reply = worker_call(lab, "reg.example", f"/do/{name}", {"f": f, "value": value})
    assert status == 200, (status, reply)
    return dict(reply)


def test_durable_objects_are_restored_as_of_a_time_into_their_owners(lab: Lab) -> None:
    lab.wait_do_leases()
    lab.deploy("reg", "reg.example", (TOPOLOGIES.parent / "examples" / "do_register.py").read_text(),
               bindings={"REG": {"durable_object": "Register"}})
    names = ["bk-a", "bk-b", "bk-c"]
    for name in names:
        for _ in range(5):
            counter(lab, name, "incr", 1)
    t_mid = lab.wait_backup_current()
    for name in names:
        for _ in range(3):
            counter(lab, name, "incr", 1)
    assert {counter(lab, n)["value"] for n in names} == {8}
    t_end = lab.wait_backup_current()

    early = lab.restore_backup("do", t_mid)
    assert set(early["written"]) >= {o for o in lab.do_directory()["objects"] if o.endswith(tuple(names))}
    assert {n: counter(lab, n)["value"] for n in names} == dict.fromkeys(names, 5)
    # As of the end, not "now": the backup follows the restore's writes like any other (0.2 s later, "now"
    # is the restored state).
    assert lab.restore_backup("do", t_end)["digest"] != early["digest"]
    assert {n: counter(lab, n)["value"] for n in names} == dict.fromkeys(names, 8)


def serves(lab: Lab, text: str) -> bool:
    return worker_call(lab, "bkcfg.example", "/") == (200, text)


def test_the_control_plane_is_restored_as_of_a_time_with_its_artifacts_after_every_store_lost_them(lab: Lab) -> None:
    code = 'async def fetch(request, env, ctx):\n    return "{}"\n'
    lab.deploy("bkcfg", "bkcfg.example", code.format("one"))
    t_one = lab.wait_backup_current()
    lab.deploy("bkcfg", "bkcfg.example", code.format("two"))
    assert serves(lab, "two")
    t_two = lab.wait_backup_current()
    lab.fail("artifact-store-wipe", "global")  # no region holds an artifact any more
    lab.restore("global")  # nothing to undo: the fault is done
    assert all(s["artifacts"]["held"] == 0 for s in lab.control_planes().values())

    back = lab.restore_backup("control", t_one)
    assert back["verified"] and back["artifacts"] >= 1, back
    wait_for(lambda: serves(lab, "one"), timeout=30.0, what="every PoP back on the first version", interval=0.2)
    assert all(s["artifacts"]["missing"] == 0 for s in lab.control_planes().values())
    # The backup followed the restore itself (a change like any other): "now" would be the first version.
    again = lab.restore_backup("control", t_two)
    assert again["verified"] and again["changed"] >= 1
    wait_for(lambda: serves(lab, "two"), timeout=30.0, what="the second version again", interval=0.2)


def test_the_dr_region_holds_a_verified_copy_of_every_snapshot_and_wal_and_archives_them(lab: Lab) -> None:
    assert lab.topo.backup is not None and lab.topo.backup_dr is not None
    assert lab.topo.backup_dr.region != lab.topo.backup.region
    write(KvClient(lab.node_dir(lab.topo.servers[0].name) / "kv.sock", timeout=10), ["dr-copy"], {})
    wait_for(lambda: "dr-copy" in lab.backup_received(NS, monotonic()), timeout=10.0, what="the write in the KV WAL")
    taken = lab.backup_api().call("POST", "/v1/snapshot")
    dr = lab.backup_dr_api()
    last: dict[str, Any] = {}

    def copied() -> bool:
        last.update(dr.call("GET", "/v1/status"))
        return all(taken[part]["n"] in last["copy"][part] for part in ("kv", "do", "control"))

    wait_for(copied, timeout=10.0, what="the DR copy of the new snapshots", interval=0.2, describe=lambda: str(last))
    assert last["failed"] == [] and last["verified"] >= 3, last  # each restored at the DR, the same digest
    assert all(last["archive"][part]["count"] >= 1 for part in ("kv", "do", "control")), last["archive"]
    primary = lab.node_dir(lab.topo.backup.name) / "store"
    copy = lab.node_dir(lab.topo.backup_dr.name) / "store" / "copy"
    wals = sorted(p.relative_to(primary) for p in primary.glob("*/wal/*.jsonl"))
    assert {r.parts[0] for r in wals} >= {"kv", "control"}  # DO WALs only once a host owns an object
    for rel in wals:  # the copy is a prefix of the primary's WAL (it is still being written)
        mine = (copy / rel).read_bytes()
        assert mine and (primary / rel).read_bytes().startswith(mine), rel
    for rel in (primary / "control" / "artifacts").iterdir():
        assert (copy / "control" / "artifacts" / rel.name).read_bytes() == rel.read_bytes()
    # The store is not readable from the lab network (a PoP server can route to it) without a signature.
    netns = lab.netns[lab.topo.servers[0].name]
    bk = lab.topo.backup
    assert http_get(netns, str(bk.address), bk.port, "/v1/replica/index")[0] == 401
    assert http_get(netns, str(bk.address), bk.port, "/v1/status")[0] == 401


def test_catastrophic_loss_of_every_region_is_served_from_the_dr_region_restored_from_its_copy(lab: Lab) -> None:
    site = lab.topo.dr_site
    assert site is not None and lab.topo.backup_dr is not None
    assert site.pop.region == lab.topo.backup_dr.region == DR_REGION  # a region of its own, with the copy
    code = 'async def fetch(request, env, ctx):\n    return "up"\n'
    lab.deploy("drsite", "drsite.example", code)
    assert worker_call(lab, "drsite.example", "/") == (200, "up")
    acked = write(KvClient(lab.node_dir(lab.topo.servers[0].name) / "kv.sock", timeout=10), ["cat-1", "cat-2"], {})
    lab.wait_dr_copy_current()
    t_fault = lab.fail("catastrophic", "global")
    try:
        up = lab.dr_failover()
        restored = up["restored"]
        assert restored["control"]["verified"] and restored["control"]["artifacts"] >= 1, restored["control"]
        clients = [c.name for c in lab.topo.clients]
        # Once the DR servers' sessions are up, their route reaches every client's router: 3 router hops at
        # most, no MRAI (fast), plus the probes' 10 ms period and a second for a loaded box.
        t_up = up["t"] + up["sessions_s"]
        wait_for(lambda: all(lab.catchment(after=t_up)[c] == DR_POP for c in clients), timeout=SERVED_S,
                 what="every client served by the DR region", interval=0.1,
                 describe=lambda: str(lab.catchment(after=t_up)))
        # Time to first client served from the DR region, from the loss (the failover begun at once).
        first = {c: min(p.recv for p in lab.probes(c) if p.recv is not None and p.pop == DR_POP and p.sent >= t_fault)
                 - t_fault for c in clients}
        assert max(first.values()) <= t_up - t_fault + SERVED_S, (first, up)
        assert worker_call(lab, "drsite.example", "/") == (200, "up")  # the deployment, its artifact restored
        at_dr = KvClient(lab.node_dir(site.storage.name) / "kv.sock", timeout=10)
        assert {k for k in acked if at_dr.get(NS, k) is not None} == acked
    finally:
        lab.dr_standdown()
        lab.restore("global")
    t_back = monotonic()
    wait_for(lambda: lab.catchment(after=t_back) == lab.predicted(), timeout=60.0, what="the regions serving again",
             interval=0.2, describe=lambda: str(lab.catchment(after=t_back)))
    lab.wait_control_planes(timeout=60.0)  # etcd's quorum back: the drill deploys
    lab.wait_do_leases(timeout=60.0)


def test_the_region_down_runbook_runs_end_to_end_within_the_designs_windows(lab: Lab, tmp_path: Path) -> None:
    result = run_drill(lab, REGION, tmp_path)
    events = [e["event"] for e in result["timeline"]]
    for step in ("fault", "detection", "withdrawn_bgp", "withdrawn_dns", "deploys_halted", "status_page",
                 "traffic_shifted", "contained", "do_migrated", "integrity_verified", "replaced", "data_restored",
                 "readded", "restored", "post_incident"):
        assert step in events, step
    rto, rpo = result["rto_s"], result["rpo"]
    assert rto["traffic_shifted"] < 30.0 and rto["region_restored"] < 300.0  # the design's windows
    assert rpo["kv"]["acked_writes"] >= 10 and set(rpo["kv"]["lost_by_master"].values()) == {0}
    assert rpo["do"]["linearizable"] and rpo["do"]["acked_lost"] == 0 and rpo["do"]["ops"] > 0
    assert rpo["control"] == {"deploys_lost": [], "halt_held": True}
    fired = {(a["alert"], a["subject"]) for a in result["alerts"] if a["status"] == "firing"}
    # DoFailover is not asked for: the region-down test above made it fire for this region less than its
    # 1 min window ago, and Alertmanager does not notify an alert still firing again (repeat_interval).
    assert ("RegionDown", REGION) in fired, sorted(fired)
    assert (tmp_path / f"drill-{REGION}.md").read_text().startswith(f"# Post-incident report: region {REGION}")
    netns, address = mon(lab)
    assert json.loads(http_get(netns, address, PAGE_PORT, "/status")[1])["status"] == "operational"
