"""The asyncio breaker: fail fast when open, exactly one probe when half-open however many callers."""

from __future__ import annotations

import asyncio

import pytest

from protect.breaker import Config
from protect.guard import Breaker, BreakerOpen


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def boom() -> None:
    raise ConnectionError("origin down")


def test_opens_after_the_threshold_and_fails_fast() -> None:
    clock = Clock()
    b = Breaker("origin", Config(failure_threshold=5, success_threshold=3, open_s=30), clock)
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await boom()

    async def main() -> None:
        for _ in range(5):
            with pytest.raises(ConnectionError):
                await b.call(counted)
        with pytest.raises(BreakerOpen) as refused:
            await b.call(counted)
        assert refused.value.retry_after == pytest.approx(30)

    asyncio.run(main())
    assert calls == 5 and b.state.mode == "open"


def test_half_open_lets_exactly_one_probe_through_under_concurrency() -> None:
    clock = Clock()
    b = Breaker("origin", Config(failure_threshold=1, success_threshold=2, open_s=10), clock)
    in_flight, most = 0, 0
    gate = asyncio.Event()

    async def slow_ok() -> str:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await gate.wait()
        in_flight -= 1
        return "ok"

    async def main() -> list[object]:
        with pytest.raises(ConnectionError):
            await b.call(boom)
        clock.t = 10.0
        tasks = [asyncio.ensure_future(b.call(slow_ok)) for _ in range(20)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert most == 1
    assert sum(r == "ok" for r in results) == 1 and sum(isinstance(r, BreakerOpen) for r in results) == 19
    assert b.state.mode == "half_open"  # one success of the two needed

    async def second() -> str:
        return await b.call(slow_ok)

    assert asyncio.run(second()) == "ok"
    assert str(b.state.mode) == "closed"
    assert [t for _, t in b.transitions] == ["opened", "half_opened", "closed"]


def test_kv_calls_go_through_the_kv_breaker_with_the_designs_read_retries() -> None:
    import socket

    from tenant.worker_api import KvError, KvNamespace

    with socket.socket() as s:  # a port nobody listens on: every try is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kv = KvNamespace("ns", port=port)

    async def main() -> list[str]:
        outcomes = []
        for _ in range(5):
            try:
                await kv.get("k")
            except (KvError, OSError) as exc:
                outcomes.append(type(exc).__name__ + (": open" if "is open" in str(exc) else ""))
        return outcomes

    outcomes = asyncio.run(main())
    # A read is tried 3 times (the design: 2 retries at once); the 10th failure opens the breaker
    # (the design's KV threshold), during the 4th read; the 5th is refused without a try.
    assert outcomes[:3] == ["NotConnected"] * 3 and outcomes[4] == "KvError: open", outcomes
    assert kv.protection.report()["kv"]["mode"] == "open"
