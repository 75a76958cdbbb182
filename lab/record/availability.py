"""Request-based availability over a soak (the SRE definition: good events over valid events), every lost
request attributed to the faults that can explain it, and each fault's time to recover — pure functions
of what the clients recorded and when the faults were injected and repaired.

- **Valid**: sent inside the measured span, at least ``timeout_s`` before its end (its answer could come).
- **Good**: answered within ``timeout_s``.
- **Attribution**: a valid request not good is charged to the fault injected last among those whose
  window ``[t_fault, t_repair + grace_s]`` holds its send time (``grace_s``: what routing takes to settle
  after a repair), whose class can explain it (``explains``: a UDP probe is not lost to a Durable
  Object host's crash) and that can reach its client (``reaches``: a fault on the data plane reaches the
  clients it serves or routes — :class:`Scope` — not every client of the lab); it is counted
  *overlapped* when other such faults were active too. A request no fault explains is *unexplained* —
  the figure a soak wants at zero.
- **Recovery**: a fault's affected clients are those that lost a request between its injection and its
  repair; each recovered at its first good request after its last such loss. The fault's time to recover
  runs from its injection until its last affected client recovered (0 when none was affected). Losses
  in the grace after the repair (traffic moving back) are the repair's: counted apart.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.stats import wilson
from lab.record.probes import Probe


@dataclass(frozen=True)
class Request:
    client: str
    sent: float
    #: Answered within the timeout.
    good: bool


@dataclass(frozen=True)
class Window:
    """One injected fault: a name unique in the soak, its class, when its injection began and when its
    repair was done."""

    name: str
    cls: str
    t_fault: float
    t_repair: float
    #: When the routing around the repaired target settled (its sessions back up), if later than the
    #: repair: the grace runs from here.
    t_settled: float | None = None

    @property
    def t_over(self) -> float:
        """When the fault's own effect ended: its repair, or the routing settling after it."""
        return max(self.t_repair, self.t_settled or self.t_repair)


@dataclass
class Series:
    """One client's requests of one kind, as two sorted columns: the send times of the good ones (and
    their latencies, seconds, in the same order) and the send times of the lost ones. A soak of an hour
    at 500 probes/s per client is 1.8 million requests a client: kept as arrays, not objects."""

    goods: array[float] = field(default_factory=lambda: array("d"))
    latency: array[float] = field(default_factory=lambda: array("f"))
    losses: list[float] = field(default_factory=list)
    #: (send time, PoP) where the PoP that answered changed: who served the client when (a few per fault,
    #: not one per request).
    pops: list[tuple[float, str]] = field(default_factory=list)

    def add(self, sent: float, good: bool, latency: float = 0.0, pop: str | None = None) -> None:
        if good:
            self.goods.append(sent)
            self.latency.append(latency)
            if pop and (not self.pops or self.pops[-1][1] != pop):
                self.pops.append((sent, pop))
        else:
            self.losses.append(sent)

    def sort(self) -> Series:
        """Sorted by send time (records arrive in completion order); returns self."""
        if any(self.goods[i] > self.goods[i + 1] for i in range(len(self.goods) - 1)):
            order = sorted(range(len(self.goods)), key=self.goods.__getitem__)
            self.goods = array("d", (self.goods[i] for i in order))
            self.latency = array("f", (self.latency[i] for i in order))
        self.losses.sort()
        self.pops.sort()
        return self

    def served(self, start: float, end: float) -> set[str]:
        """The PoPs that answered between ``start`` and ``end``, and the one that answered last before
        ``start`` (who served the client when the span began); sorted series."""
        i = bisect.bisect_right(self.pops, (start, "\uffff"))
        j = bisect.bisect_right(self.pops, (end, "\uffff"))
        return {pop for _t, pop in self.pops[max(0, i - 1):j]}

    def count(self, start: float, end: float, half_open: bool = False) -> tuple[int, int]:
        """(valid, good): the requests sent in ``[start, end]`` (``[start, end)`` if ``half_open``) and the
        good ones among them (sorted)."""
        upto = bisect.bisect_left if half_open else bisect.bisect_right
        good = upto(self.goods, end) - bisect.bisect_left(self.goods, start)
        lost = upto(self.losses, end) - bisect.bisect_left(self.losses, start)
        return good + lost, good


def series_of(requests: Iterable[Request]) -> dict[str, Series]:
    """Requests by client, as sorted :class:`Series`."""
    out: dict[str, Series] = {}
    for r in requests:
        out.setdefault(r.client, Series()).add(r.sent, r.good)
    return {c: s.sort() for c, s in out.items()}


