#!/usr/bin/env python3
"""Benchmark (not a test): disaster recovery on ``global.yaml`` (issue 24), with its ``monitoring`` and
``backup`` sections.

- **Drill**: ``anylab drill region-down`` (:mod:`lab.measure.drill`) ``--drills`` times, alternating eu
  and apac (na holds the control node, monitoring and the backups): RTO per phase and end to end, traffic
  shifted, DO objects moved, RPO per data class (KV acknowledged writes lost, DO acknowledged changes lost
  and linearizability, control plane deploys lost), against the design's windows (30 s for traffic after a
  PoP loss, 5 min for a region).
- **kv-global-loss**: ``--writes`` acknowledged writes at 10/s with a snapshot half way, every master and
  replica wiped, restored from the backups as of the fault: writes lost, against the writes the WAL had
  not received by then (the two must be equal), and how long the restore took. The same run again in a
  lab whose backup service keeps no WAL (``ANYLAB_WEAKEN=backup``, snapshots only): the figure that must
  fail — every write after the snapshot lost.
- **Backups of the other classes**: a DO object incremented ``--writes`` times at 10/s, then restored as
  of the last acknowledgement (increments lost: those within the DO shipping window; the weakened lab
  loses every one after its last DO snapshot) and as of when the backup had caught up (0 with the WAL);
  how far the DO backup trails an acknowledgement (the shipping window); restore times for DO and the
  control plane (the weakened lab's refused: it holds no control-plane state before its first snapshot);
  how long a new snapshot takes to reach the DR region verified; the archive's contents.

- **catastrophic**: ``--catastrophes`` times, a worker deployed and KV written, the DR copy current, then
  every region lost at once (``catastrophic global``) and ``anylab dr failover`` begun at once: per client
  the time from the loss to its first probe answered from the DR region and to its first HTTP answer of
  the worker (pollers every 50 ms in every client from the loss on); the failover's steps; what the copy
  brought. Then stood down and the regions restored. The same in a lab whose failover leaves the restored
  deployments where they were (``ANYLAB_WEAKEN=dr``): probes come back, the worker never does.

    sudo .venv/bin/python bench/dr.py [--drills 4] [--writes 40] [--catastrophes 3] [--out bench/results/dr.json]

Prints one JSON document (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.clock import monotonic  # noqa: E402
from core.stats import quantile  # noqa: E402
from core.wait import wait_for  # noqa: E402
from kv.client import KvClient  # noqa: E402
from kv.store import KvError  # noqa: E402
from lab.measure.drill import run_drill  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.run.launchers import WEAKEN_ENV  # noqa: E402

TOPOLOGY = PROJECT / "topologies" / "global.yaml"
NS = "bench"


def global_loss(lab: Lab, writes: int) -> dict[str, Any]:
    """Writes (a snapshot half way), kv-global-loss, restore-backup as of the fault; what was lost."""
    client = KvClient(lab.node_dir(lab.topo.pop("sjc").servers[0]) / "kv.sock", timeout=10)
    acked: list[str] = []
    snap: dict[str, Any] = {}
    for i in range(writes):
        if i == writes // 2:
            snap = lab.backup_api().call("POST", "/v1/snapshot")["kv"]
        if client.put(NS, f"w{i}", b"x").get("committed"):
            acked.append(f"w{i}")
        time.sleep(0.1)  # the writer's pace: 10 writes a second
    t_fault = lab.fail("kv-global-loss", "global")
    lab.restore("global")
    t0 = monotonic()
    reply = lab.restore_backup("kv", t_fault)
    restore_s = monotonic() - t0
    have = {k for k in acked if KvClient(lab.node_dir("kv-na") / "kv.sock").get(NS, k) is not None}
    lost = sorted(set(acked) - have)
    unshipped = sorted(set(acked) - lab.backup_received(NS, t_fault))
    return {"acked": len(acked), "lost": len(lost), "lost_expected_from_wal": len(unshipped),
            "exact": lost == unshipped, "after_snapshot": len(acked) - writes // 2, "restore_s": round(restore_s, 3),
            "snapshot_verified": snap.get("digest") == snap.get("verified"), "restore": reply}


def worker_call(lab: Lab, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of the DO example worker from the first client (anycast); its JSON answer. Raises
    AssertionError for anything but 200."""
    import http.client

    from core.netns import connect_in

    netns, target = lab.netns[lab.topo.clients[0].name], str(lab.topo.anycast[0].network_address)
    conn = http.client.HTTPConnection(target, 80, timeout=10)
    try:
        conn.sock = connect_in(netns, target, 80, 5.0)
        conn.request("POST", f"/do/{name}", json.dumps(body), {"Host": "reg.example"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, (resp.status, raw[:200])
    reply: dict[str, Any] = json.loads(raw)
    return reply


HTTP_POLL_S, SERVED_DEADLINE_S = 0.05, 60.0


def http_ok(lab: Lab, client: str, host: str) -> bool:
    """One GET of ``host``'s worker at the anycast address from ``client``: answered 200."""
    from core.errors import AnylabError
    from lab.run.monitoring import http_get

    try:
        return http_get(lab.netns[client], str(lab.topo.anycast[0].network_address), 80, "/", {"Host": host})[0] == 200
    except (OSError, AnylabError):
        return False


def catastrophe(lab: Lab, i: int) -> dict[str, Any]:
    """Every region lost, the DR site brought up at once: per client the time to its first probe answered
    from the DR region and to the worker's first answer; the failover's steps. Stands down and restores."""
    import threading

    from model.constants import DR_POP

    host = f"cat{i}.example"
    lab.deploy(f"cat{i}", host, 'async def fetch(request, env, ctx):\n    return "up"\n')
    client = KvClient(lab.node_dir(lab.topo.servers[0].name) / "kv.sock", timeout=10)
    acked = [k for k in (f"cat{i}-{n}" for n in range(10)) if client.put(NS, k, b"x").get("committed")]
    lab.wait_dr_copy_current()
    clients = [c.name for c in lab.topo.clients]
    http_first: dict[str, float | None] = dict.fromkeys(clients)
    stop = threading.Event()
    t_fault = lab.fail("catastrophic", "global")

    def poll(c: str) -> None:  # bounded: until answered, the deadline, or stopped
        while not stop.is_set() and monotonic() - t_fault < SERVED_DEADLINE_S:
            if http_ok(lab, c, host):
                http_first[c] = monotonic() - t_fault
                return
            stop.wait(HTTP_POLL_S)

    pollers = [threading.Thread(target=poll, args=(c,), daemon=True) for c in clients]
    for t in pollers:
        t.start()
    try:
        up = lab.dr_failover()
        t_up = up["t"] + up["sessions_s"]
        try:
            wait_for(lambda: all(lab.catchment(after=t_up)[c] == DR_POP for c in clients), timeout=10.0,
                     what="every client's probes answered from the DR region", interval=0.1)
        except Exception as exc:  # the figure is what it is: recorded, not raised
            print(f"catastrophe {i}: {exc}", file=sys.stderr)
        for t in pollers:
            t.join(timeout=SERVED_DEADLINE_S)
        probe_first = {}
        for c in clients:
            got = [p.recv for p in lab.probes(c) if p.recv is not None and p.pop == DR_POP and p.sent >= t_fault]
            probe_first[c] = round(min(got) - t_fault, 3) if got else None
        assert lab.topo.dr_site is not None
        at_dr = KvClient(lab.node_dir(lab.topo.dr_site.storage.name) / "kv.sock", timeout=10)
        kv_back = sum(1 for k in acked if at_dr.get(NS, k) is not None)
    finally:
        stop.set()
        lab.dr_standdown()
        lab.restore("global")
    t_back = monotonic()
    wait_for(lambda: lab.catchment(after=t_back) == lab.predicted(), timeout=60.0, what="the regions serving again",
             interval=0.2)
    lab.wait_control_planes(timeout=60.0)  # etcd's quorum back, before the next run deploys
    lab.wait_do_leases(timeout=60.0)
    r = up["restored"]
    return {"first_probe_from_dr_s": probe_first,
            "first_http_from_dr_s": {c: None if v is None else round(v, 3) for c, v in http_first.items()},
            "failover_s": {k: up[k] for k in ("services_s", "restored_s", "servers_s", "sessions_s")},
            "failover_began_after_fault_s": round(up["t"] - t_fault, 3),
            "copy_age_s": r["copy_age_s"], "restore_s": {"control": r["control_s"], "kv": r["kv_s"]},
            "control": {k: r["control"][k] for k in ("keys", "artifacts", "verified")},
            "kv_entries": r["kv"]["entries"], "kv_acked": len(acked), "kv_acked_at_dr": kv_back,
            "placed": up["placed"], "regions_back_s": round(monotonic() - t_back, 3)}


def catastrophes(lab: Lab, runs: int) -> dict[str, Any]:
    """``runs`` catastrophes and their distributions over every client and run."""
    got = [catastrophe(lab, i) for i in range(runs)]
    probe = [v for g in got for v in g["first_probe_from_dr_s"].values() if v is not None]
    http = [v for g in got for v in g["first_http_from_dr_s"].values() if v is not None]
    clients = sum(len(g["first_http_from_dr_s"]) for g in got)

    def dist(values: list[float]) -> dict[str, float | None]:
        return {"p50": quantile(values, 0.5), "max": max(values, default=None), "min": min(values, default=None)}

    return {"runs": runs, "clients": clients, "first_probe_from_dr_s": dist(probe), "probe_served": len(probe),
            "first_http_from_dr_s": dist(http), "http_served": len(http),
            "kv_acked": sum(g["kv_acked"] for g in got), "kv_acked_at_dr": sum(g["kv_acked_at_dr"] for g in got),
            "detail": got}


def backups(lab: Lab, writes: int, dr: bool = True) -> dict[str, Any]:
    """DO increments restored as of the last acknowledgement; the DO shipping window; restore times; the DR
    copy's lag and the archive (``dr``)."""
    lab.wait_do_leases()
    lab.deploy("reg", "reg.example", (PROJECT / "examples" / "do_register.py").read_text(),
               bindings={"REG": {"durable_object": "Register"}})
    name = f"bench-{int(monotonic())}"
    start = int(worker_call(lab, name, {"f": "read"})["value"] or 0)
    lags = []
    for i in range(writes):
        worker_call(lab, name, {"f": "incr", "value": 1})
        if i % 5 == 0:
            t_ack = monotonic()
            lags.append(lab.wait_backup_current(timeout=10.0) - t_ack)
        time.sleep(0.1)  # the writer's pace: 10 writes a second
    t_last = monotonic()
    t_current = lab.wait_backup_current(timeout=10.0)
    t0 = monotonic()
    do_reply = lab.restore_backup("do", t_last)
    do_s = monotonic() - t0
    value = int(worker_call(lab, name, {"f": "read"})["value"] or 0)
    lab.restore_backup("do", t_current)
    value_current = int(worker_call(lab, name, {"f": "read"})["value"] or 0)
    t0 = monotonic()
    try:
        cp_reply: dict[str, Any] = lab.restore_backup("control")
    except KvError as exc:  # the weakened lab's backup holds nothing to restore the control plane from
        cp_reply = {"refused": str(exc)}
    cp_s = monotonic() - t0
    out: dict[str, Any] = {
        "do": {"acked_increments": writes, "after_restore": value - start, "lost": writes - (value - start),
               "lost_as_of_backup_current": writes - (value_current - start),
               "backup_current_after_s": round(t_current - t_last, 3), "restore_s": round(do_s, 3),
               "snapshot": do_reply.get("snapshot"), "wal_replayed": do_reply.get("wal_replayed"),
               "backup_trails_ack_s": {"p50": quantile(lags, 0.5), "max": max(lags, default=None)}},
        "control": {"restore_s": round(cp_s, 3), **{k: cp_reply.get(k) for k in ("keys", "artifacts", "verified",
                                                                                    "refused")}}}
    if dr:
        api = lab.backup_dr_api()
        copy_s = []
        for _ in range(5):
            t0 = monotonic()
            taken = lab.backup_api().call("POST", "/v1/snapshot")

            def copied(taken: dict[str, Any] = taken) -> bool:
                st = api.call("GET", "/v1/status")
                return all(taken[p]["n"] in st["copy"][p] for p in ("kv", "do", "control"))

            wait_for(copied, timeout=30.0, what="the DR copy of a snapshot", interval=0.02)
            copy_s.append(monotonic() - t0)
        st = api.call("GET", "/v1/status")
        out["dr"] = {"snapshot_verified_at_dr_s": {"p50": quantile(copy_s, 0.5), "max": max(copy_s)},
                     "verified": st["verified"], "failed": st["failed"], "copied": st["copied"],
                     "archive": st["archive"], "archive_s": st["archive_s"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--drills", type=int, default=4)
    parser.add_argument("--writes", type=int, default=40)
    parser.add_argument("--catastrophes", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (1 <= args.drills <= 20 and 2 <= args.writes <= 1000 and 1 <= args.catastrophes <= 10):
        parser.error("--drills 1..20, --writes 2..1000, --catastrophes 1..10 (the bench stops by itself)")
    result: dict[str, Any] = {"topology": "global.yaml", "machine": {"cpus": os.cpu_count()}}
    drills = []
    with Lab.from_file(TOPOLOGY, name="bdr") as lab:
        for i in range(args.drills):
            region = ("eu", "apac")[i % 2]
            r = run_drill(lab, region, lab.run_dir / "reports")
            drills.append(r)
            print(f"drill {i + 1} {region}: restored in {r['rto_s']['region_restored']:.2f} s", file=sys.stderr)
        result["kv_global_loss"] = global_loss(lab, args.writes)
        result["backups"] = backups(lab, args.writes)
        result["catastrophic"] = catastrophes(lab, args.catastrophes)

    def dist(values: list[float]) -> dict[str, float | None]:
        return {"p50": quantile(values, 0.5), "max": max(values, default=None), "min": min(values, default=None)}

    phases = sorted(drills[0]["rto_s"]["phases"])
    result["drill"] = {
        "runs": len(drills),
        "traffic_shifted_s": dist([d["rto_s"]["traffic_shifted"] for d in drills]),
        "do_migrated_s": dist([d["rto_s"]["do_migrated"] for d in drills]),
        "region_restored_s": dist([d["rto_s"]["region_restored"] for d in drills]),
        "phases_s": {p: dist([d["rto_s"]["phases"][p] for d in drills]) for p in phases},
        "kv_acked": sum(d["rpo"]["kv"]["acked_writes"] for d in drills),
        "kv_lost": sum(max(d["rpo"]["kv"]["lost_by_master"].values()) for d in drills),
        "do_ops": sum(d["rpo"]["do"]["ops"] for d in drills),
        "do_acked_lost": sum(d["rpo"]["do"]["acked_lost"] for d in drills),
        "do_linearizable": all(d["rpo"]["do"]["linearizable"] for d in drills),
        "deploys_lost": sum(len(d["rpo"]["control"]["deploys_lost"]) for d in drills),
        "halt_held": all(d["rpo"]["control"]["halt_held"] for d in drills),
        "reports": drills,
    }
    os.environ[WEAKEN_ENV] = "backup"
    try:
        with Lab.from_file(TOPOLOGY, name="bdrw") as lab:
            result["kv_global_loss_without_wal"] = global_loss(lab, args.writes)
            result["backups_without_wal"] = backups(lab, args.writes, dr=False)
    finally:
        del os.environ[WEAKEN_ENV]
    os.environ[WEAKEN_ENV] = "dr"
    try:
        with Lab.from_file(TOPOLOGY, name="bdrw") as lab:
            result["catastrophic_without_placement"] = catastrophes(lab, 1)
    finally:
        del os.environ[WEAKEN_ENV]
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
