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

import json
import math
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from bgp.routers import kind_of
from core.clock import monotonic, realtime_offset
from core.errors import AnylabError, UsageError
from core.files import read_jsonl
from core.timers import detection_bound
from core.wait import wait_for
from kv.client import KvClient
from kv.store import KvError
from lab.faults.chaos import FaultClass, Planned, catalogue, draw, summary, topology_rules
from lab.faults.scenarios import active_faults
from lab.load.do_nemesis import Nemesis, NemesisSpec
from lab.measure.runner import HttpLoads, HttpSpec, deploy_http_worker
from lab.record.availability import (
    Scope,
    Series,
    Window,
    account,
    error_budget,
    reach,
    timeline,
    worst_window,
)
from lab.record.probes import parse_probes
from lab.record.tail import JsonlTail
from lab.run.autoscaler import EVENTS as AUTOSCALE_EVENTS
from lab.run.driver import Driver
from lab.run.footprint import CLK_TCK, cpu_ticks, daemon_groups, pss_kib, pss_now
from lab.run.launchers import api_replica_name, weakened
from lab.run.observe import set_probe_rate
from model.graph import predict_catchment
from model.load import load_topology
from model.profiles import LOADED_BOX, HealthSpec
from model.topology import Topology

#: The longest soak the lab runs (it stops by itself); the shortest that makes sense.
MAX_DURATION_S, MIN_DURATION_S = 4 * 3600.0, 10.0
NS = "chaos"
TARGET_AVAILABILITY = 0.9999
#: The classes that can lose a probe or a request of the trivial HTTP worker: the path to a PoP and the PoP.
DATA_PLANE = frozenset({"service", "speaker", "server", "pop", "link", "link-degrade", "region"})
HTTP_PATH = DATA_PLANE | {"dns"}
#: Each client's probes a second in a soak. At the lab's 500 the soak's workloads kept global.yaml at 1.7–1.9
#: of this box's 2 cores, and with no fault at all 80 probes in 2 minutes were lost to the box's load (and 7
#: health flaps); at 200: 1.6–1.7 cores, none lost, no flap (same seed, same box). An hour still sends
#: 4.3 M probes (the issue asks ≥ 10⁶ requests), each loss known to 5 ms.
SOAK_PROBE_HZ = 200.0
#: A loss up to one check's detection before a failed check (the stall it found began at most that much
#: earlier: its interval, or timeout if longer, and its timeout), plus this margin, to FLAP_AFTER_S after it
#: is the flap's.
FLAP_MARGIN_S, FLAP_AFTER_S = 0.3, 2.0
#: A session of a node a fault touched coming back up this long after the repair is still the repair
#: settling (a PoP's servers restarted, their speakers reconnecting): the grace runs from then.
SETTLE_MAX_S = 30.0
#: Seconds of workload before the schedule's clock starts: the "before" of the memory and process checks.
WARMUP_S = 5.0
#: The workloads run this long past the soak (the end's restores and checks), and stop by themselves after.
WIND_DOWN_S = 70.0
#: The soak's own tools: not the lab's processes (memory, restarts).
TOOLS = frozenset({"http-load", "do-load"})
#: Lab daemons a fault starts on first use and the lab keeps until ``down`` (a router's link relay, started
#: by the first link-degrade on it): new after a soak, and not a leak (the hour-long bench found 4).
ON_DEMAND = frozenset({"link-relay"})
#: How often the clients' records are followed (well within a prober's rotation, ~5 min at 500/s), and the
#: lab's memory and CPU sampled.
POLL_S, SAMPLE_S = 2.0, 30.0
#: Bins of the timeline: about this many over the soak, none shorter than a second.
TIMELINE_BINS = 720
#: The test-only weakening (``ANYLAB_WEAKEN=chaos``): the accounting is not told of the PoP faults it injected,
#: so what they lost must come out unexplained (the "none unexplained" check shown able to fail).
WEAK_HIDE_POPS = "hide-pops"


