#!/usr/bin/env python3
"""Benchmark (not a test): the control plane in three regions on one etcd cluster (issue 22), on
``global.yaml``.

- **Propagation**: deploy → every PoP server running it (its edge's ``t_applied`` − the API's ``t`` at
  the deploy), p50/p99 over every server of every deploy, with no fault and during each fault (once the
  faulted region's PoPs have moved: what is measured is the deploy path, not the failover).
- **Faults**, each ``--repeat`` times: ``cp-down`` and ``cp-cut`` of a region whose etcd member does not
  lead (the design's "never interrupted by losing a non-leader region"), ``cp-cut`` of the leader's region
  (``cp-cut-leader``), ``etcd-leader-kill``, ``artifact-store-wipe``: time from the fault to the first
  acknowledged deploy (the operator's client tries every region in the topology's order, a deploy every
  20 ms); for ``cp-down``/``cp-cut``, the time each of the region's PoP servers took to follow another
  region.
- **Acknowledged deploys lost**: during every ``cp-cut``, one deployer per region (each its own region's
  API only) deploys distinct versions of one worker as fast as it can; after the restore every version
  acknowledged must be in that worker's history in every region (goal 0). ``ANYLAB_WEAKEN=cp`` runs the
  same against a control plane that writes blindly and acknowledges what etcd did not take: the figure
  must then be above 0, or it could not have failed.
- **API under load**: ``--api-concurrency`` callers upload a ``--code-kb`` kB worker to the first region's
  API for ``--api-duration`` s from the control node; p50/p99 per second, and the replicas the design's
  rule (p99 > 500 ms) added, with the p99 before the first replica and after the last.

    sudo .venv/bin/python bench/control_plane.py [--repeat 3] [--out bench/results/control-plane.json]
    sudo ANYLAB_WEAKEN=cp .venv/bin/python bench/control_plane.py --only-loss
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from control_plane.client import ADMIN_TOKEN, Client, ControlPlaneError  # noqa: E402
from core.clock import monotonic  # noqa: E402
from core.proc import start_tool  # noqa: E402
from core.stats import quantile  # noqa: E402
from core.wait import wait_for  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.run.rundir import control_plane_dirs  # noqa: E402
from model.load import load_topology  # noqa: E402

WORKER = "async def fetch(request, env, ctx):\n    return env.V\n"


def ms(values: list[float]) -> dict[str, Any]:
    xs = [v * 1e3 for v in values]
    return {"n": len(xs), "p50_ms": _r(quantile(xs, 0.5)), "p99_ms": _r(quantile(xs, 0.99)),
            "max_ms": _r(max(xs)) if xs else None}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


class Bench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.client = Client(control_plane_dirs(lab.topo, lab.run_dir), timeout=10)
        self.pool: list[str] = []
        self.serial = 0

    def region_client(self, region: str) -> Client:
        return Client(self.lab.node_dir(self.lab.topo.control_plane_of(region).name), timeout=10)

    def upload(self, name: str, n: int) -> list[str]:
        out = []
        for _ in range(n):
            self.serial += 1
            out.append(self.client.upload(name, {"code": WORKER, "host": f"{name}.example",
                                                 "bindings": {"V": str(self.serial)}})["version"])
        return out

    def release(self, version: str) -> list[float]:
        """Deploy ``version`` of ``bench`` everywhere and wait until every server runs it: the propagations."""
        reply = self.client.deploy("bench", version)
        return list(self.client.wait_applied("bench", reply["placement"], reply["t"], timeout=30).values())

    def propagation(self, deploys: int) -> list[float]:
        out: list[float] = []
        for version in self.upload("bench", deploys):
            out += self.release(version)
        return out

    def first_ack(self, t_fault: float, version: str, timeout: float = 20.0) -> float:
        def attempt() -> float | None:
            try:
                self.client.deploy("bench", version)
            except ControlPlaneError:
                return None
            return monotonic()

        t: float = wait_for(attempt, timeout=timeout, what="an acknowledged deploy", interval=0.02)
        return t - t_fault

    def follows(self) -> dict[str, dict[str, Any]]:
        out = {}
        for s in self.lab.topo.servers:
            out[s.name] = json.loads((self.lab.node_dir(s.name) / "deployments" / "sync.json").read_text())
        return out

    def failover(self, region: str, t_fault: float) -> list[float]:
        home = self.lab.topo.control_plane_of(region)
        home_addr = f"{home.address}:{home.port}"
        servers = [s.name for s in self.lab.topo.servers if s.region == region]
        moved: dict[str, float] = {}

        def all_moved() -> bool:
            for name, sync in self.follows().items():
                if name in servers and sync["following"] != home_addr and (sync["t_failover"] or 0) > t_fault:
                    moved[name] = sync["t_failover"] - t_fault
            return len(moved) == len(servers)

        wait_for(all_moved, timeout=30, what=f"{region}'s PoP servers to follow another region", interval=0.1)
        return list(moved.values())

    def back_home(self) -> None:
        home = {cp.region: f"{cp.address}:{cp.port}" for cp in self.lab.topo.control_planes}
        want = {s.name: home[s.region] for s in self.lab.topo.servers}
        wait_for(lambda: all(f["following"] == want[n] and f["reachable"] for n, f in self.follows().items()),
                 timeout=30, what="every PoP server back on its own region", interval=0.2)

    def race(self, seconds: float, versions: list[str]) -> tuple[list[str], int]:
        """One deployer per region for ``seconds``, each its own region's API, each its share of
        ``versions`` (each deployed once): the versions acknowledged, and the refusals."""
        regions = [cp.region for cp in self.lab.topo.control_planes]
        acked: list[str] = []
        refused = [0]
        lock = threading.Lock()
        end = monotonic() + seconds

        def deployer(i: int, region: str) -> None:
            client = self.region_client(region)
            for version in versions[i::len(regions)]:
                if monotonic() > end:
                    return
                try:
                    client.deploy("race", version)
                except ControlPlaneError:
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    acked.append(version)

        threads = [threading.Thread(target=deployer, args=(i, r)) for i, r in enumerate(regions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        return acked, refused[0]

    def lost(self, acked: list[str]) -> dict[str, list[str]]:
        """Region → the acknowledged versions of ``race`` that the region's history does not hold."""
        out = {}
        self.lab.wait_control_planes(timeout=30)
        for cp in self.lab.topo.control_planes:
            # Every placement ever made is in the history (fewer than HISTORY_KEPT here).
            worker = self.region_client(cp.region).call_one(self.lab.node_dir(cp.name), "GET", "/v1/workers/race")
            in_history = {v for placement in worker["history"] for v in placement.values()}
            out[cp.region] = sorted(set(acked) - in_history)
        return out


