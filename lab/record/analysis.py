"""What one fault did, derived from what was recorded (pure functions, unit-tested by tables).

All times are CLOCK_MONOTONIC seconds; results are relative to the fault (``t_fault``).

This is the one definition of what a fault did to a client (``anylab measure``, ``Lab.wait_shifted``, the
demo, the benchmarks). Per client, at server granularity (a fault on one server of a multi-server PoP
moves flows to a sibling) or, with ``by="pop"``, PoP granularity: ``shift_s`` fault → first answer from
a server (PoP) other than the one serving before; ``gap_s`` last answer from the old one → first from
the new one (what the client felt; equal to the probe interval when nothing was missed); ``lost``
probes sent after the fault and never answered (to the end of the record); ``blackhole_s`` the longest
run without answers; ``misroutes`` answers from a PoP that is neither the old nor the final one;
``flips`` changes of serving server after the fault. Cross-check: a gap should be about (lost + 1)
probe intervals; a disagreement beyond one interval is reported in ``crosscheck``, not hidden.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lab.record.probes import Probe
from lab.record.recorders import BgpMessage, FibChange


@dataclass(frozen=True)
class ClientResult:
    """What a fault at ``t_fault`` did to one client: the one definition of shift, gap and lost (see the
    module docstring), at server or PoP granularity."""

    from_server: str | None
    to_server: str | None
    from_pop: str | None
    to_pop: str | None
    shift_s: float | None
    gap_s: float | None
    lost: int
    sent: int
    blackhole_s: float
    misroutes: int
    flips: int
    crosscheck: str | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _pop_of(p: Probe) -> str | None:
    if p.pop is not None:
        return p.pop
    return p.server.rsplit("-s", 1)[0] if p.server else None


def client_result(probes: Sequence[Probe], t_fault: float, interval: float,
                  faulted: frozenset[str] = frozenset(), by: Literal["server", "pop"] = "server") -> ClientResult:
    """One client's experience of a fault at ``t_fault`` (``interval``: the probe period). The shift is
    to a server other than the one serving before (``by="pop"``: to another PoP) and outside
    ``faulted``: when a whole PoP drains, a client passing through a sibling that has not demoted yet has
    not shifted (that detour counts as a flip)."""
    key: Callable[[Probe], str | None] = (lambda p: p.server) if by == "server" else _pop_of
    before = [p for p in probes if p.sent < t_fault and p.answered]
    old_probe = before[-1] if before else None
    old = key(old_probe) if old_probe else None
    last_old_recv = old_probe.recv if old_probe else None
    after = [p for p in probes if p.sent >= t_fault]
    lost = sum(1 for p in after if not p.answered)
    answered = [p for p in after if p.answered]
    final_probe = answered[-1] if answered else None
    shift_s = gap_s = None
    new_probe: Probe | None = None
    lost_before_shift = 0
    for p in after:
        if not p.answered:
            lost_before_shift += 1
            continue
        assert p.recv is not None
        if key(p) != old and p.server not in faulted:
            new_probe = p
            shift_s = p.recv - t_fault
            gap_s = p.recv - last_old_recv if last_old_recv is not None else None
            break
        last_old_recv = p.recv  # still served (by the old or another faulted server)
    # Longest stretch of consecutive lost probes, as time between the answers around it.
    blackhole = 0.0
    run_start: float | None = None
    prev_recv = old_probe.recv if old_probe else t_fault
    for p in after:
        if p.answered:
            if run_start is not None and p.recv is not None and prev_recv is not None:
                blackhole = max(blackhole, p.recv - prev_recv)
            run_start = None
            prev_recv = p.recv
        elif run_start is None:
            run_start = p.sent
    if run_start is not None and after and prev_recv is not None:
        blackhole = max(blackhole, after[-1].sent - prev_recv)
    pops = {_pop_of(old_probe) if old_probe else None, _pop_of(final_probe) if final_probe else None}
    misroutes = sum(1 for p in answered if _pop_of(p) not in pops)
    served = [old_probe.server if old_probe else None, *(p.server for p in answered)]
    flips = sum(1 for a, b in itertools.pairwise(served) if a != b)
    check = None
    if gap_s is not None:
        expected = (lost_before_shift + 1) * interval
        if abs(gap_s - expected) > interval + 0.001:
            check = (f"gap {gap_s * 1000:.1f} ms but {lost_before_shift} probes lost "
                     f"(≈ {expected * 1000:.1f} ms at {interval * 1000:.1f} ms per probe)")
    old_server = old_probe.server if old_probe else None
    final = final_probe.server if final_probe else None
    to_probe = new_probe or final_probe
    return ClientResult(old_server, new_probe.server if new_probe else (final if final != old_server else None),
                        _pop_of(old_probe) if old_probe else None, _pop_of(to_probe) if to_probe else None,
                        shift_s, gap_s, lost, len(after), blackhole, misroutes, flips, check)


def probe_rate(probes: Sequence[Probe], t0: float, t1: float) -> dict[str, float]:
    """Achieved probe rate and resolution over [t0, t1]: rate, median and 99th percentile send interval."""
    sent = [p.sent for p in probes if t0 <= p.sent <= t1]
    if len(sent) < 3:
        return {"rate_hz": 0.0, "interval_s": 0.0, "p99_interval_s": 0.0}
    gaps = sorted(b - a for a, b in itertools.pairwise(sent))
    return {"rate_hz": round((len(sent) - 1) / (sent[-1] - sent[0]), 1),
            "interval_s": round(statistics.median(gaps), 6),
            "p99_interval_s": round(gaps[int(0.99 * (len(gaps) - 1))], 6)}


def router_results(t_fault: float, fib: Iterable[FibChange], bgp: Iterable[BgpMessage],
                   prefixes: set[str]) -> dict[str, dict[str, Any]]:
    """Per router: first/last FIB change of the anycast prefix, how many (path exploration), UPDATEs in
    and out about it, and relay delay (first UPDATE in → first UPDATE out after it)."""
    out: dict[str, dict[str, Any]] = {}
    for f in fib:
        if f.t < t_fault:
            continue
        r = out.setdefault(f.router, _empty_router())
        r["first_fib_s"] = r["first_fib_s"] if r["first_fib_s"] is not None else round(f.t - t_fault, 6)
        r["last_fib_s"] = round(f.t - t_fault, 6)
        r["fib_changes"] += 1
    first_in: dict[str, float] = {}
    for m in bgp:
        if m.t < t_fault or m.kind != "UPDATE" or not prefixes & {*m.withdrawn, *m.announced}:
            continue
        r = out.setdefault(m.router, _empty_router())
        r["updates_" + m.direction] += 1
        if m.direction == "in":
            first_in.setdefault(m.router, m.t)
        elif m.router in first_in and r["relay_s"] is None:
            r["relay_s"] = round(m.t - first_in[m.router], 6)
    return out


def peak_rate(times: Iterable[float], window: float = 1.0) -> int:
    """The most events within any ``window`` seconds (a sliding window over the sorted times)."""
    ts = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def update_times(t_fault: float, bgp: Iterable[BgpMessage], prefixes: set[str]) -> list[float]:
    """When routers received an UPDATE about the anycast prefix after the fault (each message once: as
    it arrived, not also as it left its sender)."""
    return [m.t for m in bgp if m.t >= t_fault and m.kind == "UPDATE" and m.direction == "in"
            and prefixes & {*m.withdrawn, *m.announced}]


def global_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Across runs: when each router's FIB last changed (its distribution over routers: the network
    has converged when the slowest has), path exploration (the most FIB changes one router made in a
    run) and the peak rate of UPDATEs about the prefix that the routers received."""
    lasts = [r["last_fib_s"] for run in runs for r in run["routers"].values()]
    return {"router_convergence_s": percentiles(lasts),
            "path_changes_max": max((r["fib_changes"] for run in runs for r in run["routers"].values()), default=0),
            "routers_changed": max((sum(1 for r in run["routers"].values() if r["fib_changes"])
                                    for run in runs), default=0),
            "peak_updates_per_s": max((run.get("peak_updates_per_s", 0) for run in runs), default=0)}


