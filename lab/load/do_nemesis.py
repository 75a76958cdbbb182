"""Durable Object failovers under live traffic, checked: Jepsen-style clients (:mod:`lab.load.do_load`) in
every client namespace while a nemesis fails the region that owns the most objects (for region-down: not
the control node's region, which holds the one-node directory; when no other region owns any, that turn
goes to the next scenario), over and over, with
``region-down``, ``do-crash`` (the owner's host killed) and ``do-cut`` (the owner cut off from the
directory, still reachable by PoPs: a partition that heals) — and, asked for by name, ``do-host-wipe``
(the owner's host killed and its disk deleted: it comes back empty, and whatever it held as a backup for
other regions is gone too).

Per failover, on the one CLOCK_MONOTONIC clock, relative to the fault: ``detect`` (the directory declares
the region down), ``promote`` (the first backup took an object over), ``route`` (the first PoP router
learned a new owner), ``first_served`` (the first request served by a new owner: the failover time) and
``all_served`` (every moved object served again). Then the fault is restored, every host holds a lease
again and every client is served again before the next one.

At the end: one read of every object, the whole history checked for linearizability (registers and
counters separately), acknowledged increments lost (an ``ok`` increment missing from the final count),
and stub call latency by whether the owner was in the client's own region.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from control_plane.client import Client
from core.clock import monotonic
from core.errors import AnylabError
from core.proc import start_tool, tools_running
from core.stats import quantile
from core.wait import wait_for
from durable import client as do_client
from durable.history import load
from durable.linearizability import check
from lab.load.do_load import objects
from lab.run.driver import Driver
from lab.run.rundir import control_plane_dirs

WORKER, HOST = "reg", "reg.example"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "do_register.py"
SCENARIOS = ("region-down", "do-crash", "do-cut")
#: Every scenario a run may ask for (the destructive one only by name).
ALL_SCENARIOS = (*SCENARIOS, "do-host-wipe")


#: The operations that change an object (a cas only when it answered true).
CHANGES = ("incr", "write", "cas")


def acked_lost(history: list[dict[str, Any]], finals: dict[Any, Any]) -> int:
    """Acknowledged changes lost, per object read at the end (``finals``: object → the version that read
    answered). Each ``ok`` change answers the version it made (``examples/do_register.py``: every write,
    successful cas and increment adds one), so without a loss no two acknowledged changes of an object
    share a version: a loss of k that the object climbs past again shows as k versions acknowledged twice,
    one it does not climb past as the final version below the largest acknowledged one; the count is both.
    What versions cannot show: a loss exactly made up for by changes that ended ``info`` but took effect
    (the linearizability check may). Counting ``ok`` changes against the final state instead let those
    hide lost ones."""
    versions: dict[Any, list[int]] = {}
    for e in history:
        changed = e["f"] in CHANGES and (e["f"] != "cas" or e.get("value") is True)
        if e["type"] == "ok" and changed and isinstance(e.get("version"), int):
            versions.setdefault(e["key"], []).append(int(e["version"]))
    lost = 0
    for k, seen in versions.items():
        if k in finals:
            lost += len(seen) - len(set(seen)) + max(0, max(seen) - int(finals.get(k) or 0))
    return lost


@dataclass(frozen=True)
class NemesisSpec:
    """How many failovers, of which kinds, under how much load (per client: ``procs`` × ``rate`` op/s)."""

    failovers: int = 5
    scenarios: tuple[str, ...] = SCENARIOS
    procs: int = 2
    rate: float = 10.0
    registers: int = 3
    counters: int = 3
    seed: str = "0"
    timeout: float = 6.0
    #: Seconds each failover may take before the run gives up (raises).
    phase_timeout: float = 20.0

    def check(self) -> None:
        """Raises AnylabError for a spec outside the lab's bounds (load and fault tests stop by themselves)."""
        if not 1 <= self.failovers <= 100 or not self.scenarios or set(self.scenarios) - set(ALL_SCENARIOS):
            raise AnylabError(f"failovers 1..100 of {', '.join(ALL_SCENARIOS)}")
        if not (1 <= self.procs <= 16 and 0 < self.rate <= 100 and self.registers + self.counters >= 1):
            raise AnylabError("procs 1..16, rate ≤ 100 op/s, at least one object")