def soak_topology(path: Path) -> Topology:
    """The topology in ``path`` as a soak runs it: ``fast`` with :data:`LOADED_BOX_HEALTH` (its own 30 ms
    health checks flap on a loaded box and the soak would measure that), probes at :data:`SOAK_PROBE_HZ`.
    Raises what loading raises."""
    return load_topology(path, profile=LOADED_BOX, settings={"probe_rate_hz": SOAK_PROBE_HZ})


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
    #: DO operations a second per client (the linearizability check grows with the square of a key's history).
    do_rate: float = 5.0

    def check(self) -> None:
        """Raises UsageError for a soak outside the lab's bounds."""
        if not MIN_DURATION_S <= self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration_s}: a soak lasts {MIN_DURATION_S:.0f}..{MAX_DURATION_S:.0f} s")
        if not (0.01 <= self.day_s <= 86400 and 1 <= self.max_overlap <= 10 and 0 <= self.max_regions <= 3):
            raise UsageError("--day-s 0.01..86400, --max-overlap 1..10, --max-regions 0..3")
        if not (0.1 <= self.kv_rate <= 50 and 0.1 <= self.do_rate <= 50):
            raise UsageError("KV writes and DO operations: 0.1..50 a second")


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
    acknowledged keys kept. After each put it reads back one of its acknowledged keys at random (a
    reader at the edge): found, not yet there (replication is asynchronous) or failed."""

    def __init__(self, driver: Driver, rate: float, seed: int = 0) -> None:
        self.driver, self.rate = driver, rate
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.failed = 0
        self.reads = {"found": 0, "missing": 0, "failed": 0}
        self.seed = seed
        firsts: dict[str, str] = {}
        for s in driver.topo.servers:
            if not s.standby:
                firsts.setdefault(s.region, s.name)
        self.threads = [threading.Thread(target=self._write, args=(server,), daemon=True)
                        for server in firsts.values()]

    def _write(self, server: str) -> None:
        client = KvClient(self.driver.node_dir(server) / "kv.sock", timeout=2.0)
        rng = random.Random(f"{self.seed}-{server}")
        mine: list[str] = []
        n = 0
        while not self.stop.wait(1.0 / self.rate):
            key = f"{server}-{n}"
            n += 1
            try:
                if client.put(NS, key, b"x").get("committed"):
                    self.acked.append(key)
                    mine.append(key)
            except (KvError, OSError):
                self.failed += 1
            if mine:
                try:
                    self.reads["found" if client.get(NS, rng.choice(mine)) is not None else "missing"] += 1
                except (KvError, OSError):
                    self.reads["failed"] += 1

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5.0)


class Collector:
    """Follows every client's probe and HTTP records while the soak runs (every ``POLL_S``: a prober's
    file rotates every few minutes, an hour's records are read as they come) into :class:`Series`, and
    samples the lab's memory (PSS) and CPU every ``SAMPLE_S``."""

    def __init__(self, driver: Driver, http: HttpLoads | None, timeout_s: float) -> None:
        self.driver, self.timeout_s = driver, timeout_s
        clients = [c.name for c in driver.topo.clients]
        self.series: dict[str, dict[str, Series]] = {"probes": {c: Series() for c in clients}}
        self.tails = [("probes", c, JsonlTail(driver.run_dir / c / "probes.jsonl")) for c in clients]
        if http is not None:
            self.series["http"] = {c: Series() for c in clients}
            self.tails += [("http", c, JsonlTail(http.path(c))) for c in clients]
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._ticks: tuple[float, int] | None = None

    def poll(self) -> None:
        for kind, client, tail in self.tails:
            lines = tail.read()
            into = self.series[kind][client]
            if kind == "probes":
                for p in parse_probes(lines):
                    took = None if p.recv is None else p.recv - p.sent
                    into.add(p.sent, took is not None and took <= self.timeout_s, took or 0.0, p.pop)
                continue
            for line in lines:
                try:
                    r = json.loads(line)
                    took = float(r["t1"]) - float(r["t0"])
                    pop = str(r.get("srv") or "").split("/")[0] or None  # X-Anylab-Server: "pop/server"
                    into.add(float(r["t0"]), not r["err"] and int(r["st"]) < 500 and took <= self.timeout_s, took,
                             pop)
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue

    def sample(self) -> None:
        """The lab's PSS (MiB) and CPU (cores, since the last sample) now, the soak's tools aside."""
        now = monotonic()
        # One walk of /proc for both figures (lab_pss would walk it again).
        groups = [pids for (_n, d), pids in daemon_groups(self.driver.run_dir).items() if d not in TOOLS]
        ticks = sum(cpu_ticks(p) for pids in groups for p in pids)
        row = {"t": now, "pss_mb": round(sum(pss_kib(p) for pids in groups for p in pids) / 1024.0, 1)}
        if self._ticks is not None and ticks >= self._ticks[1]:  # a restarted process's ticks start again
            row["cpu_cores"] = round((ticks - self._ticks[1]) / CLK_TCK / (now - self._ticks[0]), 3)
        self._ticks = (now, ticks)
        self.samples.append(row)

    def _run(self) -> None:
        next_sample = monotonic()
        while not self.stop.wait(POLL_S):
            self.poll()
            if monotonic() >= next_sample:
                self.sample()
                next_sample += SAMPLE_S

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> dict[str, dict[str, Series]]:
        """Stop, read what is left, and return the series by kind and client (sorted)."""
        self.stop.set()
        self.thread.join(timeout=60.0)
        self.poll()
        for by_client in self.series.values():
            for s in by_client.values():
                s.sort()
        return self.series

    @property
    def missed_rotations(self) -> int:
        return sum(t.missed_rotations for _k, _c, t in self.tails)


