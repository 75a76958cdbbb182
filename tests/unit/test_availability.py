"""Request-based availability, attribution and recovery (lab.record.availability) on made-up records."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lab.record.availability import (
    Request,
    Scope,
    Series,
    Window,
    account,
    error_budget,
    from_probes,
    reach,
    series_of,
    timeline,
    worst_window,
)
from lab.record.probes import Probe

TIMEOUT, GRACE = 1.0, 0.5


def probes_every(client: str, start: float, end: float, step: float, lost: list[tuple[float, float]]) -> list[Request]:
    """A request every ``step`` from ``start`` to ``end``, lost inside the ``lost`` spans."""
    out = []
    n = round((end - start) / step)
    for i in range(n):
        t = round(start + i * step, 6)
        out.append(Request(client, t, not any(a <= t < b for a, b in lost)))
    return out


def test_every_loss_is_charged_to_the_faults_whose_window_holds_it_or_counted_unexplained() -> None:
    a = probes_every("a", 0.0, 100.0, 0.1, [(10.0, 15.0), (50.0, 50.2)])  # 50 + 2 lost
    b = probes_every("b", 0.0, 100.0, 0.1, [(12.0, 13.0)])  # 10 lost
    windows = [Window("pop-down sjc", "pop", 10.0, 14.0), Window("link-down r1:r2", "link", 11.0, 12.5)]
    got = account(series_of(a + b), windows, start=0.0, end=100.0, timeout_s=TIMEOUT, grace_s=GRACE)
    assert got["valid"] == 2 * 991  # sent after 99.0 s, they could not have been answered: not valid
    assert got["good"] == got["valid"] - 62
    assert got["per_client"]["a"]["good"] == 991 - 52 and got["per_client"]["b"]["good"] == 991 - 10
    # The first window holds 10.0–14.5 (14 + grace): a's 10.0–14.5 and b's 12.0–12.9; the second 11.0–13.0:
    # a's 11.0–13.0 and b's 12.0–12.9. A loss both hold is the later fault's (31 of them, overlapped);
    # a's 14.6–14.9 and 50.0–50.1 are in none.
    assert got["lost_by_fault"] == {"pop-down sjc": 46 - 21, "link-down r1:r2": 21 + 10}
    assert got["overlapped"] == 21 + 10
    assert got["unexplained"] == 4 + 2 and got["unexplained_at"][0] == ("a", 14.6)
    lo, hi = got["ci99"]
    assert lo < got["availability"] < hi
    # A class that cannot explain these requests is never charged: the pop fault takes them all.
    only_pop = account(series_of(a + b), windows, 0.0, 100.0, TIMEOUT, GRACE, explains={"pop"})
    assert only_pop["lost_by_fault"] == {"pop-down sjc": 46 + 10, "link-down r1:r2": 0}
    # A repair whose routing settled later (its sessions back at 14.5): the grace runs from then, and a's
    # 14.6–14.9 are the fault's too.
    settled = [replace(windows[0], t_settled=14.5), windows[1]]
    later = account(series_of(a + b), settled, 0.0, 100.0, TIMEOUT, GRACE)
    assert later["unexplained"] == 2 and later["lost_by_fault"]["pop-down sjc"] == 46 - 21 + 4


def test_a_fault_recovers_when_its_last_affected_client_is_served_again() -> None:
    a = probes_every("a", 0.0, 30.0, 0.1, [(10.0, 15.0)])
    b = probes_every("b", 0.0, 30.0, 0.1, [(10.0, 12.0)])
    c = probes_every("c", 0.0, 30.0, 0.1, [])
    windows = [Window("w", "pop", 10.0, 14.0), Window("quiet", "link", 20.0, 21.0)]
    got = account(series_of(a + b + c), windows, 0.0, 30.0, TIMEOUT, GRACE)["recovery"]
    assert got["w"]["affected"] == {"a": 5.0, "b": 2.0} and got["w"]["recover_s"] == 5.0
    assert got["w"]["lost_at_repair"] == 6  # a's 14.0–14.5: charged to the fault, after its repair
    assert got["quiet"] == {"cls": "link", "affected": {}, "lost_at_repair": 0, "recover_s": 0.0}
    never = account(series_of(probes_every("a", 0.0, 30.0, 0.1, [(10.0, 30.0)])), windows[:1], 0.0, 30.0,
                    TIMEOUT, GRACE)
    assert never["recovery"]["w"]["recover_s"] is None
    # Losses a fault is not charged for do not make it affect anyone: a class that cannot explain them.
    other = account(series_of(a + b), windows, 0.0, 30.0, TIMEOUT, GRACE, explains={"link"})
    assert other["recovery"]["w"]["affected"] == {} and other["unexplained"] == 50 + 20


def test_probes_become_requests_good_only_when_answered_in_time() -> None:
    probes = [Probe(1, 0.0, 0.01, "sjc", "sjc-s1"), Probe(2, 0.1, None, None, None), Probe(3, 0.2, 1.5, "lax", "x")]
    assert [r.good for r in from_probes("c", probes, TIMEOUT)] == [True, False, False]


def test_the_error_budget_at_four_nines() -> None:
    assert error_budget(1_000_000, 999_950, 0.9999) == pytest.approx(
        {"target": 0.9999, "allowed_bad": 100.0, "bad": 50, "burned": 0.5})


def test_series_count_what_was_sent_in_a_span_whatever_order_the_records_came_in() -> None:
    s = Series()
    for t, good in [(3.0, True), (1.0, True), (2.0, False), (5.0, True), (4.0, False)]:
        s.add(t, good, latency=t / 100)
    s.sort()
    assert list(s.goods) == [1.0, 3.0, 5.0] and list(s.latency) == pytest.approx([0.01, 0.03, 0.05])
    assert s.losses == [2.0, 4.0]
    assert s.count(1.0, 4.0) == (4, 2) and s.count(4.5, 9.0) == (1, 1) and s.count(6.0, 9.0) == (0, 0)


def test_the_timeline_and_the_worst_minute() -> None:
    a = series_of(probes_every("a", 0.0, 300.0, 0.5, [(100.0, 110.0)]))
    b = series_of(probes_every("b", 0.0, 300.0, 0.5, [(200.0, 203.0)]))
    rows = timeline({**a, **b}, 0.0, 300.0, 10.0)
    assert len(rows["a"]) == 30 and rows["a"][10] == [100.0, 20, 0, None] and rows["a"][9][1:3] == [20, 20]
    assert rows["b"][20][1:3] == [20, 14]
    worst = worst_window([*a.values(), *b.values()], 0.0, 300.0)
    # The 60-s windows holding all of a's 20 losses: starts 50..100; the first of them.
    assert worst is not None and worst["start_s"] == 50.0 and worst["valid"] == 240 and worst["good"] == 220
    assert worst_window([*a.values()], 0.0, 30.0) is None


def test_who_served_a_client_around_a_fault_is_read_from_the_answers() -> None:
    s = Series()
    for t, pop in [(1.0, "fra"), (2.0, "fra"), (3.0, None), (4.0, "ams"), (5.0, "ams"), (9.0, "fra")]:
        s.add(t, pop is not None, 0.01, pop)
    s.sort()
    assert s.pops == [(1.0, "fra"), (4.0, "ams"), (9.0, "fra")]  # a change point each, losses carry none
    assert s.served(3.0, 6.0) == {"fra", "ams"}  # fra served it when the span began, ams within
    assert s.served(4.5, 6.0) == {"ams"} and s.served(0.0, 0.5) == set()
    assert s.served(6.0, 20.0) == {"ams", "fra"}


@pytest.mark.parametrize(("scope", "client_region", "served", "expected"), [
    (Scope(pops=frozenset({"iad"})), "eu", {"fra"}, False),  # a server in iad: not a Frankfurt client's
    (Scope(pops=frozenset({"fra"})), "eu", {"fra", "ams"}, True),  # its PoP, before or during the fault
    (Scope(pops=frozenset({"fra"})), "na", {"fra"}, True),  # a client of another region served there
    (Scope(regions=frozenset({"na", "eu"})), "eu", {"cdg"}, True),  # a link whose ends' regions hold it
    (Scope(regions=frozenset({"na"})), "apac", {"ord"}, True),  # its PoP in a region whose routing is taken
    (Scope(regions=frozenset({"apac"})), "eu", {"fra"}, False),
    (Scope(regions=frozenset({"apac"})), "eu", set(), False),  # no answer at all: its own region only
    (Scope(), "eu", {"fra"}, True),  # serves everyone (storage, a unicast DNS provider): any client
    (Scope(client_regions=frozenset({"eu"})), "na", {"fra"}, False),  # an EU DNS node: not an NA client's
    (Scope(client_regions=frozenset({"eu"})), "eu", {"ord"}, True),  # an EU client's, wherever served
])
def test_a_fault_reaches_the_clients_it_serves_or_routes(scope: Scope, client_region: str, served: set[str],
                                                          expected: bool) -> None:
    region_of = {"iad": "na", "ord": "na", "fra": "eu", "ams": "eu", "cdg": "eu", "sin": "apac"}
    assert scope.reaches(client_region, served, region_of) is expected


def test_a_loss_far_from_a_fault_is_not_charged_to_it() -> None:
    """A probe lost in Frankfurt while a server in iad is silent: charged to it without scopes (the laxer
    accounting — the check can come out otherwise), unexplained with them."""
    def client(name: str, pop: str, lost: list[tuple[float, float]]) -> Series:
        s = Series()
        for r in probes_every(name, 0.0, 30.0, 0.1, lost):
            s.add(r.sent, r.good, 0.01, pop)
        return s.sort()

    series = {"eu-c1": client("eu-c1", "fra", [(12.0, 12.5)]), "na-c1": client("na-c1", "iad", [(10.0, 11.0)])}
    windows = [Window("server-silent iad-s1", "server", 10.0, 15.0)]
    lax = account(series, windows, 0.0, 30.0, TIMEOUT, GRACE)
    assert lax["unexplained"] == 0 and lax["recovery"]["server-silent iad-s1"]["affected"].keys() == {"eu-c1", "na-c1"}
    reaches = reach({c: [s] for c, s in series.items()}, {windows[0].name: Scope(pops=frozenset({"iad"}))},
                    {"eu-c1": "eu", "na-c1": "na"}, {"iad": "na", "fra": "eu"}, GRACE)
    scoped = account(series, windows, 0.0, 30.0, TIMEOUT, GRACE, reaches=reaches)
    assert scoped["unexplained"] == 5 and {c for c, _t in scoped["unexplained_at"]} == {"eu-c1"}
    assert scoped["recovery"]["server-silent iad-s1"]["affected"].keys() == {"na-c1"}
    assert scoped["lost_by_fault"] == {"server-silent iad-s1": 10}
