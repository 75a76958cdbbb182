"""HTTP load with a priority mix from a client namespace: what overload does to each traffic class.

Each class (P0 … P3) is a worker deployed at its own host name with that priority; ``--mix
P0=0.1,P1=0.4,…`` splits ``--rate`` requests per second between them. Every class is sent open-loop on
keep-alive connections (at most ``PER_CONNECTION_HZ`` each), paced so that a slow answer delays only its
own connection's next request (the pacing never bursts to catch up; what was really sent is what the
records count). Every request is one JSON line in ``--out``: ``{"p": class, "t0", "t1"
(CLOCK_MONOTONIC), "st": HTTP status or 0, "srv": X-Anylab-Server, "by": X-Anylab-Spilled-By (the
PoP server that spilled it, else ""), "err": null or an error kind}``. The process ends by itself at
``--duration`` (or on SIGTERM): a load never outlives its run.

Run as ``python -m lab.load.priority_load --target A --out FILE --rate 200 --mix P0=0.1,P1=0.4,P2=0.3,P3=0.2``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
from typing import IO

import httptools

from core.clock import monotonic
from core.http_client import http_exchange
from lab.load.http_load import error_kind

PER_CONNECTION_HZ = 20.0
CLASS_HOST = "{}.load.example"  # P1 → p1.load.example


def host_of(priority: str) -> str:
    return CLASS_HOST.format(priority.lower())


def parse_mix(text: str) -> dict[str, float]:
    """``P0=0.1,P1=0.4`` → shares per class. Raises ValueError for an unknown class or a negative or
    all-zero share."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        name = name.strip().upper()
        if name not in ("P0", "P1", "P2", "P3"):
            raise ValueError(f"unknown class {name!r} in the mix (P0 … P3)")
        mix[name] = float(share)
        if mix[name] < 0:
            raise ValueError(f"negative share for {name}")
    if sum(mix.values()) <= 0:
        raise ValueError("the mix has no traffic")
    return mix


def connections_for(rate: float) -> int:
    return max(1, math.ceil(rate / PER_CONNECTION_HZ))


class PriorityLoad:
    def __init__(self, target: str, timeout: float, deadline: float, out: IO[str]) -> None:
        self.target, self.timeout, self.deadline, self.out = target, timeout, deadline, out
        self.stop = asyncio.Event()

    def record(self, priority: str, t0: float, status: int, headers: dict[str, str], err: str | None) -> None:
        self.out.write(json.dumps({"p": priority, "t0": round(t0, 6), "t1": round(monotonic(), 6), "st": status,
                                   "srv": headers.get("x-anylab-server", ""),
                                   "by": headers.get("x-anylab-spilled-by", ""), "err": err}) + "\n")

    async def connection(self, priority: str, rate: float, offset: float) -> None:
        request = (f"GET / HTTP/1.1\r\nHost: {host_of(priority)}\r\nUser-Agent: anylab-priority-load\r\n\r\n"
                   .encode())
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        due = monotonic() + offset  # connections of one class start spread over one period
        while not self.stop.is_set() and monotonic() < self.deadline:
            delay = due - monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)  # the pacing of the load itself
                if self.stop.is_set():
                    break
            due = max(due, monotonic()) + 1.0 / rate
            t0 = monotonic()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(self.target, 80), self.timeout)
                status, headers, _body = await asyncio.wait_for(http_exchange(*conn, request), self.timeout)
                self.record(priority, t0, status, headers, None)
                if headers.get("connection", "").lower() == "close":
                    conn[1].close()
                    conn = None
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError, httptools.HttpParserError) as exc:
                self.record(priority, t0, 0, {}, error_kind(exc))
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    mix = parse_mix(args.mix)
    total = sum(mix.values())
    with open(args.out, "a", buffering=1) as out:
        load = PriorityLoad(args.target, args.timeout, monotonic() + args.duration, out)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, load.stop.set)
        tasks = []
        for priority, share in mix.items():
            rate = args.rate * share / total
            if rate <= 0:
                continue
            n = connections_for(rate)
            tasks += [load.connection(priority, rate / n, i / rate) for i in range(n)]
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s, all classes together")
    parser.add_argument("--mix", default="P0=0.1,P1=0.4,P2=0.3,P3=0.2")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds before a request counts as failed")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds, then stop by itself")
    args = parser.parse_args()
    try:
        parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    if not (0 < args.rate <= 5000 and 0 < args.duration <= 600):
        parser.error("rate 0..5000 requests/s, duration 0..600 s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
