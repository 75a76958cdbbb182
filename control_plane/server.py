"""The control plane's HTTP API (aiohttp), on the lab network for the PoPs and on a Unix socket in the
lab's run directory for the operator (the lab is never bridged to the root namespace).

The operator's requests carry ``Authorization: Bearer <admin token>``, which may do everything. What a PoP
server (``/v1/sync``, ``/v1/artifacts``) or a DO host (``/v1/artifacts``) asks is signed by it instead
(:mod:`core.peer_auth`: its own key, no replay); ``/v1/sync`` only for the server that signed. No or a
wrong credential → 401 (counted: ``GET /v1/status``), a peer on an admin call → 403, a malformed request →
400 with the reason, as JSON ``{"error": …}``.

==========================================  =====================================================
``POST /v1/workers/{name}``                 upload ``{code, host, path_prefix?, bindings?, limits?,
                                            min_isolates?, max_isolates?, idle_s?}`` → version
``GET  /v1/workers/{name}``                 its versions and placement
``POST /v1/deployments/{name}``             ``{version, pops?, regions?}`` (neither: every PoP)
``POST /v1/deployments/{name}/rollback``    back to the placement before
``GET  /v1/deployments``                    placements, and what every PoP server reports running
``POST /v1/sync`` (pop)                     a PoP server reports ``{server, pop, applied, t_applied,
                                            error, generation}`` and waits (≤ ``wait`` s) for a
                                            generation newer than its own → ``{generation,
                                            deployments: [{name, version, sha256}]}``
``GET  /v1/artifacts/{version}`` (pop)      the artifact's bytes (the PoP checks the SHA-256)
==========================================  =====================================================

Times are CLOCK_MONOTONIC, the clock every namespace of the lab shares; a deploy's reply carries
``t`` so that propagation is ``t_applied - t`` per server.

Run as ``python -m control_plane.server --config FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from control_plane.store import ApiError, BadRequest, Forbidden, Pop, Store
from core import peer_auth
from core.clock import monotonic
from core.peer_auth import PeerAuthError, Verifier
from core.service import PEER, refusal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 32 * 1024 * 1024  # above the 10 MB code limit, so an oversized worker gets our reason, not a 413
STORE: web.AppKey[Store] = web.AppKey("store", Store)
TOKENS: web.AppKey[dict[str, str]] = web.AppKey("tokens", dict)
VERIFIER: web.AppKey[Verifier] = web.AppKey("verifier", Verifier)
SERVERS: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("servers", dict)
CHANGED: web.AppKey[asyncio.Condition] = web.AppKey("changed", asyncio.Condition)
POP_PATHS = ("/v1/sync", "/v1/artifacts/")
#: Who may call which of them (signed): the PoP servers both, the DO hosts fetch code.
PEER_POLICY = peer_auth.prefix_policy({"POST /v1/sync": ("pop",), "GET /v1/artifacts/": ("pop", "do-host")})



def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Credentials first (401/403), then the handler; ApiError becomes its status with the reason."""
    if peer_auth.HEADER in request.headers:
        try:
            request[PEER] = request.app[VERIFIER].check(
                request.method, request.raw_path, request.headers.get(peer_auth.HEADER), await request.read(),
                roles=PEER_POLICY(request.method, request.path))
        except PeerAuthError as exc:
            return refusal(exc)
    else:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not (given and hmac.compare_digest(given, request.app[TOKENS]["admin"])):
            request.app[VERIFIER].refused["bad_token"] += 1
            return error(401, "missing or wrong token (Authorization: Bearer …)")
        request[PEER] = ("admin", "")
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, str(exc))


async def body_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


async def changed(app: web.Application) -> None:
    async with app[CHANGED]:
        app[CHANGED].notify_all()


async def upload(request: web.Request) -> web.Response:
    result = request.app[STORE].upload(request.match_info["name"], await body_json(request))
    return web.json_response(result, status=201 if result["new"] else 200)


