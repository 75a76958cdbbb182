"""Pure pieces of traffic protection (the design's "Load Shedding & Rate Limiting", "Retry
Strategies"): token buckets, retry schedules with jitter, a retry budget, and priority shedding. No clock
and no I/O: every function takes ``now``; the I/O layer keeps the returned state.
"""

from __future__ import annotations

import random
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