def api_load(lab: Lab, concurrency: int, duration: float, code_kb: int) -> dict[str, Any]:
    cp = lab.topo.control_planes[0]
    out_file = lab.run_dir / "api-load.jsonl"
    events_file = lab.run_dir / "autoscale-events.jsonl"
    before = len(events_file.read_text().splitlines()) if events_file.exists() else 0
    t0 = monotonic()
    proc = start_tool(lab.run_dir, [sys.executable, "-m", "lab.load.api_load", "--target", f"{cp.address}:{cp.port}",
                                    "--token-file", str(lab.node_dir(cp.name) / ADMIN_TOKEN), "--out", str(out_file),
                                    "--concurrency", str(concurrency), "--duration", str(duration),
                                    "--code-kb", str(code_kb)],
                      node=lab.topo.control.name, name="api-load", netns=lab.netns[lab.topo.control.name])
    proc.wait(duration + 60)
    calls = [json.loads(x) for x in out_file.read_text().splitlines()]
    events = [json.loads(x) for x in events_file.read_text().splitlines()[before:]] if events_file.exists() else []
    adds = [e for e in events if e.get("control_plane") == cp.region]
    per_s: dict[int, list[float]] = {}
    for c in calls:
        per_s.setdefault(int(c["t1"] - t0), []).append(c["t1"] - c["t0"])
    # One phase per number of API processes: from when it was reached (the start, or a replica ready) to
    # the next change; calls counted by when they ended.
    edges = [(t0, 1), *((e["t"], e["to"]) for e in adds if not e.get("error"))]
    end = max((c["t1"] for c in calls), default=t0)
    phases = []
    for i, (start, processes) in enumerate(edges):
        stop = edges[i + 1][0] if i + 1 < len(edges) else end
        lat = [c["t1"] - c["t0"] for c in calls if start <= c["t1"] < stop and c["st"] in (200, 201)]
        phases.append({"api_processes": processes, "from_s": round(start - t0, 2), "to_s": round(stop - t0, 2),
                       "calls_per_s": round(len(lat) / max(stop - start, 1e-9), 1), **ms(lat)})
    kinds: dict[str, int] = {}
    for c in calls:
        if c["st"] not in (200, 201):
            kind = f"{c['st']} {c['err'] or ''}".strip()
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"region": cp.region, "concurrency": concurrency, "duration_s": duration, "code_kb": code_kb,
            "calls": len(calls), "errors": kinds,
            "overall": ms([c["t1"] - c["t0"] for c in calls]), "phases": phases,
            "replicas_added": [{"t_s": round(e["t"] - t0, 2), "to": e["to"], "p99_ms": e["p99_ms"],
                                "error": e.get("error")} for e in adds],
            "per_second": {s: ms(v) for s, v in sorted(per_s.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--deploys", type=int, default=10, help="deploys measured for propagation, per phase")
    parser.add_argument("--api-concurrency", type=int, default=10)
    parser.add_argument("--api-duration", type=float, default=40.0)
    parser.add_argument("--code-kb", type=int, default=100)
    parser.add_argument("--only-loss", action="store_true", help="only the cp-cut races (the weakened run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat 1..20")
    topo = load_topology(PROJECT / "topologies" / "global.yaml")
    out: dict[str, Any] = {"topology": "global.yaml", "weakened": os.environ.get("ANYLAB_WEAKEN", ""),
                           "repeat": args.repeat}
    regions = [cp.region for cp in topo.control_planes]
    with Lab(topo, "bcp") as lab:
        b = Bench(lab)
        out["up_s"] = round(lab.timings.get("platform_ready", 0.0), 2)
        if not args.only_loss:
            out["normal"] = ms(b.propagation(args.deploys))
            print(json.dumps({"normal": out["normal"]}), file=sys.stderr, flush=True)
        if not args.only_loss:
            out["api_load"] = api_load(lab, args.api_concurrency, args.api_duration, args.code_kb)
            print(json.dumps({"api_load": {k: v for k, v in out["api_load"].items() if k != "per_second"}}),
                  file=sys.stderr, flush=True)
        faults: dict[str, Any] = {}
        race_pool = b.upload("race", 30 * args.repeat)
        acked_all: list[str] = []
        refused_all = 0
        plan = ["cp-cut"] * args.repeat
        if not args.only_loss:
            plan = [*(s for s in ("cp-down", "cp-cut", "cp-cut-leader", "etcd-leader-kill", "artifact-store-wipe")
                      for _ in range(args.repeat))]
        races = 0
        for n, label in enumerate(plan):
            row = faults.setdefault(label, {"first_ack": [], "failover": [], "propagation": [], "runs": []})
            leader = lab.etcd_leader()
            leader_region = next((cp.region for cp in topo.control_planes if cp.name == leader), None)
            if label == "cp-cut-leader":
                scenario, target = "cp-cut", leader_region or regions[0]
            elif label in ("cp-down", "cp-cut"):
                others = [r for r in regions if r != leader_region]
                scenario, target = label, others[n % len(others)]
            elif label == "etcd-leader-kill":
                scenario, target = label, "control"
            else:
                scenario, target = label, regions[n % len(regions)]
            pool = b.upload("bench", 1)
            t_fault = lab.fail(scenario, target)
            run: dict[str, Any] = {"target": target, "leader_before": leader}
            try:
                if not args.only_loss:
                    run["first_ack_ms"] = round(b.first_ack(t_fault, pool[0]) * 1e3, 1)
                    row["first_ack"].append(run["first_ack_ms"] / 1e3)
                if scenario in ("cp-down", "cp-cut"):
                    moved = b.failover(target, t_fault)
                    row["failover"] += moved
                    run["failover_max_ms"] = round(max(moved) * 1e3, 1)
                if scenario == "cp-cut" and races < args.repeat:
                    share = race_pool[30 * races:30 * (races + 1)]
                    races += 1
                    acked, refused = b.race(4.0, share)
                    acked_all += acked
                    refused_all += refused
                    run["race"] = {"acknowledged": len(acked), "refused": refused}
                if not args.only_loss:
                    row["propagation"] += b.propagation(max(1, args.deploys // 2))
                run["leader_after"] = lab.etcd_leader()
                row["runs"].append(run)
            finally:
                lab.restore(target)
            lab.wait_control_planes(timeout=30)
            if scenario in ("cp-down", "cp-cut"):
                b.back_home()
            print(json.dumps({label: run}), file=sys.stderr, flush=True)
        for scenario, row in faults.items():
            out.setdefault("faults", {})[scenario] = {
                "first_ack": ms(row["first_ack"]), "pop_failover": ms(row["failover"]),
                "propagation": ms(row["propagation"]), "runs": row["runs"]}
        lost = b.lost(acked_all)
        out["loss"] = {"acknowledged": len(acked_all), "refused": refused_all,
                       "lost_per_region": {r: len(v) for r, v in lost.items()},
                       "lost": max(len(v) for v in lost.values())}
        print(json.dumps({"loss": out["loss"]}), file=sys.stderr, flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
