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

    sudo .venv/bin/python bench/dr.py [--drills 4] [--writes 40] [--out bench/results/dr.json]

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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (1 <= args.drills <= 20 and 2 <= args.writes <= 1000):
        parser.error("--drills 1..20, --writes 2..1000 (the bench stops by itself)")
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
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
