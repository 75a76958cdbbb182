"""The control plane's HTTP API (aiohttp) of one region, on the lab network for the PoPs and on a Unix socket
in the node's run directory for the operator (the lab is never bridged to the root namespace). Every
region runs the same API, all writable: the state is in etcd (:mod:`control_plane.shared`), the artifacts
in each region's store, replicated (:mod:`control_plane.artifacts`).

The operator's requests carry ``Authorization: Bearer <admin token>``, which may do everything; a write
may carry ``X-Anylab-Request: <id>`` so that, sent again to another region after a failure, it is answered
once. What a PoP server (``/v1/sync``, ``/v1/artifacts``) or a DO host (``/v1/artifacts``) asks is signed by
it instead (:mod:`core.peer_auth`: its own key, no replay); ``/v1/sync`` only for the server that signed;
the other regions' control planes sign their replication (``/v1/replica/…``, role ``cp``). No or a wrong
credential → 401 (counted: ``GET /v1/status``), a peer on an admin call → 403, a malformed request → 400
with the reason, a region without an etcd quorum → 503, as JSON ``{"error": …}``.

==========================================  =====================================================
``POST /v1/workers/{name}``                 upload ``{code, host, path_prefix?, bindings?, limits?,
                                            min_isolates?, max_isolates?, idle_s?}`` → version, once
                                            two regions hold the artifact
``GET  /v1/workers/{name}``                 its versions, placement and history of placements
``POST /v1/deployments/{name}``             ``{version, pops?, regions?}`` (neither: every PoP)
``POST /v1/deployments/{name}/rollback``    back to the placement before
``GET  /v1/deployments``                    placements, and what the PoP servers syncing with this
                                            region report running
``POST /v1/sync`` (pop)                     a PoP server reports ``{server, pop, applied, t_applied,
                                            error, generation}`` and waits (≤ ``wait`` s) for a
                                            generation newer than its own → ``{generation,
                                            deployments: [{name, version, sha256}]}``
``GET  /v1/artifacts/{version}`` (pop)      the artifact's bytes (the PoP checks the SHA-256)
``PUT|GET /v1/replica/artifacts/{sha}``     another region's copy in or out (cp); the backup
                                            service's copy out, and back in at a restore (backup)
``POST /v1/dns/changes`` (dns)              the DNS hidden primary waits (≤ ``wait`` s) for a generation
                                            newer than its own → ``{generation, workers, pops,
                                            withdrawn}``: what the platform's zone is made of
``POST /v1/dns/regions/{region}``           ``{withdrawn: bool}``: pull a region's PoP names from DNS
``POST /v1/regions/{region}/halt``          ``{halted: bool}``: halt deployments to a region (or lift it)
                                            (the runbook's containment) or put them back
``GET  /v1/status``                         region, quorum, etcd member, artifacts, API latency
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
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from control_plane.artifacts import ArtifactStore, Peer, ReplicaError, Replicas, copies_needed
from control_plane.etcd import Etcd, EtcdError
from control_plane.shared import Shared, Unavailable
from control_plane.store import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    Pop,
    View,
    check_upload,
    key,
    plan_deploy,
    plan_rollback,
)
from core import peer_auth
from core.clock import monotonic
from core.metrics import Metrics, service_metrics
from core.peer_auth import PeerAuthError, Signer, Verifier
from core.service import PEER, refusal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 32 * 1024 * 1024  # above the 10 MB code limit, so an oversized worker gets our reason, not a 413
REQUEST_HEADER = "X-Anylab-Request"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
#: How often each region looks for artifacts it should hold and does not (repair).
REPAIR_PERIOD_S = 0.5
#: The window the API's latency percentiles are taken over (the scaling trigger's, lab-scaled).
LATENCY_WINDOW_S = 10.0
#: Who may call which of them (signed): the PoP servers sync and fetch, the DO hosts fetch code, the other
#: regions' control planes replicate artifacts.
PEER_POLICY = peer_auth.prefix_policy({"POST /v1/sync": ("pop",), "POST /v1/dns/changes": ("dns",),
                                       "GET /v1/artifacts/": ("pop", "do-host"),
                                       "PUT /v1/replica/": ("cp", "backup"),
                                       "GET /v1/replica/": ("cp", "backup")})


class Node:
    """One region's control plane: its config, shared state, artifact store and replicas."""

    def __init__(self, cfg: dict[str, Any], shared: Shared, store: ArtifactStore, replicas: Replicas,
                 tokens: dict[str, str], verifier: Verifier, regions: int) -> None:
        self.cfg, self.shared, self.store, self.replicas = cfg, shared, store, replicas
        self.tokens, self.verifier = tokens, verifier
        self.region = shared.region
        self.regions = regions
        #: server → what it reported in its last sync with this region.
        self.servers: dict[str, dict[str, Any]] = {}
        self.latencies: deque[tuple[float, float]] = deque()
        self.repaired = 0
        self.read_through = 0
        self.last_repair_error: str | None = None

    @property
    def view(self) -> View:
        return self.shared.view

    def latency(self, now: float) -> dict[str, Any]:
        """The API's answer times (long polls excepted) over the last LATENCY_WINDOW_S."""
        while self.latencies and self.latencies[0][0] < now - LATENCY_WINDOW_S:
            self.latencies.popleft()
        values = sorted(d for _t, d in self.latencies)
        if not values:
            return {"count": 0, "p50_ms": None, "p99_ms": None, "window_s": LATENCY_WINDOW_S}

        def pct(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1e3, 2)

        return {"count": len(values), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "window_s": LATENCY_WINDOW_S}

    async def artifact(self, sha: str) -> bytes:
        """The verified bytes of ``sha``: this region's copy, or one fetched from another region (kept).
        Raises NotFound naming why none could be had."""
        data = self.store.get(sha)
        if data is not None:
            return data
        try:
            data, _region = await self.replicas.fetch(sha)
        except ReplicaError as exc:
            raise NotFound(f"artifact {sha[:12]}… is held by no region that answers: {exc}") from None
        self.store.put(sha, data)
        self.read_through += 1
        return data

    async def repair(self) -> None:
        """Fetch every artifact the shared state names and this region lacks; until cancelled."""
        while True:
            await asyncio.sleep(REPAIR_PERIOD_S)
            if not self.shared.loaded:
                continue
            held = self.store.held()
            for version, (_name, sha) in list(self.view.versions.items()):
                if sha in held:
                    continue
                try:
                    data, _region = await self.replicas.fetch(sha)
                    self.store.put(sha, data)
                    self.repaired += 1
                    self.last_repair_error = None
                except (ReplicaError, ValueError) as exc:
                    self.last_repair_error = f"{version}: {exc}"