def from_probes(client: str, probes: Iterable[Probe], timeout_s: float) -> list[Request]:
    """A client's probes as requests (good: answered within ``timeout_s``)."""
    return [Request(client, p.sent, p.recv is not None and p.recv - p.sent <= timeout_s) for p in probes]


def _holds(w: Window, t: float, grace_s: float) -> bool:
    return w.t_fault <= t <= w.t_over + grace_s


#: Whether a fault (its window) can reach a client (its name).
Reaches = Callable[[Window, str], bool]


@dataclass(frozen=True)
class Scope:
    """What a fault takes: the PoPs whose servers it stops, the regions whose routers (or whole platform) it
    takes, and the regions whose own clients alone it serves (a DNS resolver or anycast provider node: the
    region's resolvers reach their nearest node). None of them: it serves every client (a unicast DNS
    provider, a storage or control plane node, the origin) and may reach any client its class explains."""

    pops: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    client_regions: frozenset[str] = frozenset()

    def reaches(self, client_region: str, served: Collection[str], region_of: Mapping[str, str]) -> bool:
        """Whether a client of ``client_region`` served by the PoPs ``served`` around the fault (before it,
        during it, moving back after it) can lose a request to it: one of those PoPs is the fault's, or
        the client's region or one of those PoPs' is a region whose routing it takes (a superset: the
        client's path inside such a region is not known)."""
        if not self.pops and not self.regions and not self.client_regions:
            return True
        if self.pops & set(served) or client_region in self.client_regions:
            return True
        return bool(self.regions & ({client_region} | {region_of[p] for p in served if p in region_of}))


def reach(served: Mapping[str, Sequence[Series]], scopes: Mapping[str, Scope], client_region: Mapping[str, str],
          region_of: Mapping[str, str], grace_s: float) -> Reaches:
    """:data:`Reaches` for :func:`charge` by the faults' :class:`Scope` (window name → scope; a window without
    one reaches every client) and who served each client (client → its series of every kind: a client's
    probes and HTTP requests go to the same anycast catchment) from just before the fault to the end of its
    grace. Memoised per (window, client)."""
    memo: dict[tuple[str, str], bool] = {}

    def reaches(w: Window, client: str) -> bool:
        key = (w.name, client)
        if key not in memo:
            scope = scopes.get(w.name)
            if scope is None:
                memo[key] = True
            else:
                pops = set().union(*(s.served(w.t_fault, w.t_over + grace_s) for s in served.get(client, ())))
                memo[key] = scope.reaches(client_region.get(client, ""), pops, region_of)
        return memo[key]

    return reaches


def charge(lost: Iterable[Request], windows: Sequence[Window], grace_s: float,
           explains: Collection[str] | None = None,
           reaches: Reaches | None = None) -> tuple[dict[str, list[Request]], list[Request], int]:
    """Every lost request charged to the fault injected last among those whose window holds it, whose
    class is in ``explains`` (None: every class) and that ``reaches`` its client (None: every fault every
    client): fault name → its requests, the requests no fault explains, and how many had more than one
    candidate."""
    candidates = [w for w in sorted(windows, key=lambda w: w.t_fault) if explains is None or w.cls in explains]
    charged: dict[str, list[Request]] = {w.name: [] for w in windows}
    unexplained: list[Request] = []
    overlapped = 0
    for r in lost:
        holding = [w.name for w in candidates
                   if _holds(w, r.sent, grace_s) and (reaches is None or reaches(w, r.client))]
        if holding:
            charged[holding[-1]].append(r)
            overlapped += len(holding) > 1
        else:
            unexplained.append(r)
    return charged, unexplained, overlapped


