"""A bounded load on a region's control plane API over the lab network, as an operator's CI fleet would put
on it: ``--concurrency`` callers in a closed loop, each uploading a worker of ``--code-kb`` kB of code (the
API checks and compiles every upload; the same upload again is the same version, so nothing grows) with
the admin token, for ``--duration`` seconds. Every call is one JSON line in ``--out``: ``{"t0", "t1"
(CLOCK_MONOTONIC), "st": HTTP status or 0, "err": null or an error kind}``. The process ends by itself at
``--duration`` (or on SIGTERM).

Run as ``python -m lab.load.api_load --target A:P --token-file F --out FILE --concurrency 8 --duration 20``
in a namespace that reaches the control plane (the lab runs it on the control node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import IO

from core.clock import monotonic
from core.http_client import http_request

MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 64


def code_of(kb: int) -> str:
    """A valid worker of about ``kb`` kB: its fetch and many small functions the API must compile."""
    body = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(kb * 1024 // 40))
    return body + "async def fetch(request, env, ctx):\n    return 'ok'\n"


async def caller(target: tuple[str, int], token: str, body: bytes, end: float, out: IO[str],
                 stop: asyncio.Event) -> None:
    host, port = target
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while monotonic() < end and not stop.is_set():
        t0 = monotonic()
        status, err = 0, None
        try:
            status, _h, _b = await http_request(host, port, "POST", "/v1/workers/apiload", body, headers,
                                                connect_s=2.0, answer_s=30.0)
        except (OSError, TimeoutError, EOFError) as exc:
            err = type(exc).__name__
        out.write(json.dumps({"t0": round(t0, 6), "t1": round(monotonic(), 6), "st": status, "err": err}) + "\n")


async def run(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    token = Path(args.token_file).read_text().strip()
    body = json.dumps({"code": code_of(args.code_kb), "host": "apiload.example"}).encode()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    end = monotonic() + args.duration
    with open(args.out, "w", buffering=1) as out:
        await asyncio.gather(*(caller((host, int(port)), token, body, end, out, stop)
                               for _ in range(args.concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="the control plane's ADDRESS:PORT on the lab network")
    parser.add_argument("--token-file", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--code-kb", type=int, default=200)
    args = parser.parse_args()
    if not (1 <= args.concurrency <= MAX_CONCURRENCY and 0 < args.duration <= MAX_DURATION_S
            and 1 <= args.code_kb <= 9000):
        parser.error(f"--concurrency 1..{MAX_CONCURRENCY}, --duration up to {MAX_DURATION_S:g} s, --code-kb 1..9000")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