NODE: web.AppKey[Node] = web.AppKey("node", Node)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Credentials first (401/403), then the handler; ApiError becomes its status with the reason. The
    answer time of every call but a long poll goes into the latency window."""
    node = request.app[NODE]
    if peer_auth.HEADER in request.headers:
        try:
            request[PEER] = node.verifier.check(
                request.method, request.raw_path, request.headers.get(peer_auth.HEADER), await request.read(),
                roles=PEER_POLICY(request.method, request.path))
        except PeerAuthError as exc:
            return refusal(exc)
    else:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not (given and hmac.compare_digest(given, node.tokens["admin"])):
            node.verifier.refused["bad_token"] += 1
            return error(401, "missing or wrong token (Authorization: Bearer …)")
        request[PEER] = ("admin", "")
    t = monotonic()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error(exc.status, str(exc))
    # An answer the region could not give (503: no quorum) says it is unavailable, not slow: replicas
    # would not help, so it is not counted.
    if request.path != "/v1/sync" and response.status < 500:
        node.latencies.append((t, monotonic() - t))
    return response


async def body_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def request_id(request: web.Request) -> str | None:
    rid = request.headers.get(REQUEST_HEADER)
    if rid is not None and not REQUEST_ID_RE.match(rid):
        raise BadRequest(f"{REQUEST_HEADER} must be 8–64 letters, digits, '-' or '_'")
    return rid


def serving(node: Node, write: bool = False) -> None:
    """Raises Unavailable unless this region has its state and an etcd quorum (a write in the weakened
    build goes ahead regardless: that is its flaw)."""
    if not node.shared.serving and not (write and node.shared.weak):
        raise Unavailable(f"the control plane in region {node.region} has no etcd quorum "
                          f"({node.shared.last_error}); use another region")


async def upload(request: web.Request) -> web.Response:
    node = request.app[NODE]
    serving(node)
    rid = request_id(request)
    u = check_upload(node.view, request.match_info["name"], await body_json(request))
    new = u.version not in node.view.versions
    if new:
        # The bytes first, in enough regions, then the version in etcd: a version etcd names is always
        # held by at least copies_needed regions.
        node.store.put(u.sha256, u.data)
        need = copies_needed(node.regions) - 1
        confirmed = await node.replicas.push(u.sha256, u.data, need)
        if len(confirmed) < need:
            raise Unavailable(f"the artifact reached {1 + len(confirmed)} region(s), {need + 1} are needed "
                              "before an upload is acknowledged; try again")

    def change(view: View) -> tuple[list[str], dict[str, bytes], dict[str, Any]]:
        reply = {"name": u.name, "version": u.version, "sha256": u.sha256, "bytes": len(u.data),
                 "new": u.version not in view.versions}
        if not reply["new"]:
            return [], {}, reply
        owned = [ns for ns in u.namespaces if ns not in view.namespaces]
        read = [key("v", u.version), *(key("ns", ns) for ns in owned)]
        puts = {key("v", u.version): json.dumps({"name": u.name, "sha256": u.sha256, "bytes": len(u.data)}).encode(),
                **{key("ns", ns): json.dumps(u.account).encode() for ns in owned}}
        return read, puts, reply

    result = await node.shared.write(change, rid)
    return web.json_response(result, status=201 if result["new"] else 200)


async def worker(request: web.Request) -> web.Response:
    node = request.app[NODE]
    name = request.match_info["name"]
    listing = node.view.listing()
    if name not in listing["workers"] and name not in listing["uploaded"]:
        return error(404, f"no worker {name!r}")
    info = listing["workers"].get(name) or {"placement": {}, "deploys": 0}
    versions = sorted(v for v, (n, _s) in node.view.versions.items() if n == name)
    return web.json_response({"name": name, **info, "versions": versions,
                              "history": node.view.history.get(name, [])})


async def deploy(request: web.Request) -> web.Response:
    node, body = request.app[NODE], await body_json(request)
    serving(node, write=True)
    rid = request_id(request)
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise BadRequest("give {\"version\": \"…\"} and optionally \"pops\" or \"regions\" (lists)")
    pops, regions = body.get("pops") or [], body.get("regions") or []
    if not isinstance(pops, list) or not isinstance(regions, list):
        raise BadRequest("'pops' and 'regions' must be lists of names")
    t = monotonic()
    name, version = request.match_info["name"], body["version"]
    targets = node.view.targets(pops, regions)

    def change(view: View) -> tuple[list[str], dict[str, bytes], dict[str, Any]]:
        history = plan_deploy(view, name, version, targets)
        return [key("h", name)], {key("h", name): json.dumps(history).encode()}, {
            "name": name, "version": version, "placement": history[-1], "t": t, "region": node.region,
            "servers": view.servers_of(history[-1])}

    return web.json_response(await node.shared.write(change, rid))


async def rollback(request: web.Request) -> web.Response:
    node = request.app[NODE]
    serving(node, write=True)
    rid = request_id(request)
    t = monotonic()
    name = request.match_info["name"]

    def change(view: View) -> tuple[list[str], dict[str, bytes], dict[str, Any]]:
        history = plan_rollback(view, name)
        return [key("h", name)], {key("h", name): json.dumps(history).encode()}, {
            "name": name, "placement": history[-1], "t": t, "region": node.region,
            "servers": view.servers_of(history[-1])}

    return web.json_response(await node.shared.write(change, rid))


async def deployments(request: web.Request) -> web.Response:
    node = request.app[NODE]
    t = monotonic()
    servers = {name: {**info, "seen_s_ago": round(t - info["t_seen"], 3)}
               for name, info in sorted(node.servers.items())}
    return web.json_response({**node.view.listing(), "servers": servers, "t": t, "region": node.region,
                              "serving": node.shared.serving,
                              "pops": {p.name: {"region": p.region, "servers": list(p.servers)}
                                       for p in node.view.pops.values()}})


async def sync(request: web.Request) -> web.Response:
    node, body = request.app[NODE], await body_json(request)
    view = node.view
    if not isinstance(body, dict) or body.get("pop") not in view.pops:
        raise BadRequest(f"give the server's 'pop' (one of {', '.join(sorted(view.pops))}) and 'server'")
    server = str(body.get("server"))
    role, name = request[PEER]
    if role == "pop" and name != server:
        raise Forbidden(f"server {name} may report only for itself, not for {server!r}")
    node.servers[server] = {"pop": body["pop"], "applied": body.get("applied", {}),
                            "t_applied": body.get("t_applied"), "error": body.get("error"),
                            "home": body.get("home"), "t_seen": monotonic()}
    serving(node)
    await long_poll(node, body)
    serving(node)  # lost its quorum while the PoP waited: the PoP goes to another region
    return web.json_response({"generation": view.generation, "deployments": view.desired(body["pop"]),
                              "region": node.region})


async def long_poll(node: Node, body: Any) -> None:
    """Wait up to ``body["wait"]`` s (at most 60) while the view's generation is ``body["generation"]`` and
    the region serves. Raises BadRequest for non-numeric values."""
    try:
        wait = min(max(float(body.get("wait", 0)), 0.0), 60.0)
        since = int(body.get("generation", -1))
    except (TypeError, ValueError):
        raise BadRequest("'wait' (seconds) and 'generation' must be numbers") from None
    view, cond = node.view, node.shared.changed
    async with cond:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cond.wait_for(lambda: view.generation != since or not node.shared.serving), wait)


async def dns_changes(request: web.Request) -> web.Response:
    """``POST /v1/dns/changes {generation, wait}`` (role ``dns``): what the platform's zone is made of
    (:meth:`View.dns`), as soon as it differs from ``generation`` or after ``wait`` s."""
    node, body = request.app[NODE], await body_json(request)
    serving(node)
    if not isinstance(body, dict):
        raise BadRequest("give {\"generation\": N, \"wait\": seconds}")
    await long_poll(node, body)
    serving(node)
    return web.json_response({**node.view.dns(), "region": node.region})


async def region_flag(request: web.Request, kind: str, field: str) -> web.Response:
    """Set a region's flag ``kind`` (a key ``kind/<region>``) from ``{field: bool}``; shared by every region."""
    node, body = request.app[NODE], await body_json(request)
    serving(node, write=True)
    region = request.match_info["region"]
    known = sorted({p.region for p in node.view.pops.values()})
    if region not in known:
        raise BadRequest(f"unknown region {region!r}; there are: {', '.join(known)}")
    if not isinstance(body, dict) or not isinstance(body.get(field), bool):
        raise BadRequest(f"give {{\"{field}\": true}} or {{\"{field}\": false}}")
    value = body[field]

    def change(_view: View) -> tuple[list[str], dict[str, bytes], dict[str, Any]]:
        return [], {key(kind, region): json.dumps(value).encode()}, {"region": region, field: value}

    return web.json_response(await node.shared.write(change, request_id(request)))


