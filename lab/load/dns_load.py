"""DNS load from a client namespace: a user's machine resolving names through its stub
(:mod:`dnsd.stub`, the client's resolvers in order), without the stub's cache — every query reaches a
resolver, so what the resolvers do (their caches, their choice among a zone's name servers, their
retries) is what is measured.

Queries start at ``--rate`` per second (each on its own, so a slow one does not hold the next back; at
most MAX_OUTSTANDING at once), cycling through ``--names``. Each is one JSON line in ``--out``: ``{"t0",
"t1" (CLOCK_MONOTONIC), "name", "ok" (an address came back), "rc" (rcode or null), "srv" (the resolver
that answered, or was asked last), "tries"}``. The process ends by itself at ``--duration`` (or on
SIGTERM).

Run as ``python -m lab.load.dns_load --resolvers A[,B] --names N[,N…] --out FILE [--rate 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from core.clock import monotonic
from core.files import read_jsonl
from core.proc import start_tool, stop_tools
from core.stats import quantile
from core.wait import wait_for
from dnsd.stub import DEADLINE_S, TIMEOUT_S, Stub

MAX_OUTSTANDING = 500


async def run(stub: Stub, names: list[str], rate: float, duration: float, out: IO[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    slots = asyncio.Semaphore(MAX_OUTSTANDING)
    tasks: set[asyncio.Task[None]] = set()

    async def one(name: str) -> None:
        async with slots:
            t0 = monotonic()
            a = await stub.resolve(name)
            out.write(json.dumps({"t0": round(t0, 6), "t1": round(monotonic(), 6), "name": name, "ok": a.ok,
                                  "rc": a.rcode, "srv": a.server, "tries": a.tries}) + "\n")

    end, due, i = monotonic() + duration, monotonic(), 0
    while not stop.is_set() and monotonic() < end:
        task = asyncio.create_task(one(names[i % len(names)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        due += 1.0 / rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - monotonic()))  # the pacing of the load itself
    if tasks:
        await asyncio.wait(tasks, timeout=DEADLINE_S + 1.0)  # the queries under way end within the deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--resolvers", required=True, help="the client's resolvers, in order (A,B)")
    parser.add_argument("--names", required=True, help="names to resolve, in turn (N,N…)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rate", type=float, default=20.0, help="queries per second")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds a resolver has to answer")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, then stop by itself")
    args = parser.parse_args()
    resolvers = [r for r in args.resolvers.split(",") if r]
    names = [n for n in args.names.split(",") if n]
    if not (0 < args.rate <= 2000 and 0 < args.duration <= 3600 and 0 < args.timeout <= 10 and resolvers and names):
        parser.error("rate 0..2000, duration 0..3600 s, timeout 0..10 s, at least one resolver and name")
    with open(args.out, "a", buffering=1) as out:
        asyncio.run(run(Stub(resolvers, args.timeout, cache=False), names, args.rate, args.duration, out))


def summary(records: list[dict[str, Any]], since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
    """Queries started in [since, until): how many, how many failed, latency p50/p99 (ms) of those
    answered, and the resolvers that answered (address → count)."""
    window = [r for r in records if since <= r["t0"] < until]
    ok = [(r["t1"] - r["t0"]) * 1e3 for r in window if r["ok"]]
    servers: dict[str, int] = {}
    for r in window:
        if r["ok"]:
            servers[r["srv"]] = servers.get(r["srv"], 0) + 1
    p50, p99 = quantile(ok, 0.5), quantile(ok, 0.99)
    return {"queries": len(window), "failed": len(window) - len(ok),
            "p50_ms": None if p50 is None else round(p50, 2), "p99_ms": None if p99 is None else round(p99, 2),
            "max_ms": round(max(ok), 2) if ok else None, "answered_by": servers}


def per_second(records: list[dict[str, Any]], origin: float) -> list[dict[str, Any]]:
    """:func:`summary` of each second from ``origin`` (second 0 starts at ``origin``; earlier ones are
    negative), over the seconds the records span."""
    if not records:
        return []
    first = int((min(r["t0"] for r in records) - origin) // 1)
    last = int((max(r["t0"] for r in records) - origin) // 1)
    return [{"s": k, **summary(records, origin + k, origin + k + 1)} for k in range(first, last + 1)]


class DnsLoads:
    """One :mod:`lab.load.dns_load` per client for a bounded time: started in the client's namespace,
    stopped by PID (and by its own ``--duration`` if this process dies)."""

    def __init__(self, run_dir: Path, netns: dict[str, str], resolvers: dict[str, list[str]], names: list[str],
                 rate: float = 20.0) -> None:
        self.run_dir, self.netns, self.resolvers, self.names, self.rate = run_dir, netns, resolvers, names, rate
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, client: str) -> Path:
        return self.run_dir / client / "dns-load.jsonl"

    def start(self, duration: float) -> None:
        for client, resolvers in self.resolvers.items():
            self.path(client).unlink(missing_ok=True)
            argv = [sys.executable, "-m", "lab.load.dns_load", "--resolvers", ",".join(resolvers),
                    "--names", ",".join(self.names), "--out", str(self.path(client)), "--rate", str(self.rate),
                    "--duration", f"{duration:.1f}"]
            self.procs[client] = start_tool(self.run_dir, argv, node=client, name="dns-load", netns=self.netns[client])

    def wait_running(self, timeout: float = 30.0) -> None:
        """Return once every client's load has recorded a query (a Python tool takes seconds to start on a
        loaded box: a fault injected right after :meth:`start` met users not yet asking). Raises
        WaitTimeout naming the clients still silent."""
        def silent() -> list[str]:
            return [c for c in self.procs if not (self.path(c).exists() and self.path(c).stat().st_size)]
        wait_for(lambda: not silent(), timeout=timeout, what="every DNS user's first query",
                 describe=lambda: f"silent: {silent()}")

    def stop(self) -> None:
        """Stop every load (SIGTERM: the queries under way end within the stub's deadline)."""
        stop_tools(list(self.procs.values()), DEADLINE_S + 5.0)

    def records(self, client: str) -> list[dict[str, Any]]:
        return read_jsonl(self.path(client))


if __name__ == "__main__":
    main()
