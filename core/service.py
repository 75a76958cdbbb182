"""Running an aiohttp service of the lab: on its address in the lab network and on a Unix socket for
the operator, with background tasks, until cancelled or signalled; and the ``--config FILE`` entry point
the lab's launchers start it with. Used by the KV masters and replicas, the DO hosts and directory, and
the lab's origin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web


async def run_service(app: web.Application, cfg: dict[str, Any], background: list[Coroutine[Any, Any, None]],
              before_stop: Callable[[], Awaitable[None]], handle_signals: bool) -> None:
    """Serve ``app`` on ``cfg["listen"]`` and ``cfg["socket"]`` with ``background`` tasks until cancelled
    (or SIGTERM/SIGINT with ``handle_signals``); then ``before_stop`` and a short shutdown."""
    runner = web.AppRunner(app, access_log=None, handle_signals=handle_signals, shutdown_timeout=1.0)
    await runner.setup()
    addr, port = cfg["listen"]
    await web.TCPSite(runner, addr, int(port), reuse_address=True).start()
    Path(cfg["socket"]).unlink(missing_ok=True)
    await web.UnixSite(runner, cfg["socket"]).start()
    tasks = [asyncio.create_task(c) for c in background]
    try:
        await asyncio.Event().wait()
    finally:
        for t in tasks:
            t.cancel()
        await before_stop()
        await runner.cleanup()


def service_main(serve: Callable[[dict[str, Any]], Coroutine[Any, Any, None]], doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, web.GracefulExit):
        asyncio.run(serve(json.loads(args.config.read_text())))
