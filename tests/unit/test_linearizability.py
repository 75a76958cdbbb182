"""The linearizability checker on known-good and known-bad histories (its own test corpus)."""

from __future__ import annotations

from typing import Any

import pytest

from durable.linearizability import check, operations


def h(*events: tuple[Any, ...]) -> list[dict[str, Any]]:
    """(time, process, type, f, value[, key]) tuples → events."""
    return [{"time": e[0], "process": e[1], "type": e[2], "f": e[3], "value": e[4],
             "key": e[5] if len(e) > 5 else "x"} for e in events]


GOOD = {
    "sequential write then read": h((0, 1, "invoke", "write", 1), (1, 1, "ok", "write", 1),
                                    (2, 2, "invoke", "read", None), (3, 2, "ok", "read", 1)),
    "read concurrent with a write sees the old value": h(
        (0, 1, "invoke", "write", 1), (1, 2, "invoke", "read", None), (2, 2, "ok", "read", None),
        (3, 1, "ok", "write", 1)),
    "read concurrent with a write sees the new value": h(
        (0, 1, "invoke", "write", 1), (1, 2, "invoke", "read", None), (2, 2, "ok", "read", 1),
        (3, 1, "ok", "write", 1)),
    "an indeterminate write that did happen": h(
        (0, 1, "invoke", "write", 5), (1, 1, "info", "write", None),
        (2, 2, "invoke", "read", None), (3, 2, "ok", "read", 5)),
    "an indeterminate write that never happened": h(
        (0, 1, "invoke", "write", 5), (1, 1, "info", "write", None),
        (2, 2, "invoke", "read", None), (3, 2, "ok", "read", None)),
    "a failed write is ignored": h((0, 1, "invoke", "write", 9), (1, 1, "fail", "write", None),
                                   (2, 2, "invoke", "read", None), (3, 2, "ok", "read", None)),
    "cas succeeds once, the other is told it failed": h(
        (0, 1, "invoke", "write", 0), (1, 1, "ok", "write", 0),
        (2, 2, "invoke", "cas", [0, 1]), (2, 3, "invoke", "cas", [0, 2]),
        (3, 2, "ok", "cas", True), (4, 3, "ok", "cas", False), (5, 1, "invoke", "read", None),
        (6, 1, "ok", "read", 1)),
    "independent objects": h((0, 1, "invoke", "write", 1, "a"), (1, 1, "ok", "write", 1, "a"),
                             (2, 2, "invoke", "read", None, "b"), (3, 2, "ok", "read", None, "b")),
}

BAD = {
    "stale read after the write completed": (h(
        (0, 1, "invoke", "write", 1), (1, 1, "ok", "write", 1),
        (2, 2, "invoke", "read", None), (3, 2, "ok", "read", None)), 2),
    "two readers see two orders of two writes": (h(
        (0, 1, "invoke", "write", 1), (0, 2, "invoke", "write", 2), (1, 1, "ok", "write", 1),
        (1, 2, "ok", "write", 2),
        (2, 3, "invoke", "read", None), (3, 3, "ok", "read", 1), (4, 3, "invoke", "read", None),
        (5, 3, "ok", "read", 2), (6, 4, "invoke", "read", None), (7, 4, "ok", "read", 1)), 4),
    "both cas succeed (split brain)": (h(
        (0, 1, "invoke", "write", 0), (1, 1, "ok", "write", 0),
        (2, 2, "invoke", "cas", [0, 1]), (2, 3, "invoke", "cas", [0, 2]),
        (3, 2, "ok", "cas", True), (4, 3, "ok", "cas", True)), 3),
    "a read of a value never written": (h((0, 1, "invoke", "read", None), (1, 1, "ok", "read", 7)), 1),
}


@pytest.mark.parametrize("name", GOOD)
def test_known_good_histories_are_linearizable(name: str) -> None:
    assert check(GOOD[name]).linearizable, name


@pytest.mark.parametrize("name", BAD)
def test_known_bad_histories_are_caught_with_a_small_counterexample(name: str) -> None:
    history, size = BAD[name]
    v = check(history)
    assert not v.linearizable and len(v.counterexample) == size, v.explain()
    assert "NOT linearizable" in v.explain()


def test_counter_increments() -> None:
    good = h((0, 1, "invoke", "incr", 1), (0, 2, "invoke", "incr", 1), (1, 2, "ok", "incr", 1),
             (2, 1, "ok", "incr", 2), (3, 3, "invoke", "read", None), (4, 3, "ok", "read", 2))
    lost = h((0, 1, "invoke", "incr", 1), (1, 1, "ok", "incr", 1), (2, 2, "invoke", "incr", 1),
             (3, 2, "ok", "incr", 2), (4, 3, "invoke", "read", None), (5, 3, "ok", "read", 1))
    assert check(good, "counter").linearizable
    assert not check(lost, "counter").linearizable