def trend(samples: list[dict[str, float]], key: str) -> dict[str, Any] | None:
    """A sampled figure's first and last thirds (means) and their difference: flat, or growing. None with
    fewer than three samples."""
    values = [r[key] for r in samples if key in r]
    if len(values) < 3:
        return None
    third = len(values) // 3
    first, last = sum(values[:third]) / third, sum(values[-third:]) / third
    return {"first_third": round(first, 3), "last_third": round(last, 3), "growth": round(last - first, 3),
            "growth_pct": round(100 * (last - first) / first, 2) if first else None, "samples": len(values)}


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
                # The window closes when the undo has finished, not when it began: on a loaded box an undo
                # (a daemon restarted, a link's rules reloaded) takes seconds, and until it is done the
                # fault is still there (a soak found a link degraded 4 s past its "repair").
                driver.restore(p.target)
                windows.append(Window(name, p.cls, t_fault, monotonic()))
        except AnylabError as exc:
            errors.append(f"{name}: {exc}")
    for name, (p, t_fault) in started.items():  # stopped early: repaired by the caller's restore_all
        windows.append(Window(name, p.cls, t_fault, monotonic()))
    return sorted(windows, key=lambda w: w.t_fault), errors


def serving_nodes(topo: Topology) -> frozenset[str]:
    """What carries the clients' traffic with nothing failed: the PoPs of the predicted catchment, their
    servers, and the clients' routers."""
    pops = {p for v in predict_catchment(topo).values() for p in v.split("|") if p}
    return frozenset({*pops, *(s.name for s in topo.servers if s.pop in pops), *(c.router for c in topo.clients)})


def reference_schedule(topo: Topology, spec: ChaosSpec, rounds: int = 1, gap_s: float = 10.0) -> list[Planned]:
    """The single-fault reference of a soak: every class of the catalogue alone, ``rounds`` times, each time
    on a target drawn with the seed among those that touch what serves the clients (:func:`serving_nodes`;
    any target when none does), repaired after its class's median repair time, ``gap_s`` between one
    repair and the next injection. Its length: the last repair plus ``gap_s``."""
    rng = random.Random(f"reference-{spec.seed}")
    footprint = topology_rules(topo)[0]
    serving = serving_nodes(topo)
    out: list[Planned] = []
    t = gap_s
    classes: list[FaultClass] = catalogue(topo, spec.fatal)
    for _ in range(rounds):
        for c in classes:
            hits = [x for x in c.targets if footprint(c.scenario, x) & serving] or list(c.targets)
            out.append(Planned(round(t, 3), c.name, c.scenario, rng.choice(hits), c.repair_median_s))
            t += c.repair_median_s + gap_s
    return out