def account(series: Mapping[str, Series], windows: Sequence[Window], start: float, end: float, timeout_s: float,
            grace_s: float, explains: Collection[str] | None = None, reaches: Reaches | None = None) -> dict[str, Any]:
    """Availability overall and per client (with its 99 % Wilson interval) of the valid requests of the
    (sorted) ``series``, the lost ones charged to the faults (:func:`charge`, with ``explains`` and
    ``reaches``), how many of those had more than one candidate, and those no fault explains (count, and
    each: client and send time); with the faults' recovery (:func:`recovery`)."""
    last = end - timeout_s
    per_client = {c: s.count(start, last) for c, s in sorted(series.items())}
    lost = [Request(c, t, False) for c, s in series.items()
            for t in s.losses[bisect.bisect_left(s.losses, start):bisect.bisect_right(s.losses, last)]]
    charged, unexplained, overlapped = charge(lost, windows, grace_s, explains, reaches)
    valid = sum(n for n, _g in per_client.values())
    good = sum(g for _n, g in per_client.values())

    def ratio(n: int, g: int) -> dict[str, Any]:
        lo, hi = wilson(g, n)
        return {"valid": n, "good": g, "availability": g / n if n else None, "ci99": [lo, hi]}

    return {**ratio(valid, good), "span_s": max(0.0, last - start),
            "per_client": {c: ratio(n, g) for c, (n, g) in per_client.items()},
            "lost_by_fault": {name: len(lost) for name, lost in charged.items()}, "overlapped": overlapped,
            "unexplained": len(unexplained), "unexplained_at": [(r.client, round(r.sent, 3)) for r in unexplained],
            "recovery": recovery(series, windows, charged)}


def recovery(series: Mapping[str, Series], windows: Sequence[Window],
             charged: dict[str, list[Request]]) -> dict[str, dict[str, Any]]:
    """Per fault, from the requests charged to it: its affected clients (a loss charged to it before its
    repair) and when each recovered (its first good request after the last such loss, seconds after the
    injection), the fault's time to recover (the last of them; None if one never recovered in the
    records), and the requests charged to it in the grace after its repair."""
    out: dict[str, dict[str, Any]] = {}
    for w in windows:
        last: dict[str, float] = {}
        for r in charged.get(w.name, []):
            if r.sent < w.t_repair:
                last[r.client] = max(last.get(r.client, r.sent), r.sent)
        recovered: dict[str, float | None] = {}
        for client, t_lost in sorted(last.items()):
            goods = series[client].goods if client in series else array("d")
            i = bisect.bisect_right(goods, t_lost)
            recovered[client] = round(goods[i] - w.t_fault, 3) if i < len(goods) else None
        times = list(recovered.values())
        out[w.name] = {"cls": w.cls, "affected": recovered,
                       "lost_at_repair": sum(1 for r in charged.get(w.name, []) if r.sent >= w.t_repair),
                       "recover_s": None if None in times else max((t for t in times if t is not None), default=0.0)}
    return out


def error_budget(valid: int, good: int, target: float) -> dict[str, Any]:
    """The error budget of ``valid`` requests at availability ``target`` and how much of it the bad ones
    burned (1.0: all of it)."""
    allowed = valid * (1.0 - target)
    bad = valid - good
    return {"target": target, "allowed_bad": allowed, "bad": bad, "burned": bad / allowed if allowed else None}


def timeline(series: Mapping[str, Series], start: float, end: float, bin_s: float) -> dict[str, list[list[Any]]]:
    """Per client, per bin of ``bin_s`` from ``start`` to ``end``: [bin start (s after ``start``), requests
    sent, good ones, the good ones' median latency in ms (None without one)] (sorted ``series``)."""
    out: dict[str, list[list[Any]]] = {}
    n = max(1, math.ceil((end - start) / bin_s))
    for client, s in sorted(series.items()):
        rows = []
        for k in range(n):
            lo, hi = start + k * bin_s, min(end, start + (k + 1) * bin_s)
            i, j = bisect.bisect_left(s.goods, lo), bisect.bisect_left(s.goods, hi)
            lost = bisect.bisect_left(s.losses, hi) - bisect.bisect_left(s.losses, lo)
            lat = sorted(s.latency[i:j])
            p50 = round(1000 * lat[len(lat) // 2], 2) if lat else None
            rows.append([round(k * bin_s, 3), j - i + lost, j - i, p50])
        out[client] = rows
    return out


def worst_window(all_series: Iterable[Series], start: float, end: float, width_s: float = 60.0,
                 step_s: float = 1.0) -> dict[str, Any] | None:
    """The ``width_s`` window (starting every ``step_s`` from ``start``, ending by ``end``) whose pooled
    requests had the lowest availability: its start (seconds after ``start``), valid, good and
    availability; None when the span is shorter than one window or holds no request."""
    pooled = list(all_series)
    worst: dict[str, Any] | None = None
    k = 0
    while start + k * step_s + width_s <= end + 1e-9:
        lo = start + k * step_s
        valid = good = 0
        for s in pooled:
            n, g = s.count(lo, lo + width_s, half_open=True)
            valid, good = valid + n, good + g
        if valid and (worst is None or good / valid < worst["availability"]):
            worst = {"start_s": round(k * step_s, 3), "valid": valid, "good": good, "availability": good / valid}
        k += 1
    return worst
