"""An origin server for the lab: what deployed workers call as a subrequest (``env.fetch("http://origin/…")``),
with failure modes the faults switch on over its Unix socket (never over the lab network):

``normal`` — answers at once; ``slow`` — answers after ``delay_s``; ``errors`` — answers 500 to a share
``error_rate`` of requests (every one at 1.0). (``origin-down`` kills the process instead.)

``GET /*`` → 200 ``{"origin": NAME, "path": …, "n": request count}``; ``POST /admin/mode`` ``{mode,
delay_s?, error_rate?}`` and ``GET /admin/status`` on the socket only.

Run as ``python -m lab.run.origin --config FILE`` (``{name, listen: [address, port], socket}``).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiohttp import web

from core.service import service_main

MODES = ("normal", "slow", "errors")


class Origin:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode, self.delay_s, self.error_rate = "normal", 2.0, 1.0
        self.served = 0
        self.failed = 0
        self.rng = random.Random(0)

    def set_mode(self, data: dict[str, Any]) -> dict[str, Any]:
        """Raises ValueError for an unknown mode or a value out of range."""
        mode = str(data.get("mode", ""))
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        delay, rate = float(data.get("delay_s", 2.0)), float(data.get("error_rate", 1.0))
        if not (0 <= delay <= 60 and 0 <= rate <= 1):
            raise ValueError("delay_s 0..60, error_rate 0..1")
        self.mode, self.delay_s, self.error_rate = mode, delay, rate
        return self.status()

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "delay_s": self.delay_s, "error_rate": self.error_rate,
                "served": self.served, "failed": self.failed}

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)  # the injected slowness itself
        if self.mode == "errors" and self.rng.random() < self.error_rate:
            self.failed += 1
            return web.json_response({"origin": self.name, "error": "injected"}, status=500)
        self.served += 1
        return web.json_response({"origin": self.name, "path": request.path, "n": self.served})


def make_apps(origin: Origin) -> tuple[web.Application, web.Application]:
    """The public app (lab network) and the admin app (Unix socket)."""
    public = web.Application()
    public.router.add_route("*", "/{tail:.*}", origin.handle)

    async def mode(request: web.Request) -> web.Response:
        try:
            return web.json_response(origin.set_mode(await request.json()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(origin.status())

    admin = web.Application()
    admin.router.add_post("/admin/mode", mode)
    admin.router.add_get("/admin/status", status)
    return public, admin


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    public, admin = make_apps(Origin(str(cfg["name"])))
    runner = web.AppRunner(public, access_log=None, handle_signals=handle_signals, shutdown_timeout=1.0)
    admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
    await runner.setup()
    await admin_runner.setup()
    address, port = cfg["listen"]
    await web.TCPSite(runner, address, int(port), reuse_address=True).start()
    await web.UnixSite(admin_runner, cfg["socket"]).start()
    try:
        await asyncio.Event().wait()
    finally:
        await admin_runner.cleanup()
        await runner.cleanup()


if __name__ == "__main__":
    service_main(serve, __doc__ or "")
