#!/usr/bin/env python3
"""Benchmark (not a test): does distance add to a failover what the model says, and nothing else?

The same twelve PoPs twice, in the same run: ``global.yaml`` with the ``fast`` profile (bare veths) and
``global_geo.yaml`` (the same routers, PoPs and clients, delays from distance, ``fast`` too). On each,
``withdraw`` (default: the lab withdraws ord's route), ``drain ord`` or ``pop-down ord`` N times: ord's
clients (na-c1, na-c2) move to sjc / iad.

Model: with ``withdraw``/``drain`` ord-s1's withdrawn/demoted route reaches the client's router (ord-s1's
upstream) one link delay d(ord-s1 ↔ that router) later; with ``pop-down`` that router's BFD detects the
silence, and what ord-s1 sent before it fell silent still arrives for that same delay. Either way the
first answer from the new PoP arrives one round trip RTT(client → new PoP) after the FIB changes. So

    shift_geo ≈ shift_bare + d(ord-s1 ↔ client's router) + RTT(client → new PoP)

with the delays and round trip from the geo lab's calibration (the same relay, measured on ``up``).

    sudo .venv/bin/python bench/geo_failover.py [--runs 10] [--scenario drain|pop-down]
        [--out bench/results/geo-failover.json]
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

from core.stats import quantile  # noqa: E402
from core.wait import wait_for  # noqa: E402
from lab.links.calibrate import worst  # noqa: E402
from lab.measure.inflation import report  # noqa: E402
from lab.measure.runner import measure  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from model.load import build_topology  # noqa: E402

NEW_POP = {"na-c1": "sjc", "na-c2": "iad"}
ROUTER = {"na-c1": "na-w", "na-c2": "na-e"}


def lab_for(path: str, name: str) -> Lab:
    data = yaml.safe_load((PROJECT / "topologies" / path).read_text())
    data.setdefault("settings", {})["profile"] = "fast"
    data["settings"].pop("probe_idle_hz", None)  # both labs probe at the same rate throughout
    return Lab(build_topology(data, path), name)


def shifts(result: dict[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {c: [] for c in NEW_POP}
    for run in result["runs"]:
        for c in NEW_POP:
            s = run["clients"][c]["shift_s"]
            if s is not None:
                out[c].append(s * 1e3)
    return out


def withdrawals(lab: Lab, runs: int) -> dict[str, list[float]]:
    """``runs`` times: withdraw ord's route, wait until its clients moved, announce it again and wait
    until they are back; each client's shift (ms)."""
    out: dict[str, list[float]] = {c: [] for c in NEW_POP}
    for _ in range(runs):
        t = lab.withdraw("ord")
        got = lab.wait_shifted(list(NEW_POP), t)
        for c, r in got.items():
            if r.shift_s is not None:
                out[c].append(r.shift_s * 1e3)
        t_back = lab.announce("ord")

        def back(since: float = t_back + 0.5) -> bool:
            now = lab.catchment(after=since)
            return all(now.get(c) == "ord" for c in NEW_POP)

        wait_for(back, timeout=30, what="ord's clients back")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--scenario", default="withdraw", choices=["withdraw", "drain", "pop-down"],
                        help="withdraw: the lab withdraws ord's route at once (no health check in the way); "
                             "drain: ord-s1's agent demotes it (its check's phase adds noise); pop-down: it "
                             "falls silent (BFD's timer phase adds noise)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out: dict[str, Any] = {"scenario": f"{args.scenario} ord", "runs": args.runs, "profile": "fast"}
    for label, path in (("bare", "global.yaml"), ("geo", "global_geo.yaml")):
        with lab_for(path, f"bg{label}") as lab:
            if args.scenario == "withdraw":
                row: dict[str, Any] = {"shift_ms": withdrawals(lab, args.runs)}
            else:
                result, _ = measure(lab, args.scenario, "ord", repeat=args.runs)
                row = {"shift_ms": shifts(result)}
            if label == "geo":
                cal = lab.links.calibration()
                rtt = report(lab)
                row["model"] = {c: {"d_server_router_ms": cal[f"{ROUTER[c]}:ord-s1"]["out"]["p50_ms"],
                                    "rtt_new_pop_ms": rtt[c]["rtt_ms"][NEW_POP[c]]} for c in NEW_POP}
                row["links_worst"] = worst(cal)
            out[label] = row
            print(json.dumps({label: row}), file=sys.stderr, flush=True)
    cmp: dict[str, Any] = {}
    for c in NEW_POP:
        bare, geo = quantile(out["bare"]["shift_ms"][c], 0.5), quantile(out["geo"]["shift_ms"][c], 0.5)
        m = out["geo"]["model"][c]
        added = m["d_server_router_ms"] + m["rtt_new_pop_ms"]
        cmp[c] = {"bare_p50_ms": bare, "geo_p50_ms": geo, "model_added_ms": round(added, 2),
                  "measured_added_ms": None if bare is None or geo is None else round(geo - bare, 2),
                  "residual_ms": None if bare is None or geo is None else round(geo - bare - added, 2)}
    out["comparison"] = cmp
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
