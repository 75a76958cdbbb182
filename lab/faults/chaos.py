"""A chaos soak's fault schedule (issue 25), drawn before the soak starts: seeded, reproducible, pure.

Every fault class of the catalogue that a running platform survives by design is drawn for every target it
takes, with Poisson arrivals at the class's MTBF per target and a repair time from a log-normal
distribution (its median and shape per class). Arrivals are admitted in time order; one is skipped, and
kept in the schedule as skipped with its reason, when

- the faults active then are already ``max_overlap``;
- it touches a node another active fault touches (two faults on one element make the loss unattributable);
- it would impair the storage or control plane of more regions at once than ``max_regions`` (KV commits
  need two regions' masters and etcd two of three members: more is the design's multi-region row);
- it would end after the soak (every fault is repaired before the end, so the end state is checkable).

The faults the design calls fatal (``catastrophic``, ``kv-global-loss``, ``artifact-store-wipe global``)
are drawn only when asked (``fatal=True``).

The lab's scale: a design day lasts ``day_s`` seconds of the soak, so a class's design MTBF (days) becomes
``mtbf_days × day_s``; repair times are the lab's own (seconds: the lab repairs in seconds what the design
gives minutes, and the soak measures what users see meanwhile, not the repair crew).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from core.errors import UsageError
from lab.faults.catalogue import Plan, plan
from model.topology import Topology

#: Skipped arrivals' reasons.
OVERLAP, BUSY, REGIONS, LATE = "overlap bound", "target busy", "regions bound", "past the end"


@dataclass(frozen=True)
class FaultClass:
    """One class of fault: a catalogue scenario, the targets it is drawn for, its design MTBF per target
    (days) and its repair time (log-normal: median seconds and shape sigma)."""

    name: str
    scenario: str
    targets: tuple[str, ...]
    mtbf_days: float
    repair_median_s: float
    repair_sigma: float = 0.5
    fatal: bool = False


@dataclass(frozen=True)
class Planned:
    """One drawn fault: when (seconds from the start), what, for how long, and whether it is injected (or
    why not)."""

    t: float
    cls: str
    scenario: str
    target: str
    repair_s: float
    skipped: str | None = None

    @property
    def end(self) -> float:
        return self.t + self.repair_s


def catalogue(topo: Topology, fatal: bool = False) -> list[FaultClass]:
    """The fault classes of ``topo`` with the lab's defaults (the design's MTBF per PoP, 30 days, and rates
    stated here for the rest; see docs/guide.md). Classes whose targets the topology lacks are left out."""
    servers = tuple(s.name for s in topo.servers if not s.standby)
    pops = tuple(p.name for p in topo.pops)
    regions = tuple(r.name for r in topo.spec.regions)
    storage = tuple(k.name for k in topo.kv_masters)
    cps = tuple(cp.name for cp in topo.control_planes)
    router_links = tuple(sorted({f"{min(i.node, i.peer_node)}:{max(i.node, i.peer_node)}" for r in topo.routers
                                 for i in r.interfaces if i.peer_node in {x.name for x in topo.routers}}))
    origins = tuple(o.name for o in topo.origins)
    out = [
        FaultClass("service", "service-crash", servers, 60.0, 3.0),
        FaultClass("speaker", "speaker-crash", servers, 90.0, 3.0),
        FaultClass("server", "server-silent", servers, 60.0, 5.0),
        FaultClass("pop", "pop-down", pops, 30.0, 8.0),
        FaultClass("link", "link-down", router_links, 60.0, 5.0),
        FaultClass("link-degrade", "link-degrade", router_links, 30.0, 8.0),
        FaultClass("region", "pops-down", regions, 365.0, 10.0),
        FaultClass("kv", "kv-master-crash", storage, 120.0, 5.0),
        FaultClass("do", "do-crash", storage, 120.0, 5.0),
        FaultClass("control-plane", "cp-down", cps, 120.0, 5.0),
        FaultClass("origin", "origin-errors", origins, 60.0, 5.0),
    ]
    if topo.dns is not None:
        out.append(FaultClass("dns", "dns-node-down", tuple(n for p in topo.dns.providers for n in p.nodes),
                              90.0, 5.0))
    if fatal:
        out.append(FaultClass("catastrophic", "catastrophic", ("global",), 3650.0, 10.0, fatal=True))
    return [c for c in out if c.targets]


def draw(classes: Sequence[FaultClass], duration_s: float, seed: int, day_s: float, max_overlap: int = 2,
         max_regions: int = 1, footprint: Callable[[str, str], frozenset[str]] | None = None,
         regions_of: Callable[[str, str], frozenset[str]] | None = None) -> list[Planned]:
    """The schedule of a soak of ``duration_s`` (every arrival, injected or skipped, in time order; the
    same for the same arguments). ``footprint(scenario, target)``: the nodes a fault touches;
    ``regions_of(scenario, target)``: the regions whose storage or control plane it impairs (both
    default to the target alone / none). Raises UsageError for a bound out of range."""
    if not (duration_s > 0 and day_s > 0 and max_overlap >= 1 and max_regions >= 0):
        raise UsageError("a soak needs a positive duration and day, an overlap bound ≥ 1 and a region bound ≥ 0")
    rng = random.Random(seed)
    arrivals: list[Planned] = []
    for c in sorted(classes, key=lambda c: c.name):  # a fixed order: the same seed, the same draws
        mean = c.mtbf_days * day_s
        for target in c.targets:
            t = rng.expovariate(1.0 / mean)
            while t < duration_s:
                repair = c.repair_median_s * math.exp(c.repair_sigma * rng.gauss(0.0, 1.0))
                arrivals.append(Planned(round(t, 3), c.name, c.scenario, target, round(repair, 3)))
                t += rng.expovariate(1.0 / mean)
    arrivals.sort(key=lambda p: (p.t, p.cls, p.target))
    touches = footprint or (lambda _s, target: frozenset({target}))
    impairs = regions_of or (lambda _s, _t: frozenset())
    out: list[Planned] = []
    active: list[Planned] = []
    for a in arrivals:
        active = [x for x in active if x.end > a.t]
        reason = None
        if a.end > duration_s:
            reason = LATE
        elif len(active) >= max_overlap:
            reason = OVERLAP
        elif any(touches(a.scenario, a.target) & touches(x.scenario, x.target) for x in active):
            reason = BUSY
        elif len(impairs(a.scenario, a.target).union(*(impairs(x.scenario, x.target) for x in active))) > max_regions:
            reason = REGIONS
        if reason is None:
            active.append(a)
            out.append(a)
        else:
            out.append(Planned(a.t, a.cls, a.scenario, a.target, a.repair_s, reason))
    return out


def topology_rules(topo: Topology) -> tuple[Callable[[str, str], frozenset[str]], Callable[[str, str], frozenset[str]]]:
    """``footprint`` and ``regions_of`` for :func:`draw` from the catalogue's plans on ``topo``: the nodes a
    fault touches (its target's ends for a link), and the regions of the storage and control plane nodes
    among them (a region-wide fault: its region)."""
    storage = {k.name: k.region for k in (*topo.kv_masters, *topo.control_planes)}

    def resolved(scenario: str, target: str) -> Plan:
        return plan(topo, scenario, target)

    def footprint(scenario: str, target: str) -> frozenset[str]:
        p = resolved(scenario, target)
        ends: Iterable[str] = target.split(":") if ":" in target else (target,)
        return frozenset({*p.servers, *p.routers, *p.hosts, *(n for n, _i in p.links), *ends})

    def regions_of(scenario: str, target: str) -> frozenset[str]:
        p = resolved(scenario, target)
        out = {storage[h] for h in p.hosts if h in storage}
        if target in {r.name for r in topo.spec.regions}:
            out.add(target)
        return frozenset(out)

    return footprint, regions_of


def summary(schedule: Sequence[Planned]) -> dict[str, dict[str, int]]:
    """Per class: faults injected and arrivals skipped (by reason)."""
    out: dict[str, dict[str, int]] = {}
    for p in schedule:
        row = out.setdefault(p.cls, {"injected": 0})
        key = "injected" if p.skipped is None else f"skipped: {p.skipped}"
        row[key] = row.get(key, 0) + 1
    return out
