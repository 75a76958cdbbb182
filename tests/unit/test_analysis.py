"""Measurement figures from recorded probes, FIB changes and BGP messages (tables of cases)."""

from __future__ import annotations

from typing import Any

import pytest

from lab.record import analysis
from lab.record.analysis import client_result, first_decision_s, http_result, percentiles, probe_rate, router_results
from lab.record.probes import Probe
from lab.record.recorders import BgpMessage, FibChange, _tcp_payload, decode_bgp

T0 = 100.0
DT = 0.002


def probes(pattern: str, start: float = T0 - 10 * DT) -> list[Probe]:
    """One probe per character every 2 ms: 'a'/'b'/'c' answered by sjc-s1 / sjc-s2 / lax-s1, '.' lost."""
    server = {"a": "sjc-s1", "b": "sjc-s2", "c": "lax-s1"}
    out = []
    for i, ch in enumerate(pattern):
        sent = start + i * DT
        srv = server.get(ch)
        out.append(Probe(i, sent, sent + 0.0005 if srv else None, srv.rsplit("-s", 1)[0] if srv else None, srv))
    return out


@pytest.mark.parametrize(("pattern", "shift_ms", "lost", "to", "flips", "misroutes"), [
    # 10 probes before the fault (index 10 is the first after it)
    ("aaaaaaaaaa" + "aaaacccc", 8.5, 0, "lax-s1", 1, 0),        # graceful: nothing lost
    ("aaaaaaaaaa" + "....cccc", 8.5, 4, "lax-s1", 1, 0),        # 4 probes into the black hole
    ("aaaaaaaaaa" + "..bbbb", 4.5, 2, "sjc-s2", 1, 0),          # to the sibling server
    ("aaaaaaaaaa" + "aaaa", None, 0, None, 0, 0),               # not affected
    ("aaaaaaaaaa" + "..b..cc", 4.5, 4, "sjc-s2", 2, 0),         # via the sibling, then away
    ("aaaaaaaaaa" + "..caacc", 4.5, 2, "lax-s1", 3, 0),         # flapping
])
def test_client_result(pattern: str, shift_ms: float | None, lost: int, to: str | None, flips: int,
                       misroutes: int) -> None:
    r = client_result(probes(pattern), T0, DT)
    assert r.from_server == "sjc-s1" and r.to_server == to
    assert (r.lost, r.flips, r.misroutes) == (lost, flips, misroutes)
    if shift_ms is None:
        assert r.shift_s is None and r.gap_s is None
    else:
        assert r.shift_s == pytest.approx(shift_ms / 1000, abs=1e-6)
        assert r.crosscheck is None  # gap = (lost + 1) intervals


def test_misroute_is_an_answer_from_a_third_pop() -> None:
    p = probes("aaaaaaaaaa" + "..c" + "aa")  # answered by lax once, then back to sjc
    p.append(Probe(99, T0 + 0.1, T0 + 0.1005, "iad", "iad-s1"))
    p.append(Probe(100, T0 + 0.102, T0 + 0.1025, "sjc", "sjc-s1"))
    assert client_result(p, T0, DT).misroutes == 2  # lax and iad are neither the old nor the final PoP


def test_crosscheck_reports_a_gap_the_losses_do_not_explain() -> None:
    p = [x for x in probes("aaaaaaaaaa" + "aaaacccc") if not (13 <= x.seq <= 13)]  # a probe never sent
    p = [Probe(x.seq, x.sent + (0.01 if x.seq >= 14 else 0), (x.recv or 0) + (0.01 if x.seq >= 14 else 0),
               x.pop, x.server) for x in p]
    r = client_result(p, T0, DT)
    assert r.crosscheck is not None and "0 probes lost" in r.crosscheck


def test_probe_rate() -> None:
    assert probe_rate(probes("a" * 101), T0 - 1, T0 + 1) == {"rate_hz": 500.0, "interval_s": 0.002,
                                                             "p99_interval_s": 0.002}


