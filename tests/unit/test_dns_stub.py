"""The users' stub resolver (dnsd.stub) against resolvers on loopback that answer, stay silent or fail;
and the DNS load's summaries (lab.load.dns_load)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import dns.message
import dns.rcode
import dns.rrset

from dnsd.stub import Answer, Stub
from lab.load.dns_load import per_second, summary

Reply = Callable[[dns.message.Message], dns.message.Message | None]


def answer(ttl: int) -> Reply:
    def make(q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A", "203.0.113.1"))
        return r
    return make


def failing(code: dns.rcode.Rcode) -> Reply:
    def make(q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.set_rcode(code)
        return r
    return make


def silent(_q: dns.message.Message) -> None:
    return None


def resolve(resolvers: list[Reply], names: list[str], timeout: float = 0.2) -> tuple[list[Answer], list[int]]:
    """Each name resolved in turn by one stub over resolvers behaving as given; the answers, and how many
    queries each resolver got."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in resolvers]
    asked = [0] * len(resolvers)

    async def main() -> list[Answer]:
        loop = asyncio.get_running_loop()
        for i, (s, reply) in enumerate(zip(socks, resolvers, strict=True)):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)

            def serve(s: socket.socket = s, reply: Reply = reply, i: int = i) -> None:
                data, addr = s.recvfrom(512)
                asked[i] += 1
                r = reply(dns.message.from_wire(data))
                if r is not None:
                    s.sendto(r.to_wire(), addr)
            loop.add_reader(s.fileno(), serve)
        stub = Stub([("127.0.0.1", s.getsockname()[1]) for s in socks], timeout=timeout, deadline=3 * timeout)
        return [await stub.resolve(n) for n in names]

    try:
        return asyncio.run(main()), asked
    finally:
        for s in socks:
            s.close()


def test_an_answer_is_cached_for_its_ttl_and_no_longer() -> None:
    (first, again), asked = resolve([answer(60)], ["a.edge.test.", "a.edge.test."])
    assert first.ok and not first.cached and again.cached and again.address == "203.0.113.1" and asked == [1]
    (first, again), asked = resolve([answer(0)], ["a.edge.test.", "a.edge.test."])
    assert not again.cached and asked == [2]  # TTL 0: never cached


def test_a_silent_or_failing_resolver_is_passed_over_for_the_next() -> None:
    (a,), asked = resolve([silent, answer(30)], ["a.edge.test."], timeout=0.2)
    assert a.ok and a.tries == 2 and a.seconds >= 0.2 and asked == [1, 1]
    (a,), asked = resolve([failing(dns.rcode.SERVFAIL), answer(30)], ["a.edge.test."])
    assert a.ok and a.tries == 2 and a.seconds < 0.2 and asked == [1, 1]


def test_nxdomain_is_an_answer_and_silence_everywhere_fails_within_the_deadline() -> None:
    (a,), asked = resolve([failing(dns.rcode.NXDOMAIN), answer(30)], ["a.edge.test."])
    assert not a.ok and a.rcode == "NXDOMAIN" and asked == [1, 0]
    (a,), asked = resolve([silent, silent], ["a.edge.test."], timeout=0.1)
    assert not a.ok and a.rcode is None and 0.3 <= a.seconds < 0.5 and asked == [2, 1]


def test_the_load_summary_counts_failures_and_percentiles_per_second() -> None:
    recs = [{"t0": 10.0 + i / 10, "t1": 10.0 + i / 10 + (0.002 if i % 10 else 0.5), "ok": i != 13, "srv": "r1",
             "name": "a", "rc": "NOERROR", "tries": 1} for i in range(30)]
    s = summary(recs, 11.0, 12.0)
    assert s["queries"] == 10 and s["failed"] == 1 and s["p50_ms"] == 2.0 and s["max_ms"] == 500.0
    assert s["answered_by"] == {"r1": 9}
    seconds = per_second(recs, origin=11.0)
    assert [x["s"] for x in seconds] == [-1, 0, 1] and [x["failed"] for x in seconds] == [0, 1, 0]
