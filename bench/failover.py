#!/usr/bin/env python3
"""Benchmark (not a test): fault → client shift, N runs per scenario, FRR and BIRD, profile ``fast``;
plus service-crash with ExaBGP's bundled healthcheck (same interval/fall/rise) beside anylab's agent.

Topology ``topologies/failover.yaml`` (four clients, sjc with two servers behind r2, lax the backup behind
r3; the clients' router r1 is two BGP hops from either PoP). Per scenario and router kind: p50/p90/max of
the clients' shift (fault → first answer from another server), of detection and of the last FIB change,
lost probes, and the probe rate achieved.

    sudo .venv/bin/python bench/failover.py [--runs 10] [--out bench/results/failover.json]

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from lab.measure.runner import measure  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from model.load import build_topology  # noqa: E402

SCENARIOS = [("service-crash", "sjc"), ("server-silent", "sjc"), ("drain", "sjc"), ("speaker-crash", "sjc"),
             ("server-silent", "sjc-s1")]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    s = result["summary"]
    return {"shift_s": s["shift_s"], "detect_s": s["detect_s"], "network_convergence_s": s["network_convergence_s"],
            "lost_per_client": s["lost"], "probe_rate_hz": s["achieved_probe_rate_hz"],
            "crosscheck_disagreements": sum(len(r["crosscheck"]) for r in result["runs"]),
            "catchment_restored": result["catchment_restored"]}


def lab_for(kind: str, name: str, health_agent: str = "anylab", profile: Any = "fast") -> Lab:
    data = yaml.safe_load((PROJECT / "topologies" / "failover.yaml").read_text())
    for r in data["routers"]:
        r["kind"] = kind
    data["pops"][0]["health_agent"] = health_agent
    data["settings"]["profile"] = profile
    return Lab(build_topology(data, f"failover.yaml ({kind}, {health_agent}, {profile})"), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"topology": "failover.yaml", "profile": "fast", "runs": args.runs, "results": {}}
    for kind in ("frr", "bird"):
        with lab_for(kind, f"bf{kind}") as lab:
            for scenario, target in SCENARIOS:
                result, _ = measure(lab, scenario, target, repeat=args.runs)
                out["results"][f"{scenario} {target} / {kind}"] = summary(result)
                print(f"{scenario} {target} / {kind}: {summary(result)['shift_s']}", file=sys.stderr)
    with lab_for("frr", "bfexa", "exabgp") as lab:
        result, _ = measure(lab, "service-crash", "sjc", repeat=args.runs)
        out["results"]["service-crash sjc / frr, ExaBGP healthcheck"] = summary(result)
    for kind in ("frr", "bird"):  # what BFD buys: the same silent PoP on the hold timer alone (3 s)
        with lab_for(kind, f"bn{kind}", profile={"base": "fast", "bfd": None}) as lab:
            result, _ = measure(lab, "server-silent", "sjc", repeat=args.runs)
            out["results"][f"server-silent sjc / {kind}, no BFD (hold 3 s)"] = summary(result)
            print(f"server-silent no BFD / {kind}: {summary(result)['shift_s']}", file=sys.stderr)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