def _empty_router() -> dict[str, Any]:
    return {"first_fib_s": None, "last_fib_s": None, "fib_changes": 0, "updates_in": 0, "updates_out": 0,
            "relay_s": None}


def first_update_s(t_fault: float, bgp: Iterable[BgpMessage], prefixes: set[str],
                   towards_faulted: frozenset[tuple[str, str]] = frozenset()) -> float | None:
    """Fault → the first UPDATE about the anycast prefix seen anywhere (the withdrawal leaving).
    UPDATEs a router sends towards a faulted server (``towards_faulted``: router, interface) say nothing
    about the fault — FRR, e.g., sends a re-established peer its table about a second later."""
    ts = [m.t for m in bgp if m.t >= t_fault and m.kind == "UPDATE" and prefixes & {*m.withdrawn, *m.announced}
          and not (m.direction == "out" and (m.router, m.interface) in towards_faulted)]
    return round(min(ts) - t_fault, 6) if ts else None


def first_decision_s(t_fault: float, events: Iterable[dict[str, Any]]) -> float | None:
    """Fault → the first health-agent decision to stop announcing normally."""
    ts = [float(e["t"]) for e in events
          if float(e.get("t", 0)) >= t_fault and e.get("announced") in ("withdrawn", "demoted")]
    return round(min(ts) - t_fault, 6) if ts else None


