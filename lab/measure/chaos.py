"""``anylab chaos``: a bounded, seeded chaos soak on a running lab (issue 25).

1. The schedule is drawn first (:mod:`lab.faults.chaos`): the same seed, the same soak.
2. Workloads for the whole soak, from every client: the UDP probes at their measuring rate, HTTP users
   (keep-alive and new connections, :mod:`lab.load.http_load`), Jepsen-style DO clients
   (:mod:`lab.load.do_nemesis`), and a KV writer at a PoP server of every region (acknowledged keys kept).
3. The schedule is executed on the one clock: each fault injected at its time and repaired after its
   repair time (a fault that cannot be injected is recorded and skipped; every fault is undone at the
   end whatever happened).
4. After the last repair: every client back on its predicted PoP, then the figures
   (:mod:`lab.record.availability`): request-based availability per client and overall (probes and HTTP
   apart), with 99 % intervals; every lost request charged to a fault or counted unexplained; each
   fault's time to recover, MTTR per class; the realised MTBF; the error budget at 99.99 %.
5. Invariants: no acknowledged KV write lost (read at every master), the DO history linearizable with
   nothing acknowledged lost, no lab process restarted outside the schedule (a PID changed on a node no
   fault touched), every client on its predicted PoP, the lab's memory flat (PSS before and after).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.errors import AnylabError, UsageError
from core.files import read_jsonl
from core.wait import wait_for
from kv.client import KvClient
from kv.store import KvError
from lab.faults.chaos import Planned, catalogue, draw, summary, topology_rules
from lab.faults.scenarios import active_faults
from lab.load.do_nemesis import Nemesis, NemesisSpec
from lab.measure.runner import HttpLoads, HttpSpec, deploy_http_worker
from lab.record.availability import Request, Window, account, error_budget, from_probes
from lab.record.probes import read_probes
from lab.run.driver import Driver
from lab.run.footprint import daemon_groups, pss_now
from lab.run.observe import set_probe_rate
from model.graph import predict_catchment
from model.topology import Topology

#: The longest soak the lab runs (it stops by itself); the shortest that makes sense.
MAX_DURATION_S, MIN_DURATION_S = 4 * 3600.0, 10.0
NS = "chaos"
TARGET_AVAILABILITY = 0.9999
#: The classes that can lose a probe or a request of the trivial HTTP worker: the path to a PoP and the PoP.
DATA_PLANE = frozenset({"service", "speaker", "server", "pop", "link", "link-degrade", "region"})
HTTP_PATH = DATA_PLANE | {"dns"}
#: A loss this long before (a check fails after its timeout) to this long after a flap is the flap's.
FLAP_BEFORE_S, FLAP_AFTER_S = 0.5, 2.0
#: Seconds of workload before the schedule's clock starts: the "before" of the memory and process checks.
WARMUP_S = 5.0
#: The soak's own tools: not the lab's processes (memory, restarts).
TOOLS = frozenset({"http-load", "do-load"})


@dataclass(frozen=True)
class ChaosSpec:
    """A soak: its length and seed, the lab's scale (a design day lasts ``day_s``), the overlap bounds,
    whether the design's fatal faults may be drawn; a request is good when answered within
    ``timeout_s``; ``grace_s`` after a repair a loss is still the fault's (routing settles)."""

    duration_s: float
    seed: int
    day_s: float = 2.0
    max_overlap: int = 2
    max_regions: int = 1
    fatal: bool = False
    timeout_s: float = 1.0
    grace_s: float = 3.0
    http: HttpSpec | None = field(default_factory=lambda: HttpSpec(rate=10.0, connections=1, timeout=1.0))
    kv_rate: float = 2.0
    do: bool = True

    def check(self) -> None:
        """Raises UsageError for a soak outside the lab's bounds."""
        if not MIN_DURATION_S <= self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration_s}: a soak lasts {MIN_DURATION_S:.0f}..{MAX_DURATION_S:.0f} s")
        if not (0.01 <= self.day_s <= 86400 and 1 <= self.max_overlap <= 10 and 0 <= self.max_regions <= 3):
            raise UsageError("--day-s 0.01..86400, --max-overlap 1..10, --max-regions 0..3")


