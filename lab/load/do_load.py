"""Jepsen-style Durable Object clients in a client namespace, for the DO failover runs: every operation
on the anycast address is recorded as ``invoke`` then ``ok``/``fail``/``info`` (see
:mod:`durable.history`), one JSON line each in ``--out``, on CLOCK_MONOTONIC.

``--procs`` logical processes run at once, each one operation at a time at about ``--rate`` per second:
on registers (``r*``: read, write, compare-and-set of small values) and counters (``c*``: increment by 1,
read), through the example worker (``examples/do_register.py``). Object *i* is placed with the location
hint ``hints[i % n]`` so that every region owns some. An answer is:

- 200 → ``ok`` (with the owner and epoch that served it);
- an answer saying ``definite`` (503 from the worker), or 404 (no worker here) → ``fail``;
- anything else — a timeout, a reset, a 5xx that is not definite → ``info``: the process then retires
  and a fresh process id takes over (a process never has two operations open).

``--final`` instead reads every object once (process ``final``) — the end of a run. The process ends by
itself at ``--duration`` (or on SIGTERM).

Run as ``python -m lab.load.do_load --target A --host H --out FILE --client NAME [--procs 2] [--rate 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
from functools import partial
from typing import IO, Any

from core.clock import monotonic
from core.http_client import NotConnected, http_request
from durable.history import Definite, Recorder, Served
from lab.load import MAX_LOAD_S


class Unknown(ConnectionError):
    """An answer that does not say whether the operation happened (recorded as ``info``)."""


def objects(registers: int, counters: int, hints: list[str], run: str = "") -> dict[str, str | None]:
    """Object name → its location hint. Names start with ``r`` (registers) or ``c`` (counters) and end
    with ``run``: a run starts from new objects, whatever earlier runs left."""
    suffix = f"-{run}" if run else ""
    names = [f"r{i}{suffix}" for i in range(registers)] + [f"c{i}{suffix}" for i in range(counters)]
    return {n: (hints[i % len(hints)] if hints else None) for i, n in enumerate(names)}


async def call(target: str, host: str, name: str, hint: str | None, f: str, value: Any, timeout: float,
               port: int = 80) -> Any:
    """One operation on its own connection. Returns Served(result, owner, epoch); raises Definite or
    Unknown/OSError/TimeoutError as the answer says."""
    body = json.dumps({"f": f, "value": value}).encode()
    path = f"/do/{name}" + (f"?hint={hint}" if hint else "")
    try:
        status, _headers, answer = await http_request(target, port, "POST", path, body,
                                                      {"Host": host, "Content-Type": "application/json"},
                                                      timeout, timeout)
    except NotConnected as exc:
        raise Definite(f"no connection: {exc}") from None  # nothing was sent
    try:
        reply = json.loads(answer)
    except ValueError:
        reply = {}
    if status == 200:
        return Served(reply["value"], owner=reply.get("owner"), epoch=reply.get("epoch"), version=reply.get("version"))
    if status == 404 or (isinstance(reply, dict) and reply.get("definite") is True):
        raise Definite(f"HTTP {status}: {reply.get('error') if isinstance(reply, dict) else answer[:80]!r}")
    raise Unknown(f"HTTP {status}: {answer[:120]!r}")


class Clients:
    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args = args
        self.recorder = Recorder(out)
        self.objects = objects(args.registers, args.counters, [h for h in args.hints.split(",") if h], args.run)
        self.stop = asyncio.Event()
        self.deadline = monotonic() + args.duration

    def op(self, rng: random.Random) -> tuple[str, str, Any]:
        name = rng.choice(list(self.objects))
        if name.startswith("c"):
            return (name, "incr", 1) if rng.random() < 0.7 else (name, "read", None)
        f = rng.choice(["read", "write", "cas"])
        if f == "write":
            return name, f, rng.randint(0, 4)
        if f == "cas":
            return name, f, [rng.randint(0, 4), rng.randint(0, 4)]
        return name, f, None

    async def process(self, index: int) -> None:
        rng = random.Random(f"{self.args.seed}-{self.args.client}-{index}")
        generation = 0
        due = monotonic()
        a = self.args
        while not self.stop.is_set() and monotonic() < self.deadline:
            name, f, value = self.op(rng)
            pid = f"{a.client}-{index}.{generation}"
            await self.recorder.run(pid, f, name, value, partial(call, a.target, a.host, name, self.objects[name], f,
                                                                 value, a.timeout), timeout=a.timeout + 0.5)
            if self.recorder.events[-1]["type"] == "info":
                generation += 1  # an operation of unknown outcome stays open forever: retire the process
            self.recorder.events.clear()
            due = max(due + 1.0 / a.rate, monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), due - monotonic())  # the pacing of the load itself

    async def final(self) -> None:
        a = self.args
        for name, hint in self.objects.items():
            await self.recorder.run("final", "read", name, None,
                                    partial(call, a.target, a.host, name, hint, "read", None, a.timeout),
                                    timeout=a.timeout + 0.5)


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    with open(args.out, "a", buffering=1) as out:
        clients = Clients(args, out)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, clients.stop.set)
        if args.final:
            await clients.final()
        else:
            await asyncio.gather(*(clients.process(i) for i in range(args.procs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--client", required=True, help="this client's name (process ids start with it)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=10.0, help="operations/s per process")
    parser.add_argument("--registers", type=int, default=3)
    parser.add_argument("--counters", type=int, default=3)
    parser.add_argument("--hints", default="", help="regions, comma-separated: object i goes to hints[i %% n]")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--run", default="", help="a run id the object names end with (fresh objects per run)")
    parser.add_argument("--timeout", type=float, default=6.0, help="seconds before an operation is unknown")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, then stop by itself")
    parser.add_argument("--final", action="store_true", help="read every object once and stop")
    args = parser.parse_args()
    if not (1 <= args.procs <= 16 and 0 < args.rate <= 200 and 0 < args.duration <= MAX_LOAD_S):
        parser.error(f"procs 1..16, rate 0..200, duration 0..{MAX_LOAD_S:.0f} s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