def run_soak(driver: Driver, spec: ChaosSpec, stop: threading.Event | None = None,
             planned: list[Planned] | None = None) -> dict[str, Any]:
    """Run a soak on a converged lab and return its report (JSON-able): the spec's drawn schedule, or
    ``planned`` (the single-fault reference; its end within the spec's duration). Raises UsageError for a
    bad spec, AnylabError if the lab is not converged before or does not come back after."""
    stop = stop or threading.Event()
    spec.check()
    if planned is None:
        planned = schedule(driver.topo, spec)
    elif any(p.end > spec.duration_s for p in planned):
        raise UsageError(f"a planned fault ends after the soak's {spec.duration_s:.0f} s")
    topo, run_dir = driver.topo, driver.run_dir
    predicted = predict_catchment(topo)
    wait_for(lambda: driver.catchment(after=monotonic() - 0.5) == predicted, timeout=60.0,
             what="every client on its predicted PoP before the soak", interval=0.2)
    if spec.http is not None:
        deploy_http_worker(driver)
    kv = KvWriters(driver, spec.kv_rate, spec.seed)
    http = HttpLoads(driver, spec.http, set()) if spec.http is not None else None
    collector = Collector(driver, http, spec.timeout_s)
    nemesis = Nemesis(driver, NemesisSpec(failovers=1, procs=1, rate=spec.do_rate, registers=3, counters=3,
                                          seed=str(spec.seed))) if spec.do else None
    if nemesis is not None:
        nemesis.deploy()
    set_probe_rate(run_dir, True)
    windows: list[Window] = []
    errors: list[str] = []
    try:
        if http is not None:
            http.start(WARMUP_S + spec.duration_s + WIND_DOWN_S)
        if nemesis is not None:
            nemesis.start_load(WARMUP_S + spec.duration_s + WIND_DOWN_S)
        collector.start()
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
        series = collector.finish()
    t_back = monotonic()
    back = True
    try:
        wait_for(lambda: driver.catchment(after=t_back) == predicted, timeout=60.0,
                 what="every client back on its predicted PoP", interval=0.2)
    except AnylabError:
        back = False
    if weakened("chaos", WEAK_HIDE_POPS):
        windows = [w for w in windows if w.cls != "pop"]
    return _report(driver, spec, planned, windows, errors, t0, t_end, kv, series, collector, nemesis, back,
                   pids_before, (pss_before, pss_end))


def autoscaled(topo: Topology, events: list[dict[str, Any]], until: float) -> Callable[[str, str], bool]:
    """Whether a lab process (node, daemon) new after a soak is the lab's autoscaler's doing, by its
    events up to ``until`` (``autoscale-events.jsonl``): a control plane API replica it started for its
    region (an API p99 over the design's bound: the soak's first deploys, a control plane come back), or a
    daemon of a PoP it scaled out — not a leak. Any earlier event counts: one decided just before the soak
    began starts its process after the "before" was taken. An event that does not parse (a bad time,
    count, region or PoP) explains nothing: what it started is then reported as new, the safe side."""
    replicas: set[tuple[str, str]] = set()
    pop_nodes: set[str] = set()
    for e in events:
        try:
            if float(e.get("t", 0.0)) > until:
                continue
            if "control_plane" in e:
                # The replicas it asked for, started or not yet ready (an error after the start is still its).
                node = topo.control_plane_of(str(e["control_plane"])).name
                replicas |= {(node, api_replica_name(i)) for i in range(int(e.get("from", 0)), int(e.get("to", 0)))}
            elif "pop" in e:
                pop = topo.pop(str(e["pop"]))
                pop_nodes |= {*pop.servers, *pop.standby}
        except (TypeError, ValueError, KeyError, AnylabError):
            continue
    return lambda node, daemon: (node, daemon) in replicas or node in pop_nodes


def scope_of(topo: Topology, touched: frozenset[str]) -> Scope:
    """What a fault touching the nodes ``touched`` takes (:class:`lab.record.availability.Scope`): the PoPs
    of the servers among them (and PoPs named), the regions of the routers among them (and regions named),
    the regions of the DNS resolvers and anycast provider nodes among them (their own clients); a unicast
    DNS provider, the hidden primary or the root serves everyone."""
    pop_of = {s.name: s.pop for s in topo.servers} | {n: p.name for p in topo.pops for n in p.standby}
    pops = {p.name for p in topo.pops}
    router_region = {r.name: r.region for r in topo.routers}
    regions = {r.name for r in topo.spec.regions}
    dns = {d.name: d for d in topo.dns.nodes} if topo.dns is not None else {}
    regional_dns = {n: d.region for n, d in dns.items() if d.role == "resolver" or d.speaker is not None}
    if any(n in dns and n not in regional_dns for n in touched):
        return Scope()  # a unicast provider, the hidden primary or the root: every resolver asks it
    return Scope(pops=frozenset({pop_of[n] for n in touched if n in pop_of} | (touched & pops)),
                 regions=frozenset({router_region[n] for n in touched if n in router_region} | (touched & regions)),
                 client_regions=frozenset(regional_dns[n] for n in touched if n in regional_dns))