@pytest.mark.parametrize(("values", "expected"), [
    ([], {"p50": None, "p90": None, "max": None, "n": 0}),
    ([0.3, None, 0.1, 0.2], {"p50": 0.2, "p90": 0.3, "max": 0.3, "n": 3}),
    ([float(i) for i in range(1, 11)], {"p50": 5.0, "p90": 9.0, "max": 10.0, "n": 10}),
])
def test_percentiles_nearest_rank(values: list[float | None], expected: dict[str, float | None]) -> None:
    assert percentiles(values) == expected


def test_router_results_relay_and_path_exploration() -> None:
    p = "203.0.113.1/32"
    fib = [FibChange(T0 - 1, "r1", p, "add", ()), FibChange(T0 + 0.10, "r1", p, "add", ("10.0.0.3",)),
           FibChange(T0 + 0.15, "r1", p, "add", ("10.0.0.1",))]
    bgp = [BgpMessage(T0 + 0.04, "r2", "r2-eth1", "in", "UPDATE", withdrawn=(p,)),
           BgpMessage(T0 + 0.09, "r2", "r2-eth0", "out", "UPDATE", withdrawn=(p,)),
           BgpMessage(T0 + 0.09, "r1", "r1-eth0", "in", "UPDATE", withdrawn=(p,)),
           BgpMessage(T0 + 0.05, "r3", "r3-eth0", "in", "UPDATE", announced=("10.9.0.0/24",))]
    out = router_results(T0, fib, bgp, {p})
    assert out["r1"]["fib_changes"] == 2 and out["r1"]["first_fib_s"] == 0.1 and out["r1"]["last_fib_s"] == 0.15
    assert out["r2"]["relay_s"] == pytest.approx(0.05) and out["r2"]["updates_in"] == 1
    assert "r3" not in out  # an UPDATE about another prefix


def test_first_decision_ignores_earlier_and_normal_events() -> None:
    events = [{"t": T0 - 1, "announced": "withdrawn"}, {"t": T0 + 0.01, "announced": "normal"},
              {"t": T0 + 0.04, "announced": "demoted"}]
    assert first_decision_s(T0, events) == pytest.approx(0.04)


def test_decode_a_withdrawal_and_an_announcement() -> None:
    withdraw = bytes.fromhex("ff" * 16 + "001c" + "02" + "0005" + "20cb007101" + "0000")
    announce = bytes.fromhex(
        "ff" * 16 + "0034" + "02" + "0000" + "0018"
        + "40010100" + "40020a0202" + "0000fde9" + "0000fc59" + "40030400000000" + "20cb007101")
    assert decode_bgp(withdraw + announce) == [
        ("UPDATE", ("203.0.113.1/32",), (), ()),
        ("UPDATE", (), ("203.0.113.1/32",), (65001, 64601)),
    ]


def test_tcp_payload_of_a_frame() -> None:
    eth = b"\x00" * 12 + b"\x08\x00"
    payload = b"BGP!"
    ip = bytes([0x45, 0]) + (20 + 20 + len(payload)).to_bytes(2, "big") + b"\x00" * 5 + b"\x06" + b"\x00" * 10
    tcp = b"\x00" * 12 + bytes([0x50]) + b"\x00" * 7
    assert _tcp_payload(eth + ip + tcp + payload) == payload
    assert _tcp_payload(eth + ip[:9] + b"\x11" + ip[10:] + tcp + payload) is None  # UDP


def test_updates_towards_the_faulted_server_are_not_detection() -> None:
    p = "203.0.113.1/32"
    bgp = [BgpMessage(T0 + 1.0, "r2", "r2-eth1", "out", "UPDATE", announced=(p,)),  # to the dead server
           BgpMessage(T0 + 2.9, "r2", "r2-eth0", "out", "UPDATE", withdrawn=(p,))]
    from lab.record.analysis import first_update_s

    assert first_update_s(T0, bgp, {p}) == pytest.approx(1.0)
    assert first_update_s(T0, bgp, {p}, frozenset({("r2", "r2-eth1")})) == pytest.approx(2.9)


