"""``anylab measure``: inject a fault, record everything on one clock, restore, repeat; report.

Works on a :class:`~lab.run.lab.Lab` in this process (tests, benchmarks) or on a lab run by a controller
(:class:`RemoteLab`, the CLI): both can ``fail`` and ``restore`` and know their topology, run directory
and namespaces. Each run:

1. waits until every BGP session is up and every client is answered by its predicted PoP;
2. starts the router recorders (FIB changes, BGP messages) — the client probers run all the time;
3. injects the fault (its CLOCK_MONOTONIC time is the origin);
4. waits until every client has settled: a full ``settle`` window of answers, none from a faulted
   server (clients behind a failed region's routers are left out), within a deadline derived from the
   profile's timers;
5. stops recording, restores the fault, derives the figures (:mod:`lab.record.analysis`).

An interruption (Ctrl-C) restores the fault and leaves the lab running.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.errors import AnylabError, UsageError, WaitTimeout
from core.files import read_jsonl as read_http
from core.proc import start_tool, stop_tools, tools_running
from core.wait import wait_for
from lab.faults.catalogue import DNS_ONLY, Plan, plan
from lab.links.state import calibration_summary
from lab.load.dns_load import DnsLoads, per_second, summary
from lab.record import analysis
from lab.record.probes import Probe, read_probes
from lab.record.recorders import RouterRecorder
from lab.run.baseline import wait_baseline
from lab.run.driver import Driver
from lab.run.observe import observed_catchment, set_probe_rate
from lab.run.rundir import control_plane_dirs
from model.topology import Topology

PROBE_TIMEOUT_S = 1.0  # lab.record.prober's default: a probe is written as lost only after this
#: How long a run waits for the lab's baseline (:func:`lab.run.baseline.wait_baseline`) before its fault.
BASELINE_TIMEOUT_S = 60.0
LINE_BYTES = 110  # a generous size of one probe line, to read just the tail that matters



@dataclass
class Timeline:
    """The raw series of one run, for the plot."""

    t_fault: float
    probes: dict[str, list[Probe]]
    fib: list[tuple[float, str]]
    decisions: list[tuple[float, str]]
    end: float
    extra: dict[str, Any] = field(default_factory=dict)


def _deadline_s(topo: Topology, p: Plan) -> float:
    prof = topo.spec.settings.profile
    profiles = [prof, *(r.profile for r in topo.routers), *(x.profile for x in topo.pops)]
    worst = max(pr.hold + pr.health.detection_bound + pr.mrai for pr in profiles)
    return worst + 15.0 + (p.count * p.period if p.scenario == "flap" else 0.0)


def _client_probes(driver: Driver, client: str, since: float) -> list[Probe]:
    span = max(1.0, monotonic() - since + 2.0)
    rate = driver.topo.spec.settings.probe_rate_hz
    probes = read_probes(driver.run_dir / client / "probes.jsonl", tail_bytes=int(span * rate * LINE_BYTES))
    return [p for p in probes if p.sent >= since]


def _wait_settled(driver: Driver, p: Plan, t_fault: float, settle: float) -> None:
    topo = driver.topo
    skip = {c.name for c in topo.clients if c.router in p.routers}
    faulted = set(p.servers) if p.scenario != "flap" else set()
    pending: list[str] = []

    def settled() -> bool:
        now = monotonic()
        lo, hi = max(t_fault, now - PROBE_TIMEOUT_S - 0.1 - settle), now - PROBE_TIMEOUT_S - 0.1
        pending.clear()
        for c in topo.clients:
            if c.name in skip:
                continue
            window = [x for x in _client_probes(driver, c.name, lo) if x.sent <= hi]
            good = (hi - lo >= settle * 0.99 and window and all(x.answered for x in window)
                    and not any(x.server in faulted for x in window))
            if not good:
                pending.append(c.name)
        return not pending

    wait_for(settled, timeout=_deadline_s(topo, p), what="clients to settle after the fault", interval=0.1,
             describe=lambda: "not settled: " + ", ".join(pending))


#: The network counts as converged once no router's FIB has changed for this long.
NETWORK_QUIET_S = 1.0
#: Faults that send nothing: the routers next to them notice only when their hold timer (or BFD) runs out.
SILENT = ("server-silent", "pop-down", "pops-down", "region-down")


def _wait_network_quiet(rec: RouterRecorder, topo: Topology, p: Plan, t_fault: float, timeout: float) -> None:
    """Wait until every router's FIB has settled: no change for NETWORK_QUIET_S, and for a silent fault
    not before the hold time of the sessions it silences has run out (the clients may have settled long
    before: a region-down moves no client of another region, yet every router's table changes)."""
    floor = t_fault
    if p.scenario in SILENT:
        floor += max((n.profile.hold for r in topo.routers for n in r.neighbors
                      if n.node in (*p.servers, *p.routers) and n.profile.bfd is None), default=0)

    def quiet() -> bool:
        return monotonic() - max(rec.last_fib_change(), floor) >= NETWORK_QUIET_S

    wait_for(quiet, timeout=timeout, what="the routers' FIBs to settle", interval=0.1,
             describe=lambda: f"last FIB change {monotonic() - rec.last_fib_change():.2f} s ago")


def _health_events(driver: Driver, servers: tuple[str, ...], t0: float) -> list[dict[str, Any]]:
    """The servers' health decisions from ``t0``: the agents' own, and the ExaBGP API's ``agent-lost``
    (a folded agent's process died or hung: its dead-man's switch decided)."""
    out = []
    for s in servers:
        for name, only in (("health-events.jsonl", None), ("api-events.jsonl", "agent-lost")):
            path = driver.run_dir / s / name
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if float(e.get("t", 0)) >= t0 and (only is None or e.get("event") == only):
                    out.append(e)
    return sorted(out, key=lambda e: float(e["t"]))


HTTP_WORKER = "anylab-http-probe"
HTTP_HOST = "http-probe.anylab"


def http_host(topo: Topology) -> str:
    """The probe worker's host: with the topology's DNS its name in the platform's zone (its deploy puts it
    there, and the users resolve it), else :data:`HTTP_HOST` (reached by the anycast address)."""
    return f"{HTTP_WORKER}.{topo.dns.zone.rstrip('.')}" if topo.dns is not None else HTTP_HOST
HTTP_CODE = "async def fetch(request, env, ctx):\n    return 'ok'\n"


@dataclass(frozen=True)
class HttpSpec:
    """``--http``: per client, ``connections`` keep-alive connections and one new-connection user, each
    at ``rate`` requests/s; a request failing after ``timeout`` s."""

    rate: float = 50.0
    connections: int = 2
    timeout: float = 1.0


def deploy_http_worker(driver: Driver) -> None:
    """Make sure the trivial worker the HTTP load asks for runs on every PoP (the same content is the
    same version: a second measurement deploys nothing new). Raises ControlPlaneError."""
    from control_plane.client import Client

    Client(control_plane_dirs(driver.topo, driver.run_dir)).release(HTTP_WORKER, {"code": HTTP_CODE,
                                                                                  "host": http_host(driver.topo)})


@dataclass(frozen=True)
class DnsUsersSpec:
    """``--dns``: every client resolves the platform's names through its resolvers (``rate`` queries a
    second, :mod:`lab.load.dns_load`) for the whole run; a DNS fault (which the UDP probes do not see) is
    held ``hold_s`` seconds before it is restored."""

    rate: float = 10.0
    hold_s: float = 10.0


def dns_names(topo: Topology) -> list[str]:
    """The names ``--dns`` users resolve, all in the zone from the start: the front door and the first and
    last PoPs' own names."""
    zone = topo.dns.zone.rstrip(".") if topo.dns is not None else ""
    return [f"www.{zone}", f"{topo.pops[0].name}.pop.{zone}", f"{topo.pops[-1].name}.pop.{zone}"]


class HttpLoads:
    """One :mod:`lab.load.http_load` process per client for the length of one run; stopped by PID, and
    bounded by their own ``--duration`` if this process dies."""

    def __init__(self, driver: Driver, spec: HttpSpec, skip: set[str]) -> None:
        self.driver, self.spec, self.skip = driver, spec, skip
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.t_ready = 0.0

    def path(self, client: str) -> Path:
        return self.driver.run_dir / client / "http-load.jsonl"

    def start(self, duration: float) -> None:
        target = str(self.driver.topo.anycast[0].network_address)
        for c in self.driver.topo.clients:
            self.path(c.name).unlink(missing_ok=True)
            argv = [sys.executable, "-m", "lab.load.http_load",
                    "--target", target, "--host", http_host(self.driver.topo), "--out", str(self.path(c.name)),
                    "--rate", str(self.spec.rate), "--connections", str(self.spec.connections),
                    "--timeout", str(self.spec.timeout), "--duration", f"{duration:.1f}"]
            dns = self.driver.topo.dns
            if dns is not None:  # the users reach the worker by name, through their resolvers
                argv += ["--resolvers", ",".join(str(a) for a in dns.resolvers_for(c.name))]
            self.procs[c.name] = start_tool(self.driver.run_dir, argv, node=c.name, name="http-load",
                                            netns=self.driver.netns[c.name])

    def wait_served(self, since: float, count: int, timeout: float, clients: list[str] | None = None) -> None:
        """Until every client (not skipped) has ``count`` good answers in each mode sent after ``since``."""
        pending: list[str] = []

        def ok() -> bool:
            tools_running(self.procs, "http-load")
            pending.clear()
            for c in clients or [x.name for x in self.driver.topo.clients if x.name not in self.skip]:
                recs = [r for r in read_http(self.path(c)) if r["t0"] >= since and not r["err"] and r["st"] < 500]
                if any(sum(r["m"] == m for r in recs) < count for m in ("ka", "nc")):
                    pending.append(c)
            return not pending

        wait_for(ok, timeout=timeout, what="HTTP answers", interval=0.05,
                 describe=lambda: "no answers yet at " + ", ".join(pending))

    def stop(self) -> None:
        stop_tools(list(self.procs.values()), 5.0)

    def results(self, t_fault: float) -> dict[str, Any]:
        return {c: analysis.http_result(read_http(self.path(c)), t_fault, self.t_ready) for c in self.procs}


def measure_once(driver: Driver, p: Plan, settle: float, index: int,
                 http: HttpSpec | None = None, dns: DnsUsersSpec | None = None) -> tuple[dict[str, Any], Timeline]:
    """One run (see the module docstring); with ``http``, HTTP load runs from every client throughout.
    Raises WaitTimeout/AnylabError; the fault is restored anyway."""
    topo = driver.topo
    slow = topo.spec.settings.probe_idle_hz is not None
    if slow:
        set_probe_rate(driver.run_dir, measuring=True)
    t_fast = monotonic()
    try:
        return _measure_once(driver, p, settle, index, http, t_fast + 1.0 if slow else t_fast, dns)
    finally:
        if slow:
            set_probe_rate(driver.run_dir, measuring=False)


def _measure_once(driver: Driver, p: Plan, settle: float, index: int, http: HttpSpec | None,
                  t_fast: float, dns: DnsUsersSpec | None = None) -> tuple[dict[str, Any], Timeline]:
    """:func:`measure_once` with the probers at their measuring rate since ``t_fast`` (the second of
    probes before the fault that the analysis reads is at that rate)."""
    topo = driver.topo
    wait_baseline(driver.topo, driver.run_dir, deadline=monotonic() + BASELINE_TIMEOUT_S)
    prefixes = {str(x) for x in topo.anycast}
    rec = RouterRecorder({r.name: driver.netns[r.name] for r in topo.routers}, list(topo.anycast))
    skip = {c.name for c in topo.clients if c.router in p.routers}
    loads = HttpLoads(driver, http, skip) if http else None
    users = None
    if dns is not None:
        if topo.dns is None:
            raise UsageError(f"--dns: topology {topo.name} has no DNS (no 'dns' section)")
        users = DnsLoads(driver.run_dir, driver.netns, {c.name: [str(a) for a in topo.dns.resolvers_for(c.name)]
                                                        for c in topo.clients}, dns_names(topo), dns.rate)
    rec.start()
    restored = False
    try:
        if loads is not None:
            loads.start(duration=_deadline_s(topo, p) + 60.0)
            loads.wait_served(monotonic(), 5, timeout=15.0, clients=[c.name for c in topo.clients])
            loads.t_ready = monotonic()
        if users is not None:
            users.start(duration=_deadline_s(topo, p) + (dns.hold_s if dns else 0.0) + 60.0)
            wait_for(lambda: all(sum(r["ok"] for r in users.records(c.name)) >= 3 for c in topo.clients),
                     timeout=15.0, what="every client's first resolutions", interval=0.05)
        # A fresh "before": every client answered after the recorders started (and a second at the
        # measuring rate).
        t_rec = max(monotonic(), t_fast)
        wait_for(lambda: all(observed_catchment(topo, driver.run_dir, after=t_rec).values()), timeout=10,
                 what="answers before the fault", interval=0.01)
        if loads is not None:
            # The HTTP users' "before" too: an answer of each mode after their warm-up. Without this wait
            # the fault could come within a few ms of it, before a new-connection user's next request.
            loads.wait_served(loads.t_ready, 1, timeout=2 * loads.spec.timeout + 10.0)
        t_fault = driver.fail(p.scenario, p.target, p.count, p.period)
        _wait_settled(driver, p, t_fault, settle)
        _wait_network_quiet(rec, topo, p, t_fault, _deadline_s(topo, p))
        if dns is not None and p.scenario in DNS_ONLY:
            # The probes do not see a DNS fault: it lasts the time asked, the users resolving.
            time.sleep(max(0.0, t_fault + dns.hold_s - monotonic()))
        if loads is not None:
            # "after" needs answers too; a client whose HTTP never recovers is a result, not an error.
            with contextlib.suppress(WaitTimeout):
                loads.wait_served(monotonic(), 10, timeout=2 * loads.spec.timeout + 10.0)
        t_end = monotonic()
    finally:
        rec.stop()
        if loads is not None:
            loads.stop()
        if users is not None:
            users.stop()
        if p.scenario != "flap":
            driver.restore(p.target)
            restored = True
    interval = 1.0 / topo.spec.settings.probe_rate_hz
    probes = {c.name: _client_probes(driver, c.name, t_fault - 1.0) for c in topo.clients}
    probes = {c: [x for x in ps if x.sent <= t_end - PROBE_TIMEOUT_S] for c, ps in probes.items()}
    faulted = frozenset(p.servers) if p.scenario != "flap" else frozenset()
    clients = {c: analysis.client_result(ps, t_fault, interval, faulted) for c, ps in probes.items()}
    bgp = rec.bgp_messages()
    routers = analysis.router_results(t_fault, rec.fib, bgp, prefixes)
    events = _health_events(driver, p.servers, t_fault)
    decision = analysis.first_decision_s(t_fault, events)
    towards = frozenset((i.node, i.name) for r in topo.routers for i in r.interfaces if i.peer_node in p.servers)
    withdrawal = analysis.first_update_s(t_fault, bgp, prefixes, towards)
    fibs = [f.t - t_fault for f in rec.fib if f.t >= t_fault]
    rates = [analysis.probe_rate(ps, t_fault - 1.0, t_end - PROBE_TIMEOUT_S) for ps in probes.values()]
    run = {
        "run": index,
        "t_fault": round(t_fault, 6),
        "decision_s": decision,
        "withdrawal_s": withdrawal,
        # What noticed the fault first: the health agent, else the first UPDATE about the prefix (a
        # withdrawal after BFD or the hold timer), else the first FIB change (a path lost within ECMP
        # changes no route anyone announces).
        "detect_s": next((x for x in (decision, withdrawal, round(min(fibs), 6) if fibs else None)
                          if x is not None), None),
        "first_fib_s": round(min(fibs), 6) if fibs else None,
        "network_convergence_s": round(max(fibs), 6) if fibs else None,
        "peak_updates_per_s": analysis.peak_rate(analysis.update_times(t_fault, bgp, prefixes)),
        "routers": routers,
        "clients": {c: r.as_dict() for c, r in clients.items()},
        "probe": {"rate_hz": min(r["rate_hz"] for r in rates), "interval_s": max(r["interval_s"] for r in rates),
                  "p99_interval_s": max(r["p99_interval_s"] for r in rates)},
        "crosscheck": [f"{c}: {r.crosscheck}" for c, r in clients.items() if r.crosscheck],
        "restored": restored,
    }
    if loads is not None:
        run["http"] = loads.results(t_fault)
    if users is not None:
        run["dns"] = {c.name: {"before": summary(users.records(c.name), t_fault - 2.0, t_fault),
                               "during": summary(users.records(c.name), t_fault, t_end),
                               "per_second": [{k: v for k, v in x.items() if k != "answered_by"}
                                              for x in per_second(users.records(c.name), t_fault)]}
                      for c in topo.clients}
    timeline = Timeline(t_fault, probes, [(f.t, f.router) for f in rec.fib], [
        (float(e["t"]), f"{e.get('server')}: {e.get('announced')}") for e in events
        if float(e["t"]) <= t_end and (e.get("event") not in ("check-ok", "check-failed")
                                       or e.get("announced") != "normal")][:20], t_end)
    return run, timeline


def measure(driver: Driver, scenario: str, target: str, repeat: int = 1, count: int = 3, period: float = 1.0,
            settle: float = 0.5, http: HttpSpec | None = None,
            dns: DnsUsersSpec | None = None) -> tuple[dict[str, Any], Timeline | None]:
    """Run ``repeat`` measurements; returns the JSON-ready result and the last run's timeline.

    Raises UsageError for a bad scenario/target (nothing touched), AnylabError/WaitTimeout when a run fails
    (its fault restored). After the last run the catchment is checked against the prediction again."""
    topo = driver.topo
    p = plan(topo, scenario, target, count, period)
    if not 1 <= repeat <= 1000:
        raise UsageError(f"--repeat {repeat}: use 1..1000")
    runs: list[dict[str, Any]] = []
    timeline: Timeline | None = None
    if http is not None:
        deploy_http_worker(driver)
    for i in range(repeat):
        run, timeline = measure_once(driver, p, settle, i, http, dns)
        runs.append(run)
    try:
        wait_baseline(driver.topo, driver.run_dir, deadline=monotonic() + BASELINE_TIMEOUT_S)
        restored_ok = True
    except AnylabError:
        restored_ok = False
    affected = [c for r in runs for c in r["clients"].values() if c["shift_s"] is not None]
    result = {
        "scenario": scenario, "target": target, "topology": topo.name,
        "profile": topo.spec.settings.profile.name,
        "router_kind": "+".join(sorted({r.kind for r in topo.routers})),
        "probe_rate_hz": topo.spec.settings.probe_rate_hz,
        "runs": runs,
        "summary": {
            "shift_s": analysis.percentiles(c["shift_s"] for c in affected),
            "gap_s": analysis.percentiles(c["gap_s"] for c in affected),
            "lost": analysis.percentiles(float(c["lost"]) for r in runs for c in r["clients"].values()),
            "detect_s": analysis.percentiles(r["detect_s"] for r in runs),
            "network_convergence_s": analysis.percentiles(r["network_convergence_s"] for r in runs),
            "achieved_probe_rate_hz": min((r["probe"]["rate_hz"] for r in runs), default=0.0),
            **analysis.global_summary(runs),
        },
        "catchment_restored": restored_ok,
        # How far the shaped links were from what was asked (empty without shaped links).
        "links": calibration_summary(driver.run_dir),
    }
    return result, timeline
