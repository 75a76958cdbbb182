#!/usr/bin/env python3
"""Benchmark (not a test): overload and the origin's circuit breaker on ``global.yaml``.

One lab, every PoP server given ``--capacity`` requests/s (the design's per-PoP capacity scaled to a
2-core box). A priority mix (P0 10 %, P1 40 %, P2 30 %, P3 20 %: :data:`lab.load.overload.DEFAULT_MIX`) at 1×,
2× and 4× the capacity of the PoP that ``--client``'s region reaches, ``--duration`` s each, from the
clients in its catchment; then ``origin-errors`` until the origin's breaker opens, and the time until
half-open probes close it again (the design's breaker: 5 failures, 30 s open, 3 successes). Then a
second lab without spillover whose health agents demote an overloaded server's announcement (≥ 90 % for
2 s; restored after 5 s below 50 %), the same PoP at 2×: when it was demoted, how much of the traffic BGP
moved to other PoPs, and how often it flapped. ``scale``: the overloaded PoP brought to one more server
and back by hand (every PoP has one standby server): seconds until the processes were ready, the
sessions up and the upstream FIB had it.

Prints one JSON document: ``{"loads": {"1x"|"2x"|"4x": {"P0".."P3": {"offered", "served", "shed",
"p99_ms"}}}, "spilled_share": {"2x": float, …}, "breaker": {"open_after_failures", "closed_after_s",
"configured"}, "demotion": {...}, "scale": {"up", "down"}, "detail": {...}}``.

    sudo .venv/bin/python bench/overload.py [--capacity 50] [--duration 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from lab.load.overload import breaker_run, deploy_classes, overload  # noqa: E402
from lab.run.lab import Lab  # noqa: E402

TOPOLOGY = PROJECT / "topologies" / "global.yaml"
MULTIPLES = (1.0, 2.0, 4.0)
DEMOTE = {"above": 0.9, "after_s": 2.0, "below": 0.5, "restore_after_s": 5.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--capacity", type=float, default=50.0, help="requests/s per PoP server")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    parser.add_argument("--probe-rate", type=float, default=50.0, help="the clients' UDP probes per second")
    parser.add_argument("--client", default="na-c1", help="the overloaded PoP is the one this client reaches")
    args = parser.parse_args()
    spec = yaml.safe_load(TOPOLOGY.read_text())
    spec.setdefault("settings", {})["server_capacity_rps"] = args.capacity
    for pop in spec["pops"]:  # one standby server each, for the scaling figures
        pop["max_servers"] = pop.get("servers", 1) + 1
    # The probers are not what is measured here; at the default 500 Hz × 6 clients they take a good part
    # of the two cores the loads need.
    spec["settings"]["probe_rate_hz"] = args.probe_rate
    out: dict[str, object] = {"capacity_rps_per_server": args.capacity, "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="anylab-bench-overload-") as tmp:
        path = Path(tmp) / "global-overload.yaml"
        path.write_text(yaml.safe_dump(spec))
        with Lab.from_file(path, name="bov") as lab:
            deploy_classes(lab)
            pop = lab.catchment()[args.client]
            if pop is None:
                raise SystemExit(f"{args.client} reaches no PoP")
            runs = {f"{m:g}x": overload(lab, pop, m, args.duration) for m in MULTIPLES}
            out["pop"] = pop
            out["loads"] = {k: {p: {f: v[f] for f in ("offered", "served", "shed", "p99_ms")}
                                for p, v in r["classes"].items()} for k, r in runs.items()}
            out["spilled_share"] = {k: r["spilled_share"] for k, r in runs.items()}
            out["breaker"] = breaker_run(lab, args.client)
            serving = len(lab.topo.pop(pop).servers)
            out["scale"] = {"up": lab.scale(pop, serving + 1), "down": lab.scale(pop, serving)}
            out["detail"] = runs
        # The other answer to overload: the health agents demote the announcement (no L7 spillover here,
        # so that the PoP reaches the demotion threshold), and BGP moves whole catchments.
        spec["settings"]["spillover_pops"] = 0
        spec["settings"]["profile"] = {"base": lab.topo.spec.settings.profile.name.rstrip("*"),
                                       "health": {"overload": DEMOTE}}
        path.write_text(yaml.safe_dump(spec))
        with Lab.from_file(path, name="bod") as lab:
            deploy_classes(lab)
            run = overload(lab, out["pop"], 2.0, args.duration)  # type: ignore[arg-type]
            out["demotion"] = {"config": DEMOTE, "demotions": run["demotions"], "moved_share": run["moved_share"],
                               "first_moved_s": run["first_moved_s"],
                               "classes": {p: {f: v[f] for f in ("offered", "served", "shed", "moved", "p99_ms")}
                                           for p, v in run["classes"].items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
