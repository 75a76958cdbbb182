#!/usr/bin/env python3
"""Benchmark (not a test): the design's Stage 3 shape at 30, 102 and 300 PoPs, BIRD and FRR.

For each size and router kind, one lab of ``topologies/global_300.py``'s shape (6 regions, a tier-1 per
region in a full mesh of peers, regional transits, 1 server per PoP, one client per region, profile
``scale``: hold 9 s, no BFD; probes 10 Hz idle, 1 kHz while measuring):

- ``ready_s``: ``Lab.up`` until every router has the predicted best path and every client is answered
  (and its phases);
- ``pss_mb_per_pop``: the PSS of one PoP server's processes (ExaBGP with its API, edge worker and its
  isolate zygote, health agent, KV replica), mean over the servers; ``lab_pss_gb`` the whole lab;
- ``idle_cpu_pct``: one PoP server's processes, % of one core, mean over the servers of the PoPs no
  client's probes reach (the predicted catchment's are left out: they answer the 10 Hz probes);
  ``lab_idle_cpu_pct`` the whole lab (of 200 % on this 2-core box);
- ``region_down``: ``anylab measure pops-down eu`` (every PoP of a region silent; its routers and users
  stay and move to other regions): global convergence (the last FIB change of any router), the routers'
  distribution, path exploration (most FIB changes at one router), the peak rate of UPDATEs the routers
  received, and the clients' shift;
- ``probe_rate_hz``: the slowest client's probe rate during that measurement.

    sudo .venv/bin/python bench/scale.py [--sizes 5,17,50] [--kinds bird,frr] > bench/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.clock import monotonic  # noqa: E402
from lab.measure.runner import measure  # noqa: E402
from lab.run.footprint import by_daemon, sample  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from model.generate import stage  # noqa: E402
from model.graph import predict_catchment  # noqa: E402
from model.load import build_topology  # noqa: E402

#: PoPs per region → transits per region (6 regions).
SHAPES = {5: 2, 17: 6, 50: 16}


def one(pops_per_region: int, kind: str, idle_s: float) -> dict[str, Any]:
    data = stage(3, pops_per_region=pops_per_region, transits_per_region=SHAPES[pops_per_region],
                 name=f"global-{6 * pops_per_region}")
    data["routers"] = [{**r, "kind": kind} for r in data["routers"]]
    topo = build_topology(data, f"topologies/global_300.py --pops-per-region {pops_per_region}")
    lab = Lab(topo, name=f"scale{pops_per_region}{kind[0]}")
    t0 = monotonic()
    lab.up(timeout=600.0)
    try:
        ready = monotonic() - t0
        usage = sample(lab.run_dir, idle_s)
        servers = {s.name for s in topo.servers}
        per_server: dict[str, list[float]] = {s: [0.0, 0.0] for s in servers}
        for u in usage:
            if u.node in servers:
                per_server[u.node][0] += u.pss_mib
                per_server[u.node][1] += u.cpu_pct
        busy = {p for p in predict_catchment(topo).values()}
        idle_servers = [v for s, v in per_server.items() if topo.server(s).pop not in busy]
        result, _ = measure(lab, "pops-down", "eu")
        s = result["summary"]
        run = result["runs"][0]
        return {
            "pops": len(topo.pops), "routers": len(topo.routers), "kind": kind, "clients": len(topo.clients),
            "ready_s": round(ready, 1),
            "ready_phases_s": {k: round(v, 1) for k, v in lab.timings.items()},
            "pss_mb_per_pop": round(statistics.mean(v[0] for v in per_server.values()), 1),
            "lab_pss_gb": round(sum(u.pss_mib for u in usage) / 1024, 2),
            "idle_cpu_pct": round(statistics.mean(v[1] for v in idle_servers), 3),
            "idle_cpu_pct_by_daemon": {d: v["cpu_pct_each"] for d, v in by_daemon(usage, servers).items()},
            "lab_idle_cpu_pct": round(sum(u.cpu_pct for u in usage), 1),
            "probe_rate_hz": s["achieved_probe_rate_hz"],
            "region_down": {
                "scenario": "pops-down eu",
                "global_convergence_s": run["network_convergence_s"],
                "routers_changed": s["routers_changed"],
                "router_convergence_s": s["router_convergence_s"],
                "path_changes_max": s["path_changes_max"],
                "peak_updates_per_s": s["peak_updates_per_s"],
                "clients_shift_s_p50": s["shift_s"]["p50"],
                "clients_shift_s_max": s["shift_s"]["max"],
                "clients_moved": s["shift_s"]["n"],
            },
        }
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5,17,50", help="PoPs per region (6 regions): 5, 17 or 50")
    parser.add_argument("--kinds", default="bird,frr")
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle CPU sample length")
    args = parser.parse_args()
    out = []
    for size in (int(x) for x in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            result = one(size, kind, args.idle_s)
            print(json.dumps(result), file=sys.stderr, flush=True)  # progress, one line per lab
            out.append(result)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