def failed_checks(server: str, events: Iterable[dict[str, Any]], lead: float, windows: list[Window],
                  touched: dict[str, frozenset[str]], t0: float, t_end: float) -> list[tuple[str, float, float]]:
    """(server, time, lead) of each of ``server``'s health events that is a failed check between ``t0`` and
    ``t_end`` while no fault window touching ``server`` was open — a flap the soak's faults do not explain.
    An event without a usable time is skipped."""
    out = []
    for e in events:
        try:
            t = float(e.get("t", 0.0))
        except (TypeError, ValueError):
            continue
        if e.get("event") != "check-failed" or not t0 <= t <= t_end:
            continue
        if any(w.t_fault <= t <= w.t_over and server in touched[w.name] for w in windows):
            continue
        out.append((server, t, lead))
    return out


def flap_lead(health: HealthSpec) -> float:
    """How long before a failed check the stall it found may have begun: one check's detection
    (:func:`core.timers.detection_bound` with a fall of 1) and :data:`FLAP_MARGIN_S`."""
    return detection_bound(health.interval, health.fast_interval, 1, health.timeout) + FLAP_MARGIN_S


def spontaneous_flaps(driver: Driver, windows: list[Window], touched: dict[str, frozenset[str]], t0: float,
                      t_end: float) -> list[tuple[str, float, float]]:
    """(server, time, lead) of every failed health check during the soak on a server that no fault active
    then touched (``touched``: window name → the nodes its fault touches; :func:`failed_checks`), ``lead``
    by the server's own health timers (:func:`flap_lead`)."""
    out = []
    for s in driver.topo.servers:
        events = read_jsonl(driver.node_dir(s.name) / "health-events.jsonl")
        out += failed_checks(s.name, events, flap_lead(s.profile.health), windows, touched, t0, t_end)
    return sorted(out, key=lambda x: x[1])


class SessionEvent(NamedTuple):
    """A BGP session change on the lab's clock: when, the router that logged it, its neighbour (a node
    name; the address if not a neighbour of the topology), up or down, and why."""

    t: float
    router: str
    peer: str
    up: bool
    why: str

    def touches(self, nodes: frozenset[str]) -> bool:
        """Whether either end of the session is one of ``nodes``."""
        return self.router in nodes or self.peer in nodes


def session_changes(driver: Driver, t0: float, t_end: float) -> list[SessionEvent]:
    """Every BGP session change the routers logged between ``t0`` and ``t_end``, oldest first."""
    offset = realtime_offset()
    out = []
    for r in driver.topo.routers:
        node_of = {str(n.address): n.node for n in r.neighbors}
        for c in kind_of(r).session_changes(driver.node_dir(r.name), r):
            t = c.t_wall - offset
            if t0 <= t <= t_end:
                out.append(SessionEvent(t, r.name, node_of.get(c.neighbor, c.neighbor), c.up, c.reason))
    return sorted(out)


def settle(windows: list[Window], touched: dict[str, frozenset[str]], changes: list[SessionEvent]) -> list[Window]:
    """Each window with its routing settled: the last session of a node its fault touched that came back
    up within :data:`SETTLE_MAX_S` of the repair (none: settled at the repair)."""
    out = []
    for w in windows:
        ups = [c.t for c in changes if c.up and w.t_repair <= c.t <= w.t_repair + SETTLE_MAX_S
               and c.touches(touched[w.name])]
        out.append(replace(w, t_settled=max(ups)) if ups else w)
    return out