async def dns_region(request: web.Request) -> web.Response:
    """``POST /v1/dns/regions/{region} {"withdrawn": bool}`` (admin): pull the region's PoP names from the
    platform's zone (the runbook's containment) or put them back."""
    return await region_flag(request, "dw", "withdrawn")


async def halt_region(request: web.Request) -> web.Response:
    """``POST /v1/regions/{region}/halt {"halted": bool}`` (admin): halt deployments to the region (the
    runbook's containment: a deploy leaves its PoPs as they are) or lift the halt."""
    return await region_flag(request, "hd", "halted")


async def pop_servers(request: web.Request) -> web.Response:
    """``POST /v1/pops/{pop}/servers {"servers": [...]}``: the PoP's servers in service now (scaling);
    deploys wait for exactly these. Shared by every region."""
    node, body = request.app[NODE], await body_json(request)
    serving(node)
    pop = request.match_info["pop"]
    if pop not in node.view.pops:
        raise BadRequest(f"unknown PoP {pop!r}; there are: {', '.join(sorted(node.view.pops))}")
    servers = body.get("servers") if isinstance(body, dict) else None
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) and s for s in servers):
        raise BadRequest("give 'servers': the names of the PoP's servers in service (at least one)")

    def change(_view: View) -> tuple[list[str], dict[str, bytes], dict[str, Any]]:
        return [], {key("s", pop): json.dumps(servers).encode()}, {"pop": pop, "servers": servers}

    return web.json_response(await node.shared.write(change, request_id(request)))


