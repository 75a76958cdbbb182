#!/usr/bin/env python3
"""Benchmark (not a test): replicated KV on ``global.yaml`` with a region killed mid-run.

A writer at one PoP server (``--writer``, region na) puts ``--rate`` keys per second for ``--seconds``;
``--kill`` (a region) goes down at a third of the run and comes back at two thirds. Then the bench waits
until every PoP server has every write (bounded), and reports:

- ``writes``, ``acked`` (committed: on two regions' masters), ``accepted`` (queued at the writer's
  replica: its master was away), ``acked_lost`` (acknowledged writes some PoP server never got), and
  ``accepted_to_committed_s`` (how long the queued ones waited);
- ``propagation_s``: acknowledgement → the write applied at every PoP server outside the killed region
  (from each replica's ``kv-applied.jsonl``, CLOCK_MONOTONIC) — and ``killed_region_catch_up_s``: the
  region's restore → its replicas holding every write;
- ``write_ms`` (the writer's put, replica → master → peer master → back) and ``read_local_ms`` (a get at
  a PoP server's replica), p50/p99.

    sudo .venv/bin/python bench/kv.py [--seconds 20] [--rate 20] [--kill eu]

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.clock import monotonic  # noqa: E402
from core.wait import wait_for  # noqa: E402
from kv.client import KvClient  # noqa: E402
from kv.store import KvError  # noqa: E402
from lab.run.lab import Lab  # noqa: E402

NS = "bench"



def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def applied_times(lab: Lab, server: str) -> dict[str, float]:
    """Key → when this replica first applied it."""
    out: dict[str, float] = {}
    path = lab.node_dir(server) / "kv-applied.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["ns"] == NS:
                for k in rec["keys"]:
                    out.setdefault(k, rec["t"])
    return out


def run(seconds: float, rate: float, kill: str, writer_pop: str) -> dict[str, Any]:
    with Lab.from_file(PROJECT / "topologies" / "global.yaml", name="bkv") as lab:
        writer = KvClient(lab.node_dir(lab.topo.pop(writer_pop).servers[0]) / "kv.sock", timeout=10)
        replies: dict[str, tuple[float, float, dict[str, Any]]] = {}
        t0 = monotonic()
        killed: dict[str, float] = {}

        def faults() -> None:
            # The schedule of the run, on its own clock: down at 1/3, back at 2/3.
            time.sleep(seconds / 3)
            killed["down"] = lab.fail("region-down", kill)
            time.sleep(seconds / 3)
            killed["up"] = lab.restore(kill)

        chaos = threading.Thread(target=faults)
        chaos.start()
        i = 0
        while monotonic() - t0 < seconds:
            key = f"k{i:06d}"
            t_start = monotonic()
            try:
                reply = writer.put(NS, key, str(i).encode())
            except KvError as exc:
                reply = {"error": str(exc)}
            replies[key] = (t_start, monotonic(), reply)
            i += 1
            time.sleep(max(0.0, t0 + i / rate - monotonic()))  # the writer's pace
        chaos.join()
        acked = [k for k, (_s, _e, r) in replies.items() if r.get("committed") is True]
        accepted = [k for k, (_s, _e, r) in replies.items() if r.get("accepted") and not r.get("committed")]
        servers = [s.name for s in lab.topo.servers]
        dead = {s.name for s in lab.topo.servers if s.region == kill}

        def all_there() -> bool:
            return all(set(acked + accepted) <= set(applied_times(lab, s)) for s in servers)

        try:
            wait_for(all_there, timeout=120, what="every write at every PoP server", interval=0.5)
        except Exception as exc:  # report what is missing rather than nothing
            print(f"bench: {exc}", file=sys.stderr)
        applied = {s: applied_times(lab, s) for s in servers}
        lost = [k for k in acked if any(k not in applied[s] for s in servers)]
        propagation = []
        for k in acked:
            t_ack = replies[k][1]
            ts = [applied[s][k] for s in servers if s not in dead and k in applied[s]]
            if ts:
                propagation.append(max(0.0, max(ts) - t_ack))
        catch_up = max((applied[s][k] for s in dead for k in acked + accepted if k in applied[s]), default=None)
        drained: dict[str, float] = {}
        events = lab.node_dir(lab.topo.pop(writer_pop).servers[0]) / "kv-events.jsonl"
        for line in events.read_text().splitlines() if events.exists() else []:
            e = json.loads(line)
            if e.get("event") == "drained" and e.get("outcome") == "committed":
                drained[str(e.get("key"))] = float(e["t"])
        queued = [drained[k] - replies[k][1] for k in accepted if k in drained]
        reader = KvClient(lab.node_dir(lab.topo.pop("fra").servers[0]) / "kv.sock", timeout=10)
        reads = []
        for k in acked[:300]:
            t = monotonic()
            reader.get(NS, k)
            reads.append((monotonic() - t) * 1000)
        writes = [(e - s) * 1000 for s, e, r in replies.values() if r.get("committed") is True]
        return {
            "topology": "global", "writer": writer_pop, "killed_region": kill, "seconds": seconds, "rate_hz": rate,
            "writes": len(replies), "acked": len(acked), "accepted": len(accepted),
            "refused": sum("error" in r for _s, _e, r in replies.values()), "acked_lost": len(lost),
            "propagation_s": {"p50": pct(propagation, 0.5), "p99": pct(propagation, 0.99),
                              "max": round(max(propagation), 4) if propagation else None, "n": len(propagation)},
            "killed_region_catch_up_s": round(catch_up - killed["up"], 3) if catch_up and "up" in killed else None,
            "accepted_to_committed_s": {"p50": pct(queued, 0.5), "max": round(max(queued), 3) if queued else None,
                                        "n": len(queued)},
            "read_local_ms": {"p50": pct(reads, 0.5), "p99": pct(reads, 0.99)},
            "write_ms": {"p50": pct(writes, 0.5), "p99": pct(writes, 0.99), "max": round(max(writes), 1)},
            "goals": {"acked_lost": 0, "propagation_p99_s": 0.5},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--kill", default="eu")
    parser.add_argument("--writer", default="sjc", help="the writer's PoP")
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.rate, args.kill, args.writer), indent=1))


if __name__ == "__main__":
    main()
