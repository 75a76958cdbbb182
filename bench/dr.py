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
from kv.client import KvClient  # noqa: E402
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
    finally:
        del os.environ[WEAKEN_ENV]
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