async def status(request: web.Request) -> web.Response:
    """``GET /v1/status`` (admin): this region's state, its etcd member, artifacts, API latency and the
    credentials refused, by reason."""
    node = request.app[NODE]
    member: dict[str, Any] = {}
    with contextlib.suppress(EtcdError):
        st = await node.shared.etcd.status(node.cfg["etcd"][0], timeout=0.5)
        member = {"id": st["header"]["member_id"], "leader": st.get("leader"), "raft_term": st.get("raftTerm"),
                  "is_leader": st.get("leader") == st["header"]["member_id"], "db_size": st.get("dbSize")}
    held = node.store.held()
    want = {sha for _n, sha in node.view.versions.values()}
    t = monotonic()
    return web.json_response({
        "region": node.region, "node": node.cfg.get("node"), "serving": node.shared.serving,
        "loaded": node.shared.loaded, "quorum": node.shared.quorum,
        "quorum_since_s": round(t - node.shared.quorum_since, 3), "last_error": node.shared.last_error,
        "revision": node.view.revision, "generation": node.view.generation, "member": member,
        "artifacts": {"held": len(held & want), "missing": len(want - held), "repaired": node.repaired,
                      "read_through": node.read_through, "last_repair_error": node.last_repair_error},
        "following": sorted(s for s, info in node.servers.items() if t - info["t_seen"] < 30.0),
        "latency": node.latency(t), "auth_refused": node.verifier.refused})