def test_a_longer_concurrent_history_checks_quickly() -> None:
    """Ten processes, 200 operations on 5 registers, each read returning the last write: linearizable."""
    events: list[tuple[Any, ...]] = []
    last: dict[str, Any] = {}
    t = 0.0
    for i in range(200):
        key = f"k{i % 5}"
        if i % 3:
            events += [(t, i % 10, "invoke", "write", i, key), (t + 0.5, i % 10, "ok", "write", i, key)]
            last[key] = i
        else:
            events += [(t, i % 10, "invoke", "read", None, key), (t + 0.5, i % 10, "ok", "read", last.get(key), key)]
        t += 1.0
    v = check(h(*events))
    assert v.linearizable and v.operations == 200 and v.objects == 5


def test_a_completion_without_an_invoke_is_refused() -> None:
    with pytest.raises(ValueError, match="without an invoke"):
        operations(h((0, 1, "ok", "read", 1)))


def test_counter_search_agrees_with_the_general_one_and_scales_with_timeouts() -> None:
    import random

    from durable.linearizability import Op, counter, counter_linearizable, linearizable

    rng = random.Random(3)
    for _ in range(300):  # small random counter histories, some with impossible reads
        ops, t = [], 0.0
        for i in range(rng.randint(1, 7)):
            inv = t + rng.random()
            t = inv
            comp = inv + rng.random() * 2
            f = rng.choice(["incr", "incr", "read"])
            definite = rng.random() > 0.3 or f == "read"
            result = rng.randint(0, 4) if definite else None
            ops.append(Op(i, i, f, "c", 1 if f == "incr" else None, result, inv,
                          comp if definite else float("inf"), definite))
        assert counter_linearizable(ops) == linearizable(ops, counter)
    # 40 increments that timed out, then reads that saw some of them: instant, where one bit each was not
    many = [Op(i, i, "incr", "c", 1, None, float(i), float("inf"), False) for i in range(40)]
    many += [Op(100 + j, 100 + j, "read", "c", None, 10 + j, 50.0 + j, 50.5 + j, True) for j in range(20)]
    assert counter_linearizable(many) is True
    many.append(Op(200, 200, "read", "c", None, 5, 80.0, 80.5, True))  # the count went back down
    assert counter_linearizable(many) is False


def test_a_second_invoke_on_a_busy_process_is_refused_not_rewritten() -> None:
    """Issue 20: a process runs one operation at a time; a history with a second invoke before the first
    completed is malformed (replacing the first dropped an operation that may have happened)."""
    with pytest.raises(ValueError, match="has not completed"):
        operations(h((0, 1, "invoke", "write", 1), (1, 1, "invoke", "write", 2), (2, 1, "ok", "write", 2)))


def test_acked_lost_counts_from_the_largest_acknowledged_total() -> None:
    """Issue 20: an increment that ended ``info`` but took effect made up for a lost acknowledged one when
    ``ok`` increments were counted against the final value; the largest acknowledged total does not."""
    from lab.load.do_nemesis import acked_lost

    counters = [{"key": "c1", "f": "incr", "type": t, "value": v, "version": v}
                for t, v in (("invoke", 1), ("ok", 1), ("invoke", 1), ("info", None), ("invoke", 1), ("ok", 3))]
    assert acked_lost(counters, {"c1": 2}) == 1  # the acknowledged third increment is gone
    assert acked_lost(counters, {"c1": 3}) == 0
    oks = sum(1 for e in counters if e["type"] == "ok")
    assert max(0, oks - 2) == 0  # the old count: two ok increments, final 2, nothing seen lost


def test_acked_lost_counts_a_loss_the_object_climbed_past_again() -> None:
    """A failover lost the acknowledged versions 11 and 12 (the new owner had 10) and the object climbed
    past them: the largest version alone saw nothing lost; the versions acknowledged twice show both. The
    same for a register's writes and successful cas (a failed cas changed nothing, whatever it says)."""
    from lab.load.do_nemesis import acked_lost

    def ok(f: str, value: object, version: int) -> dict[str, object]:
        return {"key": "k", "f": f, "type": "ok", "value": value, "version": version}

    counters = [ok("incr", v, v) for v in (*range(1, 13), 11, 12, 13)]
    assert acked_lost(counters, {"k": 13}) == 2
    assert acked_lost(counters, {"k": 12}) == 3  # and one more, gone at the end
    assert acked_lost([ok("incr", v, v) for v in range(1, 6)], {"k": 5}) == 0
    register = [ok("write", 3, 1), ok("cas", True, 2), ok("read", 4, 2), ok("cas", False, 2), ok("write", 1, 2)]
    assert acked_lost(register, {"k": 2}) == 1  # version 2 acknowledged twice: the cas was lost
    assert acked_lost(register[:4], {"k": 2}) == 0
