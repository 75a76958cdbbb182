"""Pure pieces of traffic protection (the design's "Load Shedding & Rate Limiting", "Retry
Strategies"): token buckets, retry schedules with jitter, a retry budget, and priority shedding. No clock
and no I/O: every function takes ``now``; the I/O layer keeps the returned state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

Priority = Literal["P0", "P1", "P2", "P3"]
PRIORITIES: tuple[Priority, ...] = ("P0", "P1", "P2", "P3")


# -- token buckets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bucket:
    """``rate`` tokens per second up to ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a bucket needs rate > 0 and burst ≥ 1, not {self.rate}/{self.burst}")
        if self.tokens < 0:
            object.__setattr__(self, "tokens", self.burst)


def take(bucket: Bucket, now: float, n: float = 1.0) -> tuple[Bucket, bool, float]:
    """Take ``n`` tokens at ``now``: the new bucket, whether it had them, and (if not) the seconds until
    it will (what a 429 puts in ``Retry-After``)."""
    tokens = min(bucket.burst, bucket.tokens + max(0.0, now - bucket.at) * bucket.rate)
    if tokens >= n:
        return replace(bucket, tokens=tokens - n, at=now), True, 0.0
    return replace(bucket, tokens=tokens, at=now), False, (n - tokens) / bucket.rate


def design_limits(scale: float = 1.0) -> dict[str, list[Bucket]]:
    """The design's ``rate_limits`` as buckets (every rate × ``scale``: the lab runs at a fraction):
    per deployment 10 000/s burst and 100 000/min sustained; per account 100 000 requests/s, 50 000 KV
    reads/s, 1 000 KV writes/s, 5 000 DO requests/s."""
    def per_s(rate: float) -> Bucket:
        return Bucket(rate * scale, max(1.0, rate * scale))

    return {
        "deployment": [per_s(10_000), Bucket(100_000 / 60 * scale, max(1.0, 100_000 * scale))],
        "account": [per_s(100_000)], "kv_read": [per_s(50_000)], "kv_write": [per_s(1_000)],
        "do": [per_s(5_000)],
    }


def take_all(buckets: list[Bucket], now: float) -> tuple[list[Bucket], bool, float]:
    """One token from every bucket, or from none (the longest wait is the Retry-After)."""
    taken = [take(b, now) for b in buckets]
    if all(ok for _b, ok, _w in taken):
        return [b for b, _ok, _w in taken], True, 0.0
    refreshed = [take(b, now, 0.0)[0] for b in buckets]
    return refreshed, False, max(w for _b, ok, w in taken if not ok)


# -- retries -----------------------------------------------------------------------------------------

#: The design's retry table: the delays before each retry (KV reads retry at once, on another replica).
SCHEDULES: dict[str, tuple[float, ...]] = {
    "code_fetch": (0.1, 0.2, 0.4),
    "kv_read": (0.0, 0.0),
    "kv_write": (0.05, 0.1, 0.2),
    "do_request": (0.1, 0.5, 2.0),
    "origin_fetch": (0.1, 0.3, 1.0),
}


def delays(operation: str, rng: random.Random, jitter: float = 0.5) -> list[float]:
    """The delays before each retry of ``operation``, each drawn in [d·(1-jitter), d] so that clients
    that failed together do not retry together. Raises KeyError for an unknown operation."""
    return [d * (1.0 - jitter * rng.random()) for d in SCHEDULES[operation]]


@dataclass(frozen=True)
class RetryBudget:
    """Retries may be at most ``ratio`` of requests (plus ``min_per_s`` a second, so a quiet client can
    still retry): every request deposits ``ratio`` of a token, every retry withdraws one — so when a
    dependency fails, retries add at most ``ratio`` to its load instead of multiplying it."""

    ratio: float = 0.1
    min_per_s: float = 10.0
    cap: float = 100.0
    tokens: float = 10.0
    at: float = 0.0


def deposit(budget: RetryBudget, now: float) -> RetryBudget:
    """A request was made."""
    return _refill(budget, now, budget.ratio)


def _refill(budget: RetryBudget, now: float, extra: float) -> RetryBudget:
    tokens = budget.tokens + max(0.0, now - budget.at) * budget.min_per_s + extra
    return replace(budget, tokens=min(budget.cap, tokens), at=max(now, budget.at))


def withdraw(budget: RetryBudget, now: float) -> tuple[RetryBudget, bool]:
    """May a retry happen now? (It is counted when it may.)"""
    budget = _refill(budget, now, 0.0)
    if budget.tokens >= 1.0:
        return replace(budget, tokens=budget.tokens - 1.0), True
    return budget, False


# -- priority shedding -------------------------------------------------------------------------------