async def worker(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    listing = request.app[STORE].listing()
    if name not in listing["workers"] and name not in listing["uploaded"]:
        return error(404, f"no worker {name!r}")
    info = listing["workers"].get(name) or {"placement": {}, "deploys": 0}
    versions = sorted(v for v, (n, _s) in request.app[STORE].versions.items() if n == name)
    return web.json_response({"name": name, **info, "versions": versions})


async def deploy(request: web.Request) -> web.Response:
    store, body = request.app[STORE], await body_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise BadRequest("give {\"version\": \"…\"} and optionally \"pops\" or \"regions\" (lists)")
    pops, regions = body.get("pops") or [], body.get("regions") or []
    if not isinstance(pops, list) or not isinstance(regions, list):
        raise BadRequest("'pops' and 'regions' must be lists of names")
    t = monotonic()
    result = store.deploy(request.match_info["name"], body["version"], store.targets(pops, regions))
    await changed(request.app)
    return web.json_response({**result, "t": t, "servers": servers_of(store, result["placement"])})


async def rollback(request: web.Request) -> web.Response:
    store = request.app[STORE]
    t = monotonic()
    result = store.rollback(request.match_info["name"])
    await changed(request.app)
    return web.json_response({**result, "t": t, "servers": servers_of(store, result["placement"])})


def servers_of(store: Store, placement: dict[str, str]) -> dict[str, str]:
    """Server → the version it should run, for the PoPs in ``placement``."""
    return {s: v for pop, v in placement.items() for s in store.pops[pop].servers}


async def deployments(request: web.Request) -> web.Response:
    store = request.app[STORE]
    t = monotonic()
    servers = {name: {**info, "seen_s_ago": round(t - info["t_seen"], 3)}
               for name, info in sorted(request.app[SERVERS].items())}
    return web.json_response({**store.listing(), "servers": servers, "t": t,
                              "pops": {p.name: {"region": p.region, "servers": list(p.servers)}
                                       for p in store.pops.values()}})


async def sync(request: web.Request) -> web.Response:
    store, body = request.app[STORE], await body_json(request)
    if not isinstance(body, dict) or body.get("pop") not in store.pops:
        raise BadRequest(f"give the server's 'pop' (one of {', '.join(sorted(store.pops))}) and 'server'")
    server = str(body.get("server"))
    role, name = request[PEER]
    if role == "pop" and name != server:
        raise Forbidden(f"server {name} may report only for itself, not for {server!r}")
    request.app[SERVERS][server] = {"pop": body["pop"], "applied": body.get("applied", {}),
                                    "t_applied": body.get("t_applied"), "error": body.get("error"),
                                    "t_seen": monotonic()}
    wait = min(max(float(body.get("wait", 0)), 0.0), 60.0)
    since = int(body.get("generation", -1))
    cond = request.app[CHANGED]
    async with cond:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cond.wait_for(lambda: store.generation != since), wait)
    return web.json_response({"generation": store.generation, "deployments": store.desired(body["pop"])})


async def pop_servers(request: web.Request) -> web.Response:
    """``POST /v1/pops/{pop}/servers {"servers": [...]}``: the PoP's servers in service now (scaling);
    deploys wait for exactly these."""
    store, body = request.app[STORE], await body_json(request)
    pop = request.match_info["pop"]
    if pop not in store.pops:
        raise BadRequest(f"unknown PoP {pop!r}; there are: {', '.join(sorted(store.pops))}")
    servers = body.get("servers") if isinstance(body, dict) else None
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) and s for s in servers):
        raise BadRequest("give 'servers': the names of the PoP's servers in service (at least one)")
    store.pops[pop] = replace(store.pops[pop], servers=tuple(servers))
    return web.json_response({"pop": pop, "servers": servers})


async def status(request: web.Request) -> web.Response:
    """``GET /v1/status`` (admin): the credentials refused, by reason."""
    return web.json_response({"auth_refused": request.app[VERIFIER].refused})


async def artifact(request: web.Request) -> web.Response:
    data = request.app[STORE].artifact(request.match_info["version"])
    return web.Response(body=data, content_type="application/json")


def make_app(store: Store, tokens: dict[str, str], verifier: Verifier) -> web.Application:
    """The API over ``store``; ``tokens["admin"]`` is the operator's token, ``verifier`` checks the peers."""
    app = web.Application(middlewares=[auth_and_errors], client_max_size=MAX_BODY)
    app[STORE], app[TOKENS], app[SERVERS], app[CHANGED] = store, tokens, {}, asyncio.Condition()
    app[VERIFIER] = verifier
    verifier.refused.setdefault("bad_token", 0)  # the operator's token, wrong or missing
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/workers/{name}", upload)
    app.router.add_get("/v1/workers/{name}", worker)
    app.router.add_post("/v1/deployments/{name}", deploy)
    app.router.add_post("/v1/deployments/{name}/rollback", rollback)
    app.router.add_get("/v1/deployments", deployments)
    app.router.add_post("/v1/sync", sync)
    app.router.add_get("/v1/artifacts/{version}", artifact)
    app.router.add_post("/v1/pops/{pop}/servers", pop_servers)
    return app


def load_config(path: Path) -> tuple[Store, dict[str, str], Verifier, dict[str, Any]]:
    """Read the config the lab renders: ``{state_dir, listen: [addr, port], socket, tokens: {admin: file},
    auth: {accept: {role: file}}, pops: [{name, region, servers}]}``. Raises KeyError/ValueError/OSError on
    a bad one."""
    cfg = json.loads(path.read_text())
    pops = [Pop(p["name"], p["region"], tuple(p["servers"])) for p in cfg["pops"]]
    tokens = {role: Path(f).read_text().strip() for role, f in cfg["tokens"].items()}
    if not tokens.get("admin"):
        raise ValueError("the admin token file is empty or not given")
    addr, port = cfg["listen"]
    return Store(Path(cfg["state_dir"]), pops), tokens, Verifier.load(cfg["auth"], f"{addr}:{port}"), cfg


async def serve(path: Path) -> None:
    store, tokens, verifier, cfg = load_config(path)
    runner = web.AppRunner(make_app(store, tokens, verifier), access_log=None, handle_signals=True)
    await runner.setup()
    addr, port = cfg["listen"]
    Path(cfg["socket"]).unlink(missing_ok=True)
    await web.TCPSite(runner, addr, int(port), reuse_address=True).start()
    await web.UnixSite(runner, cfg["socket"]).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM/SIGINT (aiohttp turns them into GracefulExit)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, web.GracefulExit):
        asyncio.run(serve(args.config))


if __name__ == "__main__":
    main()