def percentiles(values: Iterable[float | None]) -> dict[str, float | None]:
    """p50/p90/max (nearest rank) of the values that exist; None when there are none."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"p50": None, "p90": None, "max": None, "n": 0}

    def rank(q: float) -> float:
        return round(vals[min(len(vals) - 1, max(0, math.ceil(q * len(vals)) - 1))], 6)

    return {"p50": rank(0.5), "p90": rank(0.9), "max": round(vals[-1], 6), "n": len(vals)}


def _latency_ms(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    ok = sorted((r["t1"] - r["t0"]) * 1000 for r in records if not r["err"] and 200 <= r["st"] < 400)
    if not ok:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": round(ok[len(ok) // 2], 2), "p99": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))], 2),
            "n": len(ok)}


def http_result(records: Sequence[dict[str, Any]], t_fault: float,
                since: float = -math.inf) -> dict[str, dict[str, Any]]:
    """Per load mode (``ka`` keep-alive, ``nc`` new connection), from :mod:`lab.load.http_load` records sent
    after ``since`` (the end of the load's warm-up: its connections and isolates made):

    - ``requests``, ``failed`` (an error or a status ≥ 500) after the fault, by ``errors`` kind;
    - ``broken_connections``: keep-alive connections that were serving before the fault and ended in an
      error after it (an established TCP connection that anycast moved to a PoP that never saw it is
      reset there);
    - ``latency_ms`` before the fault, during (fault → the first success after the last failure, or
      the first answer from another server when nothing failed) and after;
    - ``servers_before``/``servers_after``: who answered.
    """
    out: dict[str, dict[str, Any]] = {}
    for mode in ("ka", "nc"):
        recs = sorted((r for r in records if r.get("m") == mode and r["t0"] >= since), key=lambda r: r["t0"])
        before = [r for r in recs if r["t0"] < t_fault]
        after_fault = [r for r in recs if r["t0"] >= t_fault]
        bad = [r for r in after_fault if r["err"] or r["st"] >= 500]
        last_server = next((r["srv"] for r in reversed(before) if not r["err"]), None)
        if bad:
            t_rec = next((r["t0"] for r in after_fault if r["t0"] > bad[-1]["t0"] and not r["err"]
                          and r["st"] < 500), None)
        else:
            t_rec = next((r["t0"] for r in after_fault if not r["err"] and r["srv"] != last_server), t_fault)
        t_rec = t_rec if t_rec is not None else math.inf
        errors: dict[str, int] = {}
        for r in bad:
            kind = r["err"] or f"http_{r['st']}"
            errors[kind] = errors.get(kind, 0) + 1
        alive_before = {r["c"] for r in before if not r["err"]}
        broken = {r["c"] for r in after_fault if r["err"] and r["c"] in alive_before} if mode == "ka" else set()
        out[mode] = {
            "requests": len(after_fault),
            "failed": len(bad),
            "errors": errors,
            "broken_connections": len(broken),
            "outage_s": round(t_rec - t_fault, 6) if bad and t_rec != math.inf else (None if bad else 0.0),
            "latency_ms": {"before": _latency_ms(before),
                           "during": _latency_ms([r for r in after_fault if r["t0"] < t_rec]),
                           "after": _latency_ms([r for r in after_fault if r["t0"] >= t_rec])},
            "servers_before": sorted({r["srv"] for r in before if r["srv"]}),
            "servers_after": sorted({r["srv"] for r in after_fault if r["srv"] and r["t0"] >= t_rec}),
        }
    return out
