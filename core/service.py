"""Running an aiohttp service of the lab: on its address in the lab network and on a Unix socket for
the operator, with background tasks, until cancelled or signalled; the ``--config FILE`` entry point
the lab's launchers start it with; and its peers' signed requests both ways (:mod:`core.peer_auth`).
Used by the KV masters and replicas, the DO hosts and directory, the control plane and the lab's origin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from core.peer_auth import HEADER, PeerAuthError, Signer, Verifier

#: The authenticated caller of a request: ``(role, name)``; ``("operator", "")`` on the Unix socket.
PEER: web.RequestKey[tuple[str, str]] = web.RequestKey("peer", tuple)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


def is_operator(request: web.Request) -> bool:
    """Whether a request came in on the service's Unix socket (the operator's, root only)."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


def refusal(exc: PeerAuthError) -> web.Response:
    """The answer to a request that did not authenticate: 401 (403 for a role the route does not take)."""
    return web.json_response({"error": "unauthenticated", "reason": exc.reason, "detail": str(exc)},
                             status=403 if exc.reason == "not_allowed" else 401)


def peer_middleware(verifier: Verifier, policy: Callable[[str, str], frozenset[str]]) -> Any:
    """A middleware refusing every lab-network request :meth:`core.peer_auth.Verifier.check` does not
    pass; ``policy(method, path)`` names the roles that may call a route (empty: none). The caller is
    put in ``request[PEER]``."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_operator(request):
            request[PEER] = ("operator", "")
        else:
            body = await request.read()  # aiohttp keeps it: the handler's request.json() reads the same bytes
            try:
                request[PEER] = verifier.check(request.method, request.raw_path, request.headers.get(HEADER), body,
                                               roles=policy(request.method, request.path))
            except PeerAuthError as exc:
                return refusal(exc)
        response: web.StreamResponse = await handler(request)
        return response

    return check


async def signed_bytes(session: aiohttp.ClientSession | None, signer: Signer, method: str, address: str, port: int,
                       target: str, body: bytes = b"", timeout: float = 5.0,
                       content_type: str = "application/json") -> tuple[int, bytes]:
    """One signed request with a body of bytes: status and the answer's bytes. ``target`` is the path with
    its query, already encoded. Raises aiohttp.ClientError, TimeoutError."""
    assert session is not None, "the service's session is made when its loop runs"
    authority = f"{address}:{port}"
    headers = {"Content-Type": content_type, **signer.headers(method, authority, target, body)}
    async with session.request(method, URL(f"http://{authority}{target}", encoded=True), data=body or None,
                               headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        return resp.status, await resp.read()


async def signed_call(session: aiohttp.ClientSession | None, signer: Signer, method: str, address: str, port: int,
                      target: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One signed JSON request: status and decoded answer (None when it is not JSON). ``target`` is the
    path with its query, already encoded. Raises aiohttp.ClientError, TimeoutError."""
    body = b"" if payload is None else json.dumps(payload).encode()
    status, raw = await signed_bytes(session, signer, method, address, port, target, body, timeout)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None