#: The utilisation (in-flight work / capacity) from which each class is shed: P3 first at Level 2's
#: 90 % (the design's "PoP CPU > 90 %: reject lowest-priority traffic classes"), P0 never.
SHED_FROM: dict[Priority, float] = {"P0": float("inf"), "P1": 1.0, "P2": 0.95, "P3": 0.9}


def admit(priority: Priority, utilisation: float) -> bool:
    """Whether a request of ``priority`` is served at ``utilisation``."""
    return utilisation < SHED_FROM[priority]


# -- load and spillover ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RateWindow:
    """Requests counted over the last ``slots`` × ``slot_s`` seconds (1 s by default), slot by slot, so
    the rate follows the load within a second and forgets a burst a second later."""

    slot_s: float = 0.1
    slots: int = 10
    counts: tuple[int, ...] = ()
    head: int = 0  # the index (time // slot_s) of the newest slot

    def __post_init__(self) -> None:
        if not self.counts:
            object.__setattr__(self, "counts", (0,) * self.slots)


def _advance(w: RateWindow, now: float) -> RateWindow:
    head = int(now / w.slot_s)
    gap = head - w.head
    if gap <= 0:
        return w
    if gap >= w.slots:
        return replace(w, counts=(0,) * w.slots, head=head)
    return replace(w, counts=w.counts[gap:] + (0,) * gap, head=head)


def count(w: RateWindow, now: float, n: int = 1) -> RateWindow:
    """``n`` more requests at ``now`` (a time before the newest slot counts in the newest)."""
    w = _advance(w, now)
    return replace(w, counts=(*w.counts[:-1], w.counts[-1] + n))


def rate(w: RateWindow, now: float) -> float:
    """Requests per second over the window ending at ``now``."""
    # What _advance would keep, without building it: asked several times a second of every idle server.
    gap = int(now / w.slot_s) - w.head
    if gap >= w.slots:
        return 0.0
    return sum(w.counts[max(gap, 0):]) / (w.slot_s * w.slots)


Placement = Literal["local", "spill", "shed"]


def place(priority: Priority, utilisation: float, spill_threshold: float, spilled_in: bool,
          peer_has_headroom: bool) -> Placement:
    """Where one request goes (the design's "Spillover Routing" before "Load Shedding").
    ``utilisation`` is what the classes at least as important as ``priority`` make of the server's
    capacity, so less important traffic never gets more important traffic spilled or shed: P3 goes
    first. Served here below ``spill_threshold`` (80 %); above it forwarded to the nearest PoP with
    headroom for the class — except P0 (health checks and auth stay where they are) and a request another
    PoP already spilled here (one hop only, so two busy PoPs cannot bounce it); with nowhere to spill,
    served or shed by its class (P3 from 90 %, P2 95 %, P1 100 %, P0 never)."""
    if utilisation < spill_threshold or priority == "P0" or spilled_in or not peer_has_headroom:
        return "local" if admit(priority, utilisation) else "shed"
    return "spill"


@dataclass(frozen=True)
class Peer:
    """A server of another PoP this one may spill to, as last heard: its utilisation per class (what the
    classes at least as important as P0, P1, P2, P3 make of its capacity, plus what was spilled to it
    since, so a burst does not all land on one peer between two reports) and when."""

    pop: str
    server: str
    address: str
    distance: int
    utilisation: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    heard_at: float = float("-inf")


def spilled_to(peer: Peer, priority: Priority, share: float) -> Peer:
    """``peer`` after one more request of ``priority`` (``share`` of its capacity)."""
    i = PRIORITIES.index(priority)
    return replace(peer, utilisation=tuple(u + share if k >= i else u for k, u in enumerate(peer.utilisation)))


def choose_peer(peers: Sequence[Peer], now: float, threshold: float, fresh_s: float,
                priority: Priority = "P3") -> int | None:
    """The index of the nearest peer heard from within ``fresh_s`` with headroom for ``priority`` (its
    utilisation for the class below ``threshold``; the least loaded among equally near ones); None when
    none has."""
    i = PRIORITIES.index(priority)
    best: tuple[int, float, int] | None = None
    for index, p in enumerate(peers):
        if now - p.heard_at <= fresh_s and p.utilisation[i] < threshold:
            key = (p.distance, p.utilisation[i], index)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]


def pops_down(peers: Sequence[Peer], now: float, silent_s: float) -> int:
    """How many of the watched PoPs have no server heard from within ``silent_s``."""
    by_pop: dict[str, bool] = {}
    for p in peers:
        by_pop[p.pop] = by_pop.get(p.pop, False) or now - p.heard_at <= silent_s
    return sum(1 for alive in by_pop.values() if not alive)