def sessions_down_unexplained(windows: list[Window], touched: dict[str, frozenset[str]],
                              changes: list[SessionEvent], grace_s: float) -> list[SessionEvent]:
    """Every session that went down while no fault touching either end was active (or settling): the
    routing's own flaps (a BFD packet late on a loaded box)."""
    return [c for c in changes if not c.up and not any(w.t_fault <= c.t <= w.t_over + grace_s
                                                       and c.touches(touched[w.name]) for w in windows)]


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
            t0: float, t_end: float, kv: KvWriters, series: dict[str, dict[str, Series]], collector: Collector,
            nemesis: Nemesis | None, back: bool, pids_before: dict[tuple[str, str], int],
            pss: tuple[float, float]) -> dict[str, Any]:
    topo, run_dir = driver.topo, driver.run_dir
    footprint = topology_rules(topo)[0]
    by_name = {window_name(p): p for p in planned}
    touched = {w.name: footprint(by_name[w.name].scenario, by_name[w.name].target) for w in windows}
    # A repair is over when the routing around it has settled: a PoP's servers restarted on a loaded box
    # took 5 s to have their sessions up again, and HTTP users moving back then lost requests.
    changes = session_changes(driver, t0, t_end)
    windows = settle(windows, touched, changes)
    # HTTP users ask by name: the users' resolvers and the zone's providers are on their path too.
    explains = {"probes": DATA_PLANE, "http": HTTP_PATH}
    # A fault on the data plane reaches the clients it served or routed, not every client: a silent server
    # in iad does not explain a probe lost in Frankfurt (it did, before: its window was open).
    reaches = reach({c.name: [by_client[c.name] for by_client in series.values() if c.name in by_client]
                     for c in topo.clients},
                    {w.name: scope_of(topo, touched[w.name]) for w in windows},
                    {c.name: c.region for c in topo.clients}, {p.name: p.region for p in topo.pops}, spec.grace_s)
    figures: dict[str, Any] = {kind: account(by_client, windows, t0, t_end, spec.timeout_s, spec.grace_s,
                                             explains[kind], reaches) for kind, by_client in series.items()}
    # What no fault explains may be the platform's own doing: a health agent that failed its check on a
    # server no fault touched then (a flap) moves its clients, resetting their connections.
    flaps = spontaneous_flaps(driver, windows, touched, t0, t_end)
    for f in figures.values():
        near = [u for u in f["unexplained_at"] if any(t - lead <= u[1] <= t + FLAP_AFTER_S for _s, t, lead in flaps)]
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
        # Over the faults that affected a client: a fault on what serves nobody recovers "in 0 s".
        hit = [r["recover_s"] for r in recovered.values() if r["cls"] == name and r["affected"]
               and r["recover_s"] is not None]
        injected = sum(1 for w in windows if w.cls == name)
        per_class[name] = {**row, "design_mtbf_days": classes[name].mtbf_days,
                           "mttr_s": sum(done) / len(done) if done else None,
                           "affecting": len(hit), "mttr_affected_s": sum(hit) / len(hit) if hit else None,
                           "unrecovered": len(times) - len(done),
                           "max_recover_s": max(done, default=None),
                           "mtbf_s": (spec.duration_s * len(classes[name].targets) / injected) if injected else None,
                           "loss_s": loss_seconds(name, windows, figures)}
    # Invariants.
    masters = {km.name: KvClient(driver.node_dir(km.name) / "kv.sock", timeout=10) for km in topo.kv_masters}
    kv_lost = {m: [k for k in kv.acked if c.get(NS, k) is None] for m, c in masters.items()}
    any_fault = frozenset().union(*touched.values())
    pids_after = lab_pids(run_dir)
    restarted = sorted(f"{n}/{d}" for (n, d), pid in pids_before.items()
                       if n not in any_fault and pids_after.get((n, d)) != pid)
    # Leaked: a lab process alive after the soak that was not before (every fault was repaired by then); gone:
    # one alive before and not after (a restart that did not happen).
    new = pids_after.keys() - pids_before.keys()
    # Up to now: the autoscaler keeps running while the soak restores and checks (pids_after is now).
    grown = autoscaled(topo, read_jsonl(run_dir / AUTOSCALE_EVENTS), monotonic())
    processes = {"before": len(pids_before), "after": len(pids_after),
                 "new": sorted(f"{n}/{d}" for n, d in new if d not in ON_DEMAND and not grown(n, d)),
                 "on_demand": sorted(f"{n}/{d}" for n, d in new if d in ON_DEMAND),
                 "autoscaled": sorted(f"{n}/{d}" for n, d in new if d not in ON_DEMAND and grown(n, d)),
                 "gone": sorted(f"{n}/{d}" for n, d in pids_before.keys() - pids_after.keys())}
    do = None
    if nemesis is not None:
        nemesis.final_reads()
        do = nemesis.summary([])
    invariants = {"kv_acked": len(kv.acked), "kv_lost": {m: v for m, v in kv_lost.items() if v},
                  "do_linearizable": None if do is None else do.get("linearizable"),
                  "do_acked_lost": None if do is None else do.get("acked_lost"),
                  "restarted_outside_schedule": restarted, "processes": processes, "catchment_back": back,
                  "pss_mb": {"before": round(pss[0], 1), "after": round(pss[1], 1)},
                  "pss_trend": trend(collector.samples, "pss_mb"), "cpu_trend": trend(collector.samples, "cpu_cores"),
                  "records_missed": collector.missed_rotations}
    span = max(t_end - t0, 1.0)
    bin_s = max(1.0, span / TIMELINE_BINS)
    worst = worst_window([s for by_client in series.values() for s in by_client.values()], t0, t_end - spec.timeout_s)
    if worst is not None:
        lo, hi = t0 + worst["start_s"], t0 + worst["start_s"] + 60.0
        worst["faults"] = [w.name for w in windows if w.t_fault < hi and w.t_over + spec.grace_s > lo]
    faults = [asdict(w) | recovered[w.name] for w in windows]
    return {"spec": {k: v for k, v in asdict(spec).items() if k != "http"}, "t0": t0, "duration_s": t_end - t0,
            "availability": {"valid": valid, "good": good, "value": good / valid if valid else None,
                             "budget": error_budget(valid, good, TARGET_AVAILABILITY), **figures},
            "classes": per_class, "faults": faults, "mttr_alone": mttr_alone(faults, spec.grace_s),
            "skipped": sum(1 for p in planned if p.skipped is not None), "errors": errors,
            "invariants": invariants, "do": do, "flaps": [[srv, round(t - t0, 3)] for srv, t, _lead in flaps],
            "sessions": {"changes": len(changes),
                         "down_unexplained": [[round(c.t - t0, 3), c.router, c.peer, c.why] for c
                                              in sessions_down_unexplained(windows, touched, changes, spec.grace_s)]},
            "kv_reads": dict(kv.reads), "kv_write_errors": kv.failed, "worst_minute": worst,
            "timeline": {"bin_s": bin_s, **{kind: timeline(by_client, t0, t_end, bin_s)
                                            for kind, by_client in series.items()}},
            "samples": [{**r, "t": round(r["t"] - t0, 1)} for r in collector.samples]}


