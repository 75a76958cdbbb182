#!/usr/bin/env python3
"""Benchmark (not a test): Durable Object failover on ``global.yaml`` under Jepsen-style load.

Two labs, one after the other:

- ``sync`` (the topology's default: an answer waits for the backup region): ``--failovers`` failovers
  (region-down, owner host crash, owner cut off from the directory, in turn; see :mod:`lab.load.do_nemesis`)
  while every client runs register and counter operations; the whole history is checked for
  linearizability and the acknowledged increments missing from the final counts are counted.
- ``async`` (``settings.do_mode: async``: the answer leaves before the backup has the write, the
  design's RPO < 1 s): ``--async-failovers`` failovers, the same checks, and the shipping lag the owners
  measured (commit → the backup's confirmation): the window of writes a failover can lose.

Prints one JSON document: ``{"ops", "acked_lost", "linearizable", "failover_s": {"p50", "max"},
"phases_s": {...}, "call_ms": {"local_p50", "remote_p50"}, "async_rpo_s": {...}, "async": {...},
"runs": [...]}`` (the top-level figures are the sync lab's).

    sudo .venv/bin/python bench/do.py [--failovers 12] [--async-failovers 4] [--scenarios do-host-wipe]

``--scenarios`` names the faults the failovers take in turn (default region-down,do-crash,do-cut);
``do-host-wipe`` deletes the owner's disk: sync must still lose nothing and stay linearizable, async loses
what had not been shipped — the async lab is the reference that shows the count can come out otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.stats import quantile  # noqa: E402
from lab.load.do_nemesis import ALL_SCENARIOS, SCENARIOS, Nemesis, NemesisSpec  # noqa: E402
from lab.run.lab import Lab  # noqa: E402

TOPOLOGY = PROJECT / "topologies" / "global.yaml"


def one_lab(topology: Path, name: str, failovers: int,
            scenarios: tuple[str, ...] = SCENARIOS) -> tuple[dict[str, Any], dict[str, Any]]:
    """The nemesis result and every region's DO host status at the end (their shipping lag)."""
    with Lab.from_file(topology, name=name) as lab:
        result = Nemesis(lab, NemesisSpec(failovers=failovers, seed=name, scenarios=scenarios)).run()
        hosts = {k.region: lab.do_host(k.region) for k in lab.topo.kv_masters}
    return result, hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--failovers", type=int, default=12)
    parser.add_argument("--async-failovers", type=int, default=4)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(ALL_SCENARIOS)}")
    args = parser.parse_args()
    scenarios = tuple(x for x in args.scenarios.split(",") if x)
    if not scenarios or set(scenarios) - set(ALL_SCENARIOS):
        parser.error(f"--scenarios: one or more of {', '.join(ALL_SCENARIOS)}")

    sync, _ = one_lab(TOPOLOGY, "bdo", args.failovers, scenarios)
    spec = yaml.safe_load(TOPOLOGY.read_text())
    spec.setdefault("settings", {})["do_mode"] = "async"
    with tempfile.TemporaryDirectory(prefix="anylab-bench-do-") as tmp:
        path = Path(tmp) / "global-async.yaml"
        path.write_text(yaml.safe_dump(spec))
        async_result, hosts = one_lab(path, "bdoa", args.async_failovers, scenarios)
    lags = [h["ship_lag_s"] for h in hosts.values() if h["ship_lag_s"]["max"] is not None]
    out = {
        "topology": "global.yaml", "mode": "sync", "scenarios": list(scenarios),
        "ops": sync["ops"], "acked_lost": sync["acked_lost"], "acked_lost_by": sync["acked_lost_by"],
        "final_reads": sync["final_reads"],
        "linearizable": sync["linearizable"],
        "failovers": sync["failovers"], "failover_s": sync["failover_s"], "phases_s": sync["phases_s"],
        "call_ms": sync["call_ms"], "outcomes": sync["outcomes"],
        "async_rpo_s": {"p50_of_hosts": quantile([lag["p50"] for lag in lags], 0.5),
                        "p99_max": max((lag["p99"] for lag in lags), default=None),
                        "max": max((lag["max"] for lag in lags), default=None)},
        "verdicts": sync["verdicts"],
        "async": {k: async_result[k] for k in ("ops", "acked_lost", "acked_lost_by", "final_reads", "linearizable",
                                               "failovers",
                                               "failover_s", "phases_s", "outcomes", "verdicts")},
        "runs": [{k: r[k] for k in ("scenario", "region", "moved", "phases_s")} for r in sync["runs"]],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
