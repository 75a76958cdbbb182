"""Request-based availability over a soak (the SRE definition: good events over valid events), every lost
request attributed to the faults that can explain it, and each fault's time to recover — pure functions
of what the clients recorded and when the faults were injected and repaired.

- **Valid**: sent inside the measured span, at least ``timeout_s`` before its end (its answer could come).
- **Good**: answered within ``timeout_s``.
- **Attribution**: a valid request not good is charged to the fault injected last among those whose
  window ``[t_fault, t_repair + grace_s]`` holds its send time (``grace_s``: what routing takes to settle
  after a repair) and whose class can explain it (``explains``: a UDP probe is not lost to a Durable
  Object host's crash); it is counted *overlapped* when other such faults were active too. A request no
  fault explains is *unexplained* — the figure a soak wants at zero.
- **Recovery**: a fault's affected clients are those that lost a request between its injection and its
  repair; each recovered at its first good request after its last such loss. The fault's time to recover
  runs from its injection until its last affected client recovered (0 when none was affected). Losses
  in the grace after the repair (traffic moving back) are the repair's: counted apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
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
    """One injected fault: a name unique in the soak, its class, when injected and repaired."""

    name: str
    cls: str
    t_fault: float
    t_repair: float


def from_probes(client: str, probes: Iterable[Probe], timeout_s: float) -> list[Request]:
    """A client's probes as requests (good: answered within ``timeout_s``)."""
    return [Request(client, p.sent, p.recv is not None and p.recv - p.sent <= timeout_s) for p in probes]


def _holds(w: Window, t: float, grace_s: float) -> bool:
    return w.t_fault <= t <= w.t_repair + grace_s


def charge(requests: Iterable[Request], windows: Sequence[Window], grace_s: float,
           explains: Collection[str] | None = None) -> tuple[dict[str, list[Request]], list[Request], int]:
    """Every lost request (not good) charged to the fault injected last among those whose window holds it
    and whose class is in ``explains`` (None: every class): fault name → its requests, the requests no
    fault explains, and how many had more than one candidate."""
    candidates = [w for w in sorted(windows, key=lambda w: w.t_fault) if explains is None or w.cls in explains]
    charged: dict[str, list[Request]] = {w.name: [] for w in windows}
    unexplained: list[Request] = []
    overlapped = 0
    for r in requests:
        if r.good:
            continue
        holding = [w.name for w in candidates if _holds(w, r.sent, grace_s)]
        if holding:
            charged[holding[-1]].append(r)
            overlapped += len(holding) > 1
        else:
            unexplained.append(r)
    return charged, unexplained, overlapped


def account(requests: Iterable[Request], windows: Sequence[Window], start: float, end: float, timeout_s: float,
            grace_s: float, explains: Collection[str] | None = None) -> dict[str, Any]:
    """Availability overall and per client (with its 99 % Wilson interval) of the valid ``requests``, the
    lost ones charged to the faults (:func:`charge`), how many of those had more than one candidate, and
    those no fault explains (count, and each: client and send time); with the faults' recovery
    (:func:`recovery`)."""
    valid = [r for r in requests if start <= r.sent <= end - timeout_s]
    per_client: dict[str, list[int]] = {}
    for r in valid:
        row = per_client.setdefault(r.client, [0, 0])
        row[0] += 1
        row[1] += r.good
    charged, unexplained, overlapped = charge(valid, windows, grace_s, explains)
    good = sum(g for _n, g in per_client.values())

    def ratio(n: int, g: int) -> dict[str, Any]:
        lo, hi = wilson(g, n)
        return {"valid": n, "good": g, "availability": g / n if n else None, "ci99": [lo, hi]}

    return {**ratio(len(valid), good), "per_client": {c: ratio(n, g) for c, (n, g) in sorted(per_client.items())},
            "lost_by_fault": {name: len(lost) for name, lost in charged.items()}, "overlapped": overlapped,
            "unexplained": len(unexplained), "unexplained_at": [(r.client, round(r.sent, 3)) for r in unexplained],
            "recovery": recovery(valid, windows, charged)}


def recovery(requests: Sequence[Request], windows: Sequence[Window],
             charged: dict[str, list[Request]]) -> dict[str, dict[str, Any]]:
    """Per fault, from the requests charged to it: its affected clients (a loss charged to it before its
    repair) and when each recovered (its first good request after the last such loss, seconds after the
    injection), the fault's time to recover (the last of them; None if one never recovered in the
    records), and the requests charged to it in the grace after its repair."""
    by_client: dict[str, list[float]] = {}
    for r in requests:
        if r.good:
            by_client.setdefault(r.client, []).append(r.sent)
    for goods_of in by_client.values():
        goods_of.sort()
    out: dict[str, dict[str, Any]] = {}
    for w in windows:
        last: dict[str, float] = {}
        for r in charged.get(w.name, []):
            if r.sent < w.t_repair:
                last[r.client] = max(last.get(r.client, r.sent), r.sent)
        recovered: dict[str, float | None] = {}
        for client, t_lost in sorted(last.items()):
            goods = by_client.get(client, [])
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