async def artifact(request: web.Request) -> web.Response:
    node = request.app[NODE]
    version = request.match_info["version"]
    if version not in node.view.versions:
        raise NotFound(f"no version {version!r}")
    data = await node.artifact(node.view.versions[version][1])
    return web.Response(body=data, content_type="application/json")


async def replica_put(request: web.Request) -> web.Response:
    node, sha = request.app[NODE], request.match_info["sha"]
    try:
        node.store.put(sha, await request.read())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response({"sha256": sha, "region": node.region})


async def replica_get(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        data = node.store.get(request.match_info["sha"])
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if data is None:
        raise NotFound("not held here")
    return web.Response(body=data, content_type="application/octet-stream")


def make_app(node: Node) -> web.Application:
    """The API of ``node``: the operator's token in ``node.tokens["admin"]``, ``node.verifier`` checks the peers."""
    app = web.Application(middlewares=[service_metrics(node.cfg, Metrics("control-plane")), auth_and_errors],
                          client_max_size=MAX_BODY)
    app[NODE] = node
    node.verifier.refused.setdefault("bad_token", 0)  # the operator's token, wrong or missing
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/workers/{name}", upload)
    app.router.add_get("/v1/workers/{name}", worker)
    app.router.add_post("/v1/deployments/{name}", deploy)
    app.router.add_post("/v1/deployments/{name}/rollback", rollback)
    app.router.add_get("/v1/deployments", deployments)
    app.router.add_post("/v1/sync", sync)
    app.router.add_get("/v1/artifacts/{version}", artifact)
    app.router.add_put("/v1/replica/artifacts/{sha}", replica_put)
    app.router.add_get("/v1/replica/artifacts/{sha}", replica_get)
    app.router.add_post("/v1/pops/{pop}/servers", pop_servers)
    app.router.add_post("/v1/dns/changes", dns_changes)
    app.router.add_post("/v1/dns/regions/{region}", dns_region)
    app.router.add_post("/v1/regions/{region}/halt", halt_region)
    return app


def load_config(path: Path) -> dict[str, Any]:
    """Read and check the config the lab renders: ``{region, node, state_dir, listen: [addr, port], socket,
    tokens: {admin: file}, auth: {as, key_file, accept: {role: file}}, etcd: [url, …] (this region's member
    first), etcd_tls?: {ca, cert, key} (files), peers: [{region, address, port}] (nearest first), regions,
    pops: [{name, region, servers}]}``.
    Raises KeyError/ValueError/TypeError/OSError on a bad one."""
    cfg: dict[str, Any] = json.loads(path.read_text())
    for p in cfg["pops"]:
        Pop(p["name"], p["region"], tuple(p["servers"]))
    if not Path(cfg["tokens"]["admin"]).read_text().strip():
        raise ValueError("the admin token file is empty or not given")
    if not cfg["etcd"] or not all(str(u).startswith(("http://", "https://")) for u in cfg["etcd"]):
        raise ValueError("'etcd' must list the members' client URLs, this region's first")
    if "etcd_tls" in cfg:
        etcd_tls(cfg)  # the files are there and make a context
    for p in cfg["peers"]:
        Peer(str(p["region"]), str(p["address"]), int(p["port"]))
    if int(cfg["regions"]) < 1:
        raise ValueError("'regions' must be at least 1")
    Verifier.load(cfg["auth"], "x:0")
    return cfg


def etcd_tls(cfg: dict[str, Any]) -> ssl.SSLContext | None:
    """The client context for etcd from ``etcd_tls: {ca, cert, key}`` (None without it). Raises
    OSError/ssl.SSLError for files that cannot be read or do not match."""
    files = cfg.get("etcd_tls")
    if not files:
        return None
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(str(files["cert"]), str(files["key"]))
    return context


def make_node(cfg: dict[str, Any], session: aiohttp.ClientSession) -> Node:
    pops = [Pop(p["name"], p["region"], tuple(p["servers"])) for p in cfg["pops"]]
    tokens = {role: Path(f).read_text().strip() for role, f in cfg["tokens"].items()}
    addr, port = cfg["listen"]
    signer = Signer.load(cfg["auth"]) if "as" in cfg["auth"] else None
    shared = Shared(View(pops), Etcd(session, cfg["etcd"], tls=etcd_tls(cfg)), str(cfg["region"]),
                    cfg.get("weaken"))
    replicas = Replicas(session, signer, [Peer(str(p["region"]), str(p["address"]), int(p["port"]))
                                          for p in cfg["peers"]])
    return Node(cfg, shared, ArtifactStore(Path(cfg["state_dir"]) / "artifacts"), replicas, tokens,
                Verifier.load(cfg["auth"], f"{addr}:{port}"), int(cfg["regions"]))


async def serve(path: Path) -> None:
    cfg = load_config(path)
    async with aiohttp.ClientSession() as session:
        node = make_node(cfg, session)
        runner = web.AppRunner(make_app(node), access_log=None, handle_signals=True)
        await runner.setup()
        addr, port = cfg["listen"]
        Path(cfg["socket"]).unlink(missing_ok=True)
        # reuse_port: the API's replicas (scaling) listen on the same address; the kernel spreads the
        # connections among them.
        await web.TCPSite(runner, addr, int(port), reuse_address=True, reuse_port=True).start()
        await web.UnixSite(runner, cfg["socket"]).start()
        background = [node.shared.follow(), node.shared.check_quorum()]
        if cfg.get("repair", True):  # the region's first API process; its replicas share its store
            background.append(node.repair())
        tasks = [asyncio.create_task(c) for c in background]
        try:
            await asyncio.Event().wait()  # until SIGTERM/SIGINT (aiohttp turns them into GracefulExit)
        finally:
            for task in tasks:
                task.cancel()
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, web.GracefulExit):
        asyncio.run(serve(args.config))


if __name__ == "__main__":
    main()