def mttr_alone(faults: list[dict[str, Any]], grace_s: float) -> dict[str, dict[str, Any]]:
    """Per class, the time to recover of the faults that affected a client and ran alone: no other fault's
    window (injection to the end of its settling, plus ``grace_s``) met theirs — a soak's figure comparable
    with the single-fault reference, overlap taken out (the box's load left in). ``faults``: a report's
    ``faults`` (``t_fault``, ``t_repair``, ``t_settled``, ``cls``, ``affected``, ``recover_s``)."""
    def span(f: dict[str, Any]) -> tuple[float, float]:
        w = Window(str(f.get("name", "")), str(f["cls"]), float(f["t_fault"]), float(f["t_repair"]),
                   None if f.get("t_settled") is None else float(f["t_settled"]))
        return w.t_fault, w.t_over + grace_s  # Window.t_over: the one definition of when a fault's effect ended

    spans = [span(f) for f in faults]
    out: dict[str, dict[str, Any]] = {}
    for i, f in enumerate(faults):
        if not f.get("affected") or f.get("recover_s") is None:
            continue
        lo, hi = spans[i]
        if any(j != i and a <= hi and lo <= b for j, (a, b) in enumerate(spans)):
            continue
        row = out.setdefault(str(f["cls"]), {"faults": 0, "sum_s": 0.0})
        row["faults"] += 1
        row["sum_s"] += float(f["recover_s"])
    return {c: {"faults": r["faults"], "mttr_s": round(r["sum_s"] / r["faults"], 3)} for c, r in sorted(out.items())}