def lab_pids(run_dir: Path) -> dict[tuple[str, str], int]:
    """(node, daemon) → the PID of each live recorded process of the lab, the soak's tools aside."""
    return {k: pids[0] for k, pids in daemon_groups(run_dir).items() if k[1] not in TOOLS and pids}


def lab_pss(run_dir: Path) -> float:
    """The lab's memory now (PSS, MiB), the soak's tools aside."""
    return sum(v for (_n, d), v in pss_now(run_dir).items() if d not in TOOLS)


def schedule(topo: Topology, spec: ChaosSpec) -> list[Planned]:
    """The soak's schedule on ``topo`` (:func:`lab.faults.chaos.draw` with the topology's rules)."""
    spec.check()
    footprint, regions_of = topology_rules(topo)
    return draw(catalogue(topo, spec.fatal), spec.duration_s, spec.seed, spec.day_s, spec.max_overlap,
                spec.max_regions, footprint, regions_of)


class KvWriters:
    """A writer at the first PoP server of every region, ``rate`` puts a second each, until stopped; the
    acknowledged keys kept."""

    def __init__(self, driver: Driver, rate: float) -> None:
        self.driver, self.rate = driver, rate
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.failed = 0
        firsts: dict[str, str] = {}
        for s in driver.topo.servers:
            if not s.standby:
                firsts.setdefault(s.region, s.name)
        self.threads = [threading.Thread(target=self._write, args=(server,), daemon=True)
                        for server in firsts.values()]

    def _write(self, server: str) -> None:
        client = KvClient(self.driver.node_dir(server) / "kv.sock", timeout=2.0)
        n = 0
        while not self.stop.wait(1.0 / self.rate):
            key = f"{server}-{n}"
            n += 1
            try:
                if client.put(NS, key, b"x").get("committed"):
                    self.acked.append(key)
            except (KvError, OSError):
                self.failed += 1

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5.0)


def window_name(p: Planned) -> str:
    """A fault's name in the soak's figures: unique (a target has one fault at a time)."""
    return f"{p.scenario} {p.target} @{p.t:.1f}"


def _execute(driver: Driver, planned: list[Planned], t0: float,
             stop: threading.Event) -> tuple[list[Window], list[str]]:
    """Inject and repair the injected faults of ``planned`` on time (relative to ``t0``); the windows as
    carried out and the errors met."""
    events = sorted([(p.t, 0, p) for p in planned if p.skipped is None] +
                    [(p.end, 1, p) for p in planned if p.skipped is None], key=lambda e: (e[0], -e[1]))
    started: dict[str, tuple[Planned, float]] = {}
    windows: list[Window] = []
    errors: list[str] = []
    for at, kind, p in events:
        if stop.wait(max(0.0, t0 + at - monotonic())):
            break
        name = window_name(p)
        try:
            if kind == 0:
                started[name] = (p, driver.fail(p.scenario, p.target))
            elif name in started:
                _p, t_fault = started.pop(name)
                windows.append(Window(name, p.cls, t_fault, driver.restore(p.target)))
        except AnylabError as exc:
            errors.append(f"{name}: {exc}")
    for name, (p, t_fault) in started.items():  # stopped early: repaired by the caller's restore_all
        windows.append(Window(name, p.cls, t_fault, monotonic()))
    return sorted(windows, key=lambda w: w.t_fault), errors


