#!/usr/bin/env python3
"""Benchmark (not a test): do the figures change when the lab is cut over several hosts?

The same topology and fault, measured with the lab on one host and partitioned over N "hosts" (the
placement prototype: each host's part behind its own namespace, the links between parts VXLAN tunnels
over an underlay, see docs/scaling.md). Prints, per placement, the summary of ``anylab measure``:
detection, the network's convergence, the clients' shift and gap, probes lost.

    sudo .venv/bin/python bench/placement.py [--topology topologies/global.yaml] [--hosts 3]
        [--scenario pop-down] [--target eu (a region: every PoP of it in turn)] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from lab.measure.runner import measure  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from model.load import load_topology  # noqa: E402
from model.placement import place  # noqa: E402


def one(topology: Path, hosts: int, scenario: str, target: str, repeat: int) -> dict[str, Any]:
    topo = load_topology(topology, hosts=hosts)
    cut = len(place(topo, hosts).cut) if hosts > 1 else 0
    with Lab(topo, name=f"place{hosts}") as lab:
        result, _ = measure(lab, scenario, target, repeat=repeat)
    s = result["summary"]
    return {"hosts": hosts, "tunnels": cut, "scenario": f"{scenario} {target}", "runs": repeat,
            "detect_s": s["detect_s"], "network_convergence_s": s["network_convergence_s"],
            "shift_s": s["shift_s"], "gap_s": s["gap_s"], "lost": s["lost"],
            "probe_rate_hz": s["achieved_probe_rate_hz"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", type=Path, default=PROJECT / "topologies" / "global.yaml")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--scenario", default="pops-down")
    parser.add_argument("--target", default="eu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    out = [one(args.topology, h, args.scenario, args.target, args.repeat) for h in (1, args.hosts)]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