def loss_seconds(cls: str, windows: list[Window], figures: dict[str, Any]) -> dict[str, Any]:
    """What a fault of class ``cls`` cost its users, per kind of request: the seconds of requests it lost
    per affected client (its lost requests over the client's request rate), averaged over the class's
    faults (those that affected none count as 0), and how many of them affected a client at all."""
    out: dict[str, Any] = {}
    names = [w.name for w in windows if w.cls == cls]
    for kind, f in figures.items():
        rate = {c: row["valid"] / f["span_s"] for c, row in f["per_client"].items() if f["span_s"] > 0}
        mean_rate = sum(rate.values()) / len(rate) if rate else 0.0
        per_fault = []
        for n in names:
            lost = f["lost_by_fault"].get(n, 0)
            affected = len(f["recovery"][n]["affected"]) or (1 if lost else 0)
            per_fault.append(lost / mean_rate / affected if lost and mean_rate else 0.0)
        out[kind] = {"per_affected_client_s": round(sum(per_fault) / len(per_fault), 4) if per_fault else None,
                     "faults_with_loss": sum(1 for x in per_fault if x > 0)}
    return out


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
           f"- **BGP sessions down that no fault explains**: "
           f"{len(result.get('sessions', {}).get('down_unexplained', []))} "
           f"(of {result.get('sessions', {}).get('changes', 0)} session changes)",
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
            f"- processes restarted outside the schedule: {', '.join(inv['restarted_outside_schedule']) or 'none'}; "
            f"lab processes {inv['processes']['before']} before, {inv['processes']['after']} after (new: "
            f"{', '.join(inv['processes']['new']) or 'none'}; gone: {', '.join(inv['processes']['gone']) or 'none'}; "
            f"started by the autoscaler: {', '.join(inv['processes'].get('autoscaled', [])) or 'none'})",
            f"- every client back on its predicted PoP: {inv['catchment_back']}",
            f"- lab memory (PSS): {inv['pss_mb']['before']} → {inv['pss_mb']['after']} MB; sampled every "
            f"{SAMPLE_S:.0f} s, {_trend_text(inv.get('pss_trend'), 'MB')}",
            f"- lab CPU (cores): {_trend_text(inv.get('cpu_trend'), 'cores')}",
            f"- records the soak could not follow (a prober's file rotated twice between reads): "
            f"{inv.get('records_missed', 0)}"]
    worst = result.get("worst_minute")
    if worst:
        out += ["", f"**Worst minute**: from {worst['start_s']:.0f} s, {worst['good']} good of {worst['valid']} "
                    f"({100 * worst['availability']:.3f} %), faults: {', '.join(worst['faults']) or 'none'}"]
    reads = result.get("kv_reads")
    if reads:
        out += [f"**KV reads at the edge** (one of the writer's acknowledged keys): {reads['found']} found, "
                f"{reads['missing']} not yet replicated, {reads['failed']} failed; writes failed: "
                f"{result.get('kv_write_errors', 0)}"]
    return "\n".join(out) + "\n"


def _trend_text(t: dict[str, Any] | None, unit: str) -> str:
    if t is None:
        return "too few samples"
    return (f"first third {t['first_third']} {unit}, last third {t['last_third']} {unit} "
            f"({'+' if t['growth'] >= 0 else ''}{t['growth_pct']} %)")


def plot(result: dict[str, Any], out: Path) -> None:
    """The soak's timeline picture: the faults as bands per target (coloured by class), each client's
    availability and its median latency per bin (probes solid, HTTP dashed), the worst minute shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0, tl = result["t0"], result["timeline"]
    faults = result["faults"]
    targets = sorted({f["name"].split(" ")[1] for f in faults})
    classes = sorted({f["cls"] for f in faults})
    tab = plt.get_cmap("tab20")
    color = {c: tab(i % 20) for i, c in enumerate(classes)}
    fig, (ax_f, ax_a, ax_l) = plt.subplots(3, 1, sharex=True, figsize=(14, 3 + 0.18 * len(targets) + 6),
                                           gridspec_kw={"height_ratios": [max(2, 0.18 * len(targets)), 3, 3]})
    for f in faults:
        y = targets.index(f["name"].split(" ")[1])
        ax_f.barh(y, f["t_repair"] - f["t_fault"], left=f["t_fault"] - t0, color=color[f["cls"]], height=0.8)
    ax_f.set_yticks(range(len(targets)), targets, fontsize=6)
    ax_f.legend(handles=[matplotlib.patches.Patch(color=color[c], label=c) for c in classes], fontsize=6,
                ncol=min(6, len(classes)), loc="upper right")
    ax_f.set_title(f"chaos soak, seed {result['spec']['seed']}: faults per target; availability and median "
                   f"latency per client per {tl['bin_s']:.0f} s")
    cmap = plt.get_cmap("tab10")
    for kind, style in (("probes", "-"), ("http", "--")):
        for i, (client, rows) in enumerate(tl.get(kind, {}).items()):
            xs = [r[0] for r in rows if r[1]]
            ax_a.plot(xs, [100 * r[2] / r[1] for r in rows if r[1]], style, color=cmap(i), linewidth=0.8,
                      label=f"{client} {kind}")
            ax_l.plot([r[0] for r in rows if r[3] is not None], [r[3] for r in rows if r[3] is not None], style,
                      color=cmap(i), linewidth=0.8)
    ax_a.set_ylabel("good / sent (%)")
    ax_a.legend(fontsize=6, ncol=4, loc="lower left")
    ax_l.set_ylabel("median latency (ms)")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("seconds since the schedule began (CLOCK_MONOTONIC)")
    worst = result.get("worst_minute")
    if worst:
        for ax in (ax_f, ax_a, ax_l):
            ax.axvspan(worst["start_s"], worst["start_s"] + 60.0, color="red", alpha=0.08)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