def run_soak(driver: Driver, spec: ChaosSpec, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run a soak on a converged lab and return its report (JSON-able). Raises UsageError for a bad spec,
    AnylabError if the lab is not converged before or does not come back after."""
    stop = stop or threading.Event()
    planned = schedule(driver.topo, spec)
    topo, run_dir = driver.topo, driver.run_dir
    predicted = predict_catchment(topo)
    wait_for(lambda: driver.catchment(after=monotonic() - 0.5) == predicted, timeout=60.0,
             what="every client on its predicted PoP before the soak", interval=0.2)
    if spec.http is not None:
        deploy_http_worker(driver)
    kv = KvWriters(driver, spec.kv_rate)
    http = HttpLoads(driver, spec.http, set()) if spec.http is not None else None
    nemesis = Nemesis(driver, NemesisSpec(failovers=1, procs=1, rate=5.0, registers=3, counters=3,
                                          seed=str(spec.seed))) if spec.do else None
    if nemesis is not None:
        nemesis.deploy()
    set_probe_rate(run_dir, True)
    windows: list[Window] = []
    errors: list[str] = []
    try:
        if http is not None:
            http.start(WARMUP_S + spec.duration_s + 70.0)
        if nemesis is not None:
            nemesis.start_load(WARMUP_S + spec.duration_s + 70.0)
        kv.start()
        # The schedule's clock starts once every workload is served from every client (and WARMUP_S at
        # least): what the platform does on a workload's first requests is not a fault's doing.
        t_start = monotonic()
        if http is not None:
            http.wait_served(t_start, 3, timeout=60.0)
        if nemesis is not None:
            nemesis.wait_served(t_start)
        stop.wait(max(0.0, t_start + WARMUP_S - monotonic()))
        pids_before = lab_pids(run_dir)
        pss_before = lab_pss(run_dir)
        t0 = monotonic()
        windows, errors = _execute(driver, planned, t0, stop)
        stop.wait(max(0.0, t0 + spec.duration_s - monotonic()))
        pss_end = lab_pss(run_dir)  # with the workloads on, as before
    finally:
        t_end = monotonic()
        for target in active_faults(run_dir):  # whatever is still failed: stopped early, or a repair failed
            try:
                driver.restore(target)
            except AnylabError as exc:
                errors.append(f"restore {target} at the end: {exc}")
        kv.finish()
        if http is not None:
            http.stop()
        if nemesis is not None:
            nemesis.stop_load()
        set_probe_rate(run_dir, False)
    t_back = monotonic()
    back = True
    try:
        wait_for(lambda: driver.catchment(after=t_back) == predicted, timeout=60.0,
                 what="every client back on its predicted PoP", interval=0.2)
    except AnylabError:
        back = False
    return _report(driver, spec, planned, windows, errors, t0, t_end, kv, http, nemesis, back,
                   pids_before, (pss_before, pss_end))


def spontaneous_flaps(driver: Driver, windows: list[Window], touched: dict[str, frozenset[str]], t0: float,
                      t_end: float) -> list[tuple[str, float]]:
    """(server, time) of every failed health check during the soak on a server that no fault active then
    touched (``touched``: window name → the nodes its fault touches)."""
    out = []
    for s in driver.topo.servers:
        for e in read_jsonl(driver.node_dir(s.name) / "health-events.jsonl"):
            t = float(e.get("t", 0.0))
            if e.get("event") != "check-failed" or not t0 <= t <= t_end:
                continue
            if any(w.t_fault <= t <= w.t_repair and s.name in touched[w.name] for w in windows):
                continue
            out.append((s.name, t))
    return sorted(out, key=lambda x: x[1])


def _worst(name: str, recoveries: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One fault's recovery over the kinds of request: every affected client, each at its later recovery
    (None if it never recovered in one of them); the fault's time to recover the worst."""
    times: dict[str, list[float | None]] = {}
    for rec in recoveries:
        for client, t in rec[name]["affected"].items():
            times.setdefault(client, []).append(t)
    affected = {c: None if None in ts else max(t for t in ts if t is not None) for c, ts in times.items()}
    done = [t for t in affected.values() if t is not None]
    return {"cls": recoveries[0][name]["cls"], "affected": affected,
            "lost_at_repair": sum(rec[name]["lost_at_repair"] for rec in recoveries),
            "recover_s": None if len(done) < len(affected) else max(done, default=0.0)}


def _report(driver: Driver, spec: ChaosSpec, planned: list[Planned], windows: list[Window], errors: list[str],
            t0: float, t_end: float, kv: KvWriters, http: HttpLoads | None, nemesis: Nemesis | None,
            back: bool, pids_before: dict[tuple[str, str], int], pss: tuple[float, float]) -> dict[str, Any]:
    topo, run_dir = driver.topo, driver.run_dir
    clients = [c.name for c in topo.clients]
    probes = [r for c in clients for r in from_probes(c, read_probes(run_dir / c / "probes.jsonl"), spec.timeout_s)]
    figures: dict[str, Any] = {"probes": account(probes, windows, t0, t_end, spec.timeout_s, spec.grace_s,
                                                 DATA_PLANE)}
    if http is not None:
        reqs = [Request(c, float(r["t0"]), not r["err"] and r["st"] < 500 and r["t1"] - r["t0"] <= spec.timeout_s)
                for c in clients for r in read_jsonl(http.path(c))]
        # By name: the users' resolvers and the zone's providers are on their path too.
        figures["http"] = account(reqs, windows, t0, t_end, spec.timeout_s, spec.grace_s, HTTP_PATH)
    # What no fault explains may be the platform's own doing: a health agent that failed its check on a
    # server no fault touched then (a flap) moves its clients, resetting their connections.
    footprint = topology_rules(topo)[0]
    by_name = {window_name(p): p for p in planned}
    touched = {w.name: footprint(by_name[w.name].scenario, by_name[w.name].target) for w in windows}
    flaps = spontaneous_flaps(driver, windows, touched, t0, t_end)
    for f in figures.values():
        near = [u for u in f["unexplained_at"] if any(t - FLAP_BEFORE_S <= u[1] <= t + FLAP_AFTER_S for _s, t in flaps)]
        f["after_a_flap"] = len(near)
        f["unexplained_at"] = [u for u in f["unexplained_at"] if u not in near]
        f["unexplained"] = len(f["unexplained_at"])
    valid = sum(f["valid"] for f in figures.values())
    good = sum(f["good"] for f in figures.values())
    recovered = {w.name: _worst(w.name, [f["recovery"] for f in figures.values()]) for w in windows}
    classes = {c.name: c for c in catalogue(topo, spec.fatal)}
    per_class: dict[str, Any] = {}
    for name, row in summary(planned).items():
        times = [r["recover_s"] for w, r in recovered.items() if r["cls"] == name]
        done = [t for t in times if t is not None]
        injected = sum(1 for w in windows if w.cls == name)
        per_class[name] = {**row, "mttr_s": sum(done) / len(done) if done else None,
                           "unrecovered": len(times) - len(done),
                           "max_recover_s": max(done, default=None),
                           "mtbf_s": (spec.duration_s * len(classes[name].targets) / injected) if injected else None}
    # Invariants.
    masters = {km.name: KvClient(driver.node_dir(km.name) / "kv.sock", timeout=10) for km in topo.kv_masters}
    kv_lost = {m: [k for k in kv.acked if c.get(NS, k) is None] for m, c in masters.items()}
    any_fault = frozenset().union(*touched.values())
    pids_after = lab_pids(run_dir)
    restarted = sorted(f"{n}/{d}" for (n, d), pid in pids_before.items()
                       if n not in any_fault and pids_after.get((n, d)) != pid)
    do = None
    if nemesis is not None:
        nemesis.final_reads()
        do = nemesis.summary([])
    invariants = {"kv_acked": len(kv.acked), "kv_lost": {m: v for m, v in kv_lost.items() if v},
                  "do_linearizable": None if do is None else do.get("linearizable"),
                  "do_acked_lost": None if do is None else do.get("acked_lost"),
                  "restarted_outside_schedule": restarted, "catchment_back": back,
                  "pss_mb": {"before": round(pss[0], 1), "after": round(pss[1], 1)}}
    return {"spec": {k: v for k, v in asdict(spec).items() if k != "http"}, "t0": t0, "duration_s": t_end - t0,
            "availability": {"valid": valid, "good": good, "value": good / valid if valid else None,
                             "budget": error_budget(valid, good, TARGET_AVAILABILITY), **figures},
            "classes": per_class, "faults": [asdict(w) | recovered[w.name] for w in windows],
            "skipped": sum(1 for p in planned if p.skipped is not None), "errors": errors,
            "invariants": invariants, "do": do, "flaps": [[srv, round(t - t0, 3)] for srv, t in flaps]}


def nines(availability: float | None) -> float | None:
    """The number of nines of an availability (0.9999 → 4.0; 1.0 → inf; None → None)."""
    if availability is None:
        return None
    return math.inf if availability >= 1.0 else -math.log10(1.0 - availability)


def schedule_table(planned: list[Planned]) -> str:
    """The dry run's text: one line per arrival (injected or skipped and why), then per class."""
    lines = [f"{'t (s)':>8}  {'class':<14}{'scenario':<17}{'target':<14}{'repair (s)':>10}  skipped"]
    for p in planned:
        lines.append(f"{p.t:8.1f}  {p.cls:<14}{p.scenario:<17}{p.target:<14}{p.repair_s:10.1f}  {p.skipped or ''}")
    lines.append("")
    for cls, row in sorted(summary(planned).items()):
        lines.append(f"{cls}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return "\n".join(lines) + "\n"


def report(result: dict[str, Any]) -> str:
    """The soak's Markdown summary: nines achieved, availability per client, MTTR per class, invariants."""
    a, inv, spec = result["availability"], result["invariants"], result["spec"]
    n = nines(a["value"])
    shown = "–" if n is None else "∞" if n == math.inf else f"{n:.2f}"
    burned = a["budget"]["burned"]
    out = [f"# Chaos soak: seed {spec['seed']}, {result['duration_s']:.0f} s", "",
           f"- **Availability**: {a['good']} good of {a['valid']} valid requests = "
           f"{100 * (a['value'] or 0):.4f} % ({shown} nines); error budget at 99.99 %: "
           f"{'–' if burned is None else f'{burned:.2f}'} burned",
           f"- **Unexplained losses**: probes {a['probes']['unexplained']}"
           + (f", HTTP {a['http']['unexplained']}" if "http" in a else ""),
           f"- **Health flaps** (a failed check on a server no fault touched): {len(result['flaps'])}; the losses "
           f"right after them: probes {a['probes']['after_a_flap']}"
           + (f", HTTP {a['http']['after_a_flap']}" if "http" in a else ""),
           f"- **Faults**: {len(result['faults'])} injected, {result['skipped']} arrivals skipped, "
           f"{len(result['errors'])} errors", "",
           "| client | probes | HTTP |", "|---|---|---|"]
    for c, row in a["probes"]["per_client"].items():
        http = a.get("http", {}).get("per_client", {}).get(c)
        out.append(f"| {c} | {100 * (row['availability'] or 0):.3f} % | "
                   + (f"{100 * (http['availability'] or 0):.3f} % |" if http else "– |"))
    out += ["", "| class | injected | MTTR (s) | max (s) | unrecovered | realised MTBF (s) |",
            "|---|---|---|---|---|---|"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    for cls, row in sorted(result["classes"].items()):
        out.append(f"| {cls} | {row['injected']} | {fmt(row['mttr_s'])} | {fmt(row['max_recover_s'])} | "
                   f"{row['unrecovered']} | {fmt(row['mtbf_s'])} |")
    out += ["", "**Invariants**", "",
            f"- KV: {inv['kv_acked']} acknowledged writes, lost at: {inv['kv_lost'] or 'none'}",
            f"- Durable Objects: linearizable {inv['do_linearizable']}, acknowledged lost {inv['do_acked_lost']}",
            f"- processes restarted outside the schedule: {', '.join(inv['restarted_outside_schedule']) or 'none'}",
            f"- every client back on its predicted PoP: {inv['catchment_back']}",
            f"- lab memory (PSS): {inv['pss_mb']['before']} → {inv['pss_mb']['after']} MB"]
    return "\n".join(out) + "\n"
