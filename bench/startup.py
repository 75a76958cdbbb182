#!/usr/bin/env python3
"""Benchmark (not a test): time to ``up`` + converged, and memory per node kind.

For each topology: the phases of ``Lab.up`` (validate every config, build namespaces and links, all
daemons ready, BGP converged to the prediction and every client answered) and the PSS of every lab
process, summed per node and summarised per node kind (router = zebra + bfdd + bgpd; PoP server =
ExaBGP with its API + edge worker (front, zygote, spare isolate) + health agent + KV replica + BIRD for
BFD where the profile has it;
client = prober; control = the control plane). Memory is
sampled after convergence and after one withdraw/announce cycle of the busiest PoP; the larger sample
is kept ("peak").

    sudo .venv/bin/python bench/startup.py [--runs 3] [two_pops global regions30]

Prints one JSON document on stdout.
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
from lab.run.footprint import pss_now  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from model.budget import dns_kind  # noqa: E402
from model.graph import busiest_pop  # noqa: E402
from model.load import build_topology, load_topology  # noqa: E402

TOPOLOGIES = {
    "two_pops": lambda: load_topology(PROJECT / "topologies" / "two_pops.yaml"),
    "global": lambda: load_topology(PROJECT / "topologies" / "global.yaml"),
    "regions30": lambda: build_topology(_regions(10), "topologies/regions.py (3 x 10 PoPs)"),
}


def _regions(pops_per_region: int) -> Any:
    sys.path.insert(0, str(PROJECT / "topologies"))
    import regions

    return regions.topology(3, pops_per_region)


def sample(lab: Lab) -> dict[str, int]:
    """node → kB PSS of its daemons (and their children, e.g. an edge worker's isolates)."""
    per_node: dict[str, int] = {}
    for (node, name), mib in pss_now(lab.run_dir).items():
        if name != "mininet-shell":
            per_node[node] = per_node.get(node, 0) + int(mib * 1024)
    return per_node


def kind_of(lab: Lab, node: str) -> str:
    if node in {r.name for r in lab.topo.routers}:
        return "router"
    if node in {s.name for s in lab.topo.servers}:
        return "pop_server"
    if node == lab.topo.control.name:
        return "control"
    if node in {cp.name for cp in lab.topo.control_planes}:
        return "control_plane"
    if node in {k.name for k in lab.topo.kv_masters}:
        return "kv_master"
    if node == "lab":
        return "lab"  # the zygote the servers' daemons are forked from
    if lab.topo.monitoring is not None and node == lab.topo.monitoring.name:
        return "monitoring"
    dns = lab.topo.dns
    if dns is not None and node in {n.name for n in dns.nodes}:
        return f"dns_{dns_kind(dns.node(node))}"
    return "client"


def run_once(name: str) -> dict[str, Any]:
    topo = TOPOLOGIES[name]()
    lab = Lab(topo, name="bench")
    t0 = monotonic()
    lab.up(timeout=180)
    up_s = monotonic() - t0
    try:
        peak = sample(lab)
        pop = busiest_pop({c: p or "" for c, p in lab.catchment().items()})
        clients = [c for c, p in lab.catchment().items() if p == pop]
        t = lab.withdraw(pop)
        shifts = lab.wait_shifted(clients, t)
        lab.wait_shifted(clients, lab.announce(pop))
        for node, kb in sample(lab).items():
            peak[node] = max(kb, peak.get(node, 0))
    finally:
        lab.down()
    kinds: dict[str, list[int]] = {}
    for node, kb in peak.items():
        kinds.setdefault(kind_of(lab, node), []).append(kb)
    return {
        "up_s": round(up_s, 2),
        "phases_s": {k: round(v, 2) for k, v in lab.timings.items()},
        "memory_mb": {k: {"nodes": len(v), "mean": round(statistics.mean(v) / 1024, 1),
                          "max": round(max(v) / 1024, 1), "total": round(sum(v) / 1024, 1)}
                      for k, v in sorted(kinds.items())},
        "withdraw_shift_ms": {c: round((s.shift_s or 0) * 1000, 1) for c, s in shifts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("topologies", nargs="*", default=list(TOPOLOGIES))
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": {"cpus": len(__import__("os").sched_getaffinity(0))}, "results": {}}
    for name in args.topologies:
        topo = TOPOLOGIES[name]()
        runs = [run_once(name) for _ in range(args.runs)]
        ups = [r["up_s"] for r in runs]
        result["results"][name] = {
            "nodes": {"routers": len(topo.routers), "pop_servers": len(topo.servers), "clients": len(topo.clients)},
            "up_s": {"median": statistics.median(ups), "min": min(ups), "max": max(ups), "runs": ups},
            "last_run": runs[-1],
        }
        print(f"{name}: up {ups}", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