def events(path: Path) -> list[dict[str, Any]]:
    return load(path) if path.exists() else []


class Nemesis:
    def __init__(self, driver: Driver, spec: NemesisSpec) -> None:
        spec.check()
        self.driver, self.spec = driver, spec
        self.topo = driver.topo
        self.control_dir = driver.run_dir / self.topo.control.name
        self.regions = [k.region for k in self.topo.kv_masters]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.run_id = secrets.token_hex(3)
        names = objects(spec.registers, spec.counters, self.regions, self.run_id)
        #: This run's objects, by directory key (earlier runs' objects are left out of everything).
        self.keys = {do_client.key_of(f"{WORKER}/Register", n): n for n in names}

    # -- load -------------------------------------------------------------------------------------

    def history_file(self, client: str) -> Path:
        return self.driver.run_dir / client / "do-history.jsonl"

    def _load_argv(self, client: str, duration: float, final: bool = False) -> list[str]:
        s = self.spec
        argv = [sys.executable, "-m", "lab.load.do_load",
                "--target", str(self.topo.anycast[0].network_address), "--host", HOST,
                "--out", str(self.history_file(client)), "--client", client, "--procs", str(s.procs),
                "--rate", str(s.rate), "--registers", str(s.registers), "--counters", str(s.counters),
                "--hints", ",".join(self.regions), "--seed", s.seed, "--run", self.run_id, "--timeout", str(s.timeout),
                "--duration", f"{duration:.0f}"]
        return argv + (["--final"] if final else [])

    def start_load(self, duration: float) -> None:
        for c in self.topo.clients:
            self.history_file(c.name).unlink(missing_ok=True)
            self.procs[c.name] = start_tool(self.driver.run_dir, self._load_argv(c.name, duration), node=c.name,
                                            name="do-load", netns=self.driver.netns[c.name])

    def stop_load(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(self.spec.timeout + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def final_reads(self) -> None:
        """One read of every object (process ``final``, from the first client), the end of a history;
        bounded: killed after 120 s."""
        final_client = self.topo.clients[0].name
        final = start_tool(self.driver.run_dir, self._load_argv(final_client, 60, final=True), node=final_client,
                           name="do-load", netns=self.driver.netns[final_client])
        try:
            final.wait(120)
        except subprocess.TimeoutExpired:
            final.kill()
            final.wait()

    def history(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for c in self.topo.clients:
            out += events(self.history_file(c.name))
        return out

    def wait_served(self, since: float, count: int = 3) -> None:
        """Until every client has ``count`` ok operations invoked after ``since``."""
        pending: list[str] = []

        def ok() -> bool:
            tools_running(self.procs, "do-load")
            pending.clear()
            for c in self.topo.clients:
                done = sum(1 for e in events(self.history_file(c.name)) if e["type"] == "ok" and e["time"] >= since)
                if done < count:
                    pending.append(c.name)
            return not pending

        wait_for(ok, timeout=self.spec.phase_timeout * 2, what="every client's DO operations to succeed",
                 interval=0.1, describe=lambda: "not yet: " + ", ".join(pending))

    # -- one failover ------------------------------------------------------------------------------

    def host_events(self, region: str) -> list[dict[str, Any]]:
        return events(self.driver.run_dir / self.topo.kv_master_of(region).name / "do-events.jsonl")

    def listing(self) -> dict[str, Any]:
        """The directory's listing of this run's objects."""
        listing = do_client.directory(self.control_dir)
        listing["objects"] = {k: o for k, o in listing["objects"].items() if k in self.keys}
        return listing

    def target(self, scenario: str, listing: dict[str, Any]) -> str | None:
        """The region owning the most objects that ``scenario`` may hit (None: no such region owns any).
        The directory is one node on the control node: a region-down of its region takes it along and
        with it every region's lease (all objects unavailable, consistently) — not a failover."""
        owners = Counter(o["owner"] for o in listing["objects"].values())
        spared = self.topo.control.region if scenario == "region-down" else None
        options = [r for r in self.regions if owners[r] and r != spared]
        return max(options, key=lambda r: (owners[r], -self.regions.index(r)), default=None)

    def failover(self, preferred: str) -> dict[str, Any]:
        """One failover: ``preferred`` if some region it may hit owns objects, else the next scenario."""
        listing = self.listing()
        order = list(self.spec.scenarios)
        order = order[order.index(preferred):] + order[:order.index(preferred)]
        choice = next(((sc, t) for sc in order if (t := self.target(sc, listing)) is not None), None)
        if choice is None:
            raise AnylabError("no region owns a Durable Object: nothing to fail over")
        scenario, target = choice
        before = {k: o["epoch"] for k, o in listing["objects"].items() if o["owner"] == target}
        t_fault = self.driver.fail(scenario, target)
        try:
            def moved() -> dict[str, Any] | None:
                now = self.listing()["objects"]
                return {k: now[k] for k in before} if all(now[k]["epoch"] > e for k, e in before.items()) else None

            placed = wait_for(moved, timeout=self.spec.phase_timeout, what=f"{target}'s objects to move",
                              interval=0.05)

            def served() -> dict[str, float] | None:
                got: dict[str, float] = {}
                for region in {p["owner"] for p in placed.values()}:
                    for e in self.host_events(region):
                        if e["event"] == "first_served" and e["key"] in placed and \
                                e["epoch"] == placed[e["key"]]["epoch"]:
                            got[e["key"]] = e["time"]
                return got if len(got) == len(placed) else None

            first = wait_for(served, timeout=self.spec.phase_timeout, what="every moved object to be served",
                             interval=0.05)
        finally:
            t_restore = self.driver.restore(target)
        do_client.wait_leases(self.control_dir, timeout=self.spec.phase_timeout)
        self.wait_served(t_restore)
        directory_events = [e for e in events(self.control_dir / "do-events.jsonl") if e["time"] >= t_fault]
        detect = next((e["time"] for e in directory_events if e["event"] == "region_down" and e["region"] == target),
                      None)
        routes = [e["time"] for e in directory_events if e["event"] == "route" and e.get("key") in placed]
        promotes = [e["time"] for r in {p["owner"] for p in placed.values()} for e in self.host_events(r)
                    if e["event"] == "promote" and e["key"] in placed and e["time"] >= t_fault]

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - t_fault, 4)

        return {"scenario": scenario, "region": target, "moved": len(placed), "took_s": round(monotonic() - t_fault, 2),
                "moved_from": before,
                "to": sorted({p["owner"] for p in placed.values()}), "t_fault": t_fault,
                "phases_s": {"detect": rel(detect), "promote": rel(min(promotes, default=None)),
                             "route": rel(min(routes, default=None)), "first_served": rel(min(first.values())),
                             "all_served": rel(max(first.values()))}}

    def deploy(self) -> None:
        """Once every region's DO host holds its lease, the example worker the clients call, on every PoP.
        Raises WaitTimeout, ControlPlaneError."""
        do_client.wait_leases(self.control_dir)
        Client(control_plane_dirs(self.topo, self.driver.run_dir)).release(
            WORKER, {"code": EXAMPLE.read_text(), "host": HOST, "bindings": {"REG": {"durable_object": "Register"}}})

    # -- the whole run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Deploy the example worker, run the failovers under load, check the history. Raises
        WaitTimeout/AnylabError; every fault is restored and every load process stopped anyway."""
        s = self.spec
        self.deploy()
        t0 = monotonic()
        self.start_load(min(3600.0, 60.0 + s.failovers * 3 * s.phase_timeout))
        runs: list[dict[str, Any]] = []
        try:
            self.wait_served(t0)
            wait_for(lambda: len(self.listing()["objects"]) >= s.registers + s.counters,
                     timeout=s.phase_timeout, what="every object to be placed", interval=0.1)
            for i in range(s.failovers):
                runs.append(self.failover(s.scenarios[i % len(s.scenarios)]))
        finally:
            self.stop_load()
        self.final_reads()
        result = self.summary(runs)
        (self.driver.run_dir / "do-nemesis.json").write_text(json.dumps(result, indent=1))
        return result

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        history = self.history()
        history = [e for e in history if e["key"] in set(self.keys.values())]
        registers = [e for e in history if str(e["key"]).startswith("r")]
        counters = [e for e in history if str(e["key"]).startswith("c")]
        verdicts = {"registers": check(registers, "register"), "counters": check(counters, "counter")}
        finals = {e["key"]: e["value"] for e in history if e["process"] == "final" and e["type"] == "ok"}
        versions = {e["key"]: e.get("version") for e in history if e["process"] == "final" and e["type"] == "ok"}
        lost = acked_lost(history, versions)
        lost_by = {"registers": acked_lost(registers, versions), "counters": acked_lost(counters, versions)}
        region_of = {c.name: c.region for c in self.topo.clients}
        local: list[float] = []
        remote: list[float] = []
        by_f: dict[str, list[float]] = {}
        open_at: dict[Any, float] = {}
        for e in history:
            if e["type"] == "invoke":
                open_at[e["process"]] = e["time"]
            elif e["type"] == "ok" and e["process"] != "final":
                client = str(e["process"]).rsplit("-", 1)[0]
                took = (e["time"] - open_at[e["process"]]) * 1000
                (local if e.get("owner") == region_of.get(client) else remote).append(took)
                by_f.setdefault("read" if e["f"] == "read" else "write", []).append(took)
        failover = [r["phases_s"]["first_served"] for r in runs]
        phases = {p: quantile([r["phases_s"][p] for r in runs if r["phases_s"][p] is not None], 0.5)
                  for p in ("detect", "promote", "route", "first_served", "all_served")}
        kinds = Counter(e["type"] for e in history if e["process"] != "final")
        return {
            "ops": kinds["ok"], "outcomes": dict(kinds), "acked_lost": lost, "acked_lost_by": lost_by,
            "final_reads": len(finals), "linearizable": all(v.linearizable for v in verdicts.values()),
            "verdicts": {k: v.explain() for k, v in verdicts.items()},
            "failovers": len(runs),
            "failover_s": {"p50": quantile(failover, 0.5), "max": max(failover, default=None)},
            "phases_s": phases,
            "call_ms": {"local_p50": quantile(local, 0.5), "remote_p50": quantile(remote, 0.5),
                        "local_n": len(local), "remote_n": len(remote),
                        "read_p50": quantile(by_f.get("read", []), 0.5),
                        "write_p50": quantile(by_f.get("write", []), 0.5)},
            "spec": asdict(self.spec), "run_id": self.run_id, "runs": runs,
        }


def report(result: dict[str, Any]) -> str:
    """A few lines for a person; the JSON has everything."""
    lines = [f"{result['failovers']} failover(s), {result['ops']} ok operations {json.dumps(result['outcomes'])}; "
             f"acknowledged increments lost: {result['acked_lost']}; linearizable: {result['linearizable']}"]
    for r in result["runs"]:
        ph = r["phases_s"]
        lines.append(f"  {r['scenario']:<11} {r['region']:<5} {r['moved']} object(s) → {','.join(r['to'])}: "
                     + ", ".join(f"{k} {v:.2f} s" if v is not None else f"{k} -" for k, v in ph.items()))
    for name, text in result["verdicts"].items():
        lines.append(f"  {name}: {text}")
    return "\n".join(lines)
