"""Token buckets, retry schedules and budgets, priority shedding: pure, by tables."""

from __future__ import annotations

import random

import pytest

from protect.limits import (
    SCHEDULES,
    Bucket,
    Peer,
    Priority,
    RateWindow,
    RetryBudget,
    admit,
    choose_peer,
    count,
    delays,
    deposit,
    design_limits,
    place,
    pops_down,
    rate,
    spilled_to,
    take,
    take_all,
    withdraw,
)


def test_a_bucket_serves_its_burst_then_its_rate_and_says_when_to_retry() -> None:
    b = Bucket(rate=10, burst=5)
    oks = []
    for _ in range(7):
        b, ok, wait = take(b, 0.0)
        oks.append(ok)
    assert oks == [True] * 5 + [False] * 2
    assert wait == pytest.approx(0.1)
    b, ok, _ = take(b, 0.1)
    assert ok
    b, ok, _ = take(b, 100.0)  # refills to the burst, no more
    assert ok and b.tokens == pytest.approx(4)


def test_all_buckets_or_none() -> None:
    per_s, per_min = Bucket(100, 100), Bucket(1, 2)
    buckets, ok, _ = take_all([per_s, per_min], 0.0)
    buckets, ok2, _ = take_all(buckets, 0.0)
    buckets, ok3, wait = take_all(buckets, 0.0)
    assert (ok, ok2, ok3) == (True, True, False) and wait == pytest.approx(1.0)
    assert buckets[0].tokens == pytest.approx(98)  # the refused request took nothing from the first


def test_the_designs_rate_limits_scaled() -> None:
    limits = design_limits(scale=0.01)
    assert limits["deployment"][0].rate == 100 and limits["deployment"][1].burst == 1000
    assert limits["kv_write"][0].rate == 10


@pytest.mark.parametrize(("operation", "nominal"), list(SCHEDULES.items()))
def test_retry_delays_follow_the_design_with_jitter_below(operation: str, nominal: tuple[float, ...]) -> None:
    got = delays(operation, random.Random(1))
    assert len(got) == len(nominal)
    assert all(d * 0.5 <= g <= d for g, d in zip(got, nominal, strict=True))


def test_a_retry_budget_caps_retries_at_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, tokens=0.0)
    retries = 0
    for _ in range(1000):  # a failing dependency: every request wants a retry, all at one instant
        budget = deposit(budget, 0.0)
        budget, ok = withdraw(budget, 0.0)
        retries += ok
    assert 95 <= retries <= 100
    quiet = RetryBudget(ratio=0.1, min_per_s=10.0, tokens=0.0)
    quiet, ok = withdraw(quiet, 1.0)  # a quiet client still gets min_per_s
    assert ok


@pytest.mark.parametrize(("utilisation", "served"), [
    (0.5, {"P0", "P1", "P2", "P3"}),
    (0.92, {"P0", "P1", "P2"}),
    (0.97, {"P0", "P1"}),
    (1.5, {"P0"}),
])
def test_shedding_starts_from_p3_and_never_reaches_p0(utilisation: float, served: set[str]) -> None:
    assert {p for p in ("P0", "P1", "P2", "P3") if admit(p, utilisation)} == served


def test_a_rate_window_follows_the_last_second() -> None:
    w = RateWindow()
    for i in range(50):
        w = count(w, 10.0 + i * 0.01)  # 50 requests in half a second
    assert rate(w, 10.5) == pytest.approx(50)
    assert rate(w, 10.95) == pytest.approx(50)  # still within the second
    assert rate(w, 11.25) == pytest.approx(20)  # the slots before 10.3 s have left the window
    assert rate(w, 20.0) == 0
    assert rate(count(w, 20.0), 20.0) == 1


@pytest.mark.parametrize(("priority", "u", "spilled_in", "headroom", "where"), [
    ("P1", 0.5, False, True, "local"),     # below the spill threshold
    ("P1", 0.85, False, True, "spill"),    # above it, with a peer that has headroom
    ("P3", 0.95, False, True, "spill"),    # spilled before it would be shed
    ("P1", 0.85, False, False, "local"),   # nowhere to spill: served while P1 is admitted
    ("P3", 0.95, False, False, "shed"),    # ... and P3 shed from 90 %
    ("P2", 0.96, True, True, "shed"),      # a spilled request is never spilled again
    ("P0", 5.0, False, True, "local"),     # P0 stays and is never shed
    ("P1", 1.0, False, False, "shed"),
])
def test_placement(priority: Priority, u: float, spilled_in: bool, headroom: bool, where: str) -> None:
    assert place(priority, u, 0.8, spilled_in, headroom) == where


def test_the_nearest_fresh_peer_with_headroom_for_the_class_is_chosen_and_silent_pops_counted() -> None:
    peers = [Peer("lax", "lax-s1", "a", 3, (0.1, 0.5, 0.6, 0.85), 9.9),
             Peer("lax", "lax-s2", "b", 3, (0.1, 0.3, 0.6, 0.85), 9.9),
             Peer("sea", "sea-s1", "c", 5, (0.0,) * 4, 9.9), Peer("ord", "ord-s1", "d", 7, (0.0,) * 4, 1.0)]
    assert choose_peer(peers, 10.0, 0.8, 1.0, "P1") == 1  # the less loaded of the two nearest
    assert choose_peer(peers, 10.0, 0.8, 1.0, "P3") == 2  # lax is full for P3 (its P3 traffic counts)
    assert choose_peer(peers, 12.0, 0.8, 1.0, "P1") is None  # nothing heard for 2 s
    assert spilled_to(peers[2], "P2", 0.1).utilisation == (0.0, 0.0, 0.1, 0.1)
    assert pops_down(peers, 10.0, 1.0) == 1  # ord
    assert pops_down(peers, 12.0, 1.0) == 3