def test_a_detour_through_a_faulted_sibling_is_not_the_shift() -> None:
    r = client_result(probes("aaaaaaaaaa" + "bbbcc"), T0, DT, frozenset({"sjc-s1", "sjc-s2"}))
    assert (r.to_server, r.flips, r.lost) == ("lax-s1", 2, 0)
    assert r.shift_s == pytest.approx(0.0065) and r.crosscheck is None


def http(pattern: str, mode: str = "ka", conns: str = "") -> list[dict[str, object]]:
    """One request per character every 20 ms from T0 - 0.1 s: 'a'/'c' answered by sjc/lax, 'r' reset,
    't' timeout, '5' a 503; ``conns`` gives each request's connection id (default: all on '1')."""
    out: list[dict[str, object]] = []
    for i, ch in enumerate(pattern):
        t0 = T0 - 0.1 + i * 0.02
        out.append({"m": mode, "c": conns[i] if conns else "1", "t0": t0, "t1": t0 + 0.002,
                    "st": 503 if ch == "5" else (200 if ch in "ac" else 0),
                    "srv": {"a": "sjc/sjc-s1", "c": "lax/lax-s1"}.get(ch, ""),
                    "err": {"r": "reset", "t": "timeout"}.get(ch)})
    return out


@pytest.mark.parametrize(("pattern", "conns", "failed", "broken", "outage", "errors"), [
    ("aaaaaaacccc", "", 0, 0, 0.0, {}),              # moved without a failure
    ("aaaaaaarcccc", "111111112222", 1, 1, 0.06, {"reset": 1}),  # the connection to sjc reset at lax
    ("aaaaaaattccc", "111111112333", 2, 1, 0.08, {"timeout": 2}),
    ("aaaaaaa55ccc", "", 2, 0, 0.08, {"http_503": 2}),  # answered, but errors: not a broken connection
    ("aaaaaaarrr", "1111111123", 3, 1, None, {"reset": 3}),  # never recovered
])
def test_http_result(pattern: str, conns: str, failed: int, broken: int, outage: float | None,
                     errors: dict[str, int]) -> None:
    r = http_result(http(pattern, conns=conns), T0)["ka"]
    assert (r["failed"], r["broken_connections"], r["errors"]) == (failed, broken, errors)
    assert r["outage_s"] == (None if outage is None else pytest.approx(outage, abs=1e-6))
    assert r["servers_before"] == ["sjc/sjc-s1"]
    assert r["latency_ms"]["before"]["n"] == 5


@pytest.mark.parametrize(("times", "window", "peak"), [
    ([], 1.0, 0),
    ([0.0, 0.5, 0.99, 1.0, 1.5], 1.0, 3),   # 0.0–0.99, or 0.5–1.5: three each
    ([0.0, 0.1, 0.2, 5.0], 0.25, 3),
    ([3.0, 1.0, 2.0], 1.0, 1),              # unsorted input
])
def test_peak_rate_is_the_busiest_window(times: list[float], window: float, peak: int) -> None:
    assert analysis.peak_rate(times, window) == peak


def test_global_summary_over_routers_and_runs() -> None:
    def router(last: float | None, changes: int) -> dict[str, Any]:
        return {"last_fib_s": last, "fib_changes": changes}

    runs = [{"routers": {"a": router(0.1, 1), "b": router(0.3, 3), "c": router(None, 0)}, "peak_updates_per_s": 40},
            {"routers": {"a": router(0.2, 2)}, "peak_updates_per_s": 12}]
    summary = analysis.global_summary(runs)
    assert summary["router_convergence_s"] == {"p50": 0.2, "p90": 0.3, "max": 0.3, "n": 3}
    assert (summary["path_changes_max"], summary["routers_changed"], summary["peak_updates_per_s"]) == (3, 2, 40)
