"""HTTP load from a client namespace, for ``anylab measure --http``: what users of the anycast address see.

Two kinds of users at once, each paced at ``--rate`` requests per second:

- ``ka`` (keep-alive): ``--connections`` long-lived connections, one request at a time each. A request
  that fails ends its connection (counted as *broken*); the next request opens a new one.
- ``nc`` (new connection): one connection per request, like a client without keep-alive.

By name (``--resolvers``): the users reach the worker as real ones do, by its hostname (``--host``)
through the client's stub resolver (:mod:`dnsd.stub`: its resolvers in order, each answer cached for its
TTL), resolved for every new connection; a resolution that fails fails the request (``err`` ``dns``),
so a DNS outage shows where users feel it.

Every request is one JSON line in ``--out``: ``{"m": "ka"|"nc", "c": connection id, "t0", "t1"
(CLOCK_MONOTONIC), "st": HTTP status or 0, "srv": the X-Anylab-Server answer, "err": null or
"reset"|"timeout"|"refused"|"eof"|"unreachable"|"dns"|"other"}``, and by name ``"dns"``: the seconds the
resolution took (0 from the stub's cache). The process ends by itself at ``--duration`` (or on SIGTERM),
so a load never outlives its measurement.

Run as ``python -m lab.load.http_load --target A --host H --out FILE [--rate 50] [--connections 2]
[--resolvers R1,R2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import signal
from typing import IO

import httptools

from core.clock import monotonic
from core.http_client import http_exchange
from dnsd.stub import Stub
from lab.load import MAX_LOAD_S

MODES = ("ka", "nc")



class ResolutionFailed(OSError):
    """The worker's name did not resolve (no address within the stub's deadline)."""


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, ResolutionFailed):
        return "dns"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, EOFError | asyncio.IncompleteReadError):
        return "eof"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "other"


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, str]:
    """Send one request and read its whole answer: the status and who served it (X-Anylab-Server)."""
    status, headers, _body = await http_exchange(reader, writer, request)
    return status, headers.get("x-anylab-server", "")


class Load:
    def __init__(self, target: str, host: str, rate: float, timeout: float, deadline: float, out: IO[str],
                 stub: Stub | None = None) -> None:
        self.target, self.rate, self.timeout, self.deadline, self.out = target, rate, timeout, deadline, out
        self.host, self.stub = host, stub
        self.request = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: anylab-http-load\r\n\r\n".encode()
        self.stop = asyncio.Event()
        #: The last resolution's seconds (by name), recorded with the request it was made for.
        self.dns_s: float | None = None

    def record(self, mode: str, conn: str, t0: float, status: int, server: str, err: str | None) -> None:
        rec = {"m": mode, "c": conn, "t0": round(t0, 6), "t1": round(monotonic(), 6), "st": status, "srv": server,
               "err": err}
        if self.stub is not None:
            rec["dns"] = None if self.dns_s is None else round(self.dns_s, 6)
        self.out.write(json.dumps(rec) + "\n")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the target, or (by name) to the address the worker's name resolves to now.
        Raises ResolutionFailed, OSError or TimeoutError."""
        target = self.target
        if self.stub is not None:
            answer = await self.stub.resolve(self.host)
            self.dns_s = answer.seconds
            if answer.address is None:
                raise ResolutionFailed(f"{self.host}: {answer.rcode or 'no answer'}")
            target = answer.address
        return await asyncio.wait_for(asyncio.open_connection(target, 80), self.timeout)

    async def pace(self, due: float) -> float:
        """Sleep until ``due`` (or the end); the next slot is one period on, never in the past (no bursts
        to catch up after a slow request)."""
        delay = due - monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)  # the pacing of the load itself
        return max(due, monotonic()) + 1.0 / self.rate

    async def keepalive(self, index: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        opened = 0
        due = monotonic()
        while not self.stop.is_set() and monotonic() < self.deadline:
            t0 = monotonic()
            try:
                if conn is None:
                    opened += 1
                    conn = await self.connect()
                reader, writer = conn
                status, server = await asyncio.wait_for(exchange(reader, writer, self.request), self.timeout)
                self.record("ka", f"{index}-{opened}", t0, status, server, None)
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError, httptools.HttpParserError) as exc:
                self.record("ka", f"{index}-{opened}", t0, 0, "", error_kind(exc))
                if conn is not None:
                    conn[1].close()
                conn = None
            due = await self.pace(due)
        if conn is not None:
            conn[1].close()

    async def new_connections(self) -> None:
        due, n = monotonic(), 0
        while not self.stop.is_set() and monotonic() < self.deadline:
            n += 1
            t0 = monotonic()
            opened: asyncio.StreamWriter | None = None
            try:
                reader, writer = await self.connect()
                opened = writer
                status, server = await asyncio.wait_for(exchange(reader, writer, self.request), self.timeout)
                self.record("nc", f"n-{n}", t0, status, server, None)
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError, httptools.HttpParserError) as exc:
                self.record("nc", f"n-{n}", t0, 0, "", error_kind(exc))
            finally:
                if opened is not None:
                    opened.close()
            due = await self.pace(due)


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    with open(args.out, "a", buffering=1) as out:
        stub = Stub([r for r in args.resolvers.split(",") if r]) if args.resolvers else None
        load = Load(args.target, args.host, args.rate, args.timeout, monotonic() + args.duration, out, stub)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, load.stop.set)
        await asyncio.gather(*(load.keepalive(i) for i in range(args.connections)), load.new_connections())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s per connection and for new connections")
    parser.add_argument("--connections", type=int, default=2, help="keep-alive connections")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a request counts as failed")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, then stop by itself")
    parser.add_argument("--resolvers", default=None, help="resolve --host through these resolvers (R1,R2) for "
                                                          "every new connection instead of using --target")
    args = parser.parse_args()
    if not (0 < args.rate <= 1000 and 1 <= args.connections <= 64 and 0 < args.duration <= MAX_LOAD_S):
        parser.error(f"rate 0..1000, connections 1..64, duration 0..{MAX_LOAD_S:.0f} s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
