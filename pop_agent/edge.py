"""The edge worker's front: HTTP/1.1 on the anycast address, routed by Host (and path prefix) to the
deployment's pool of isolates.

The fast path is a raw asyncio protocol with httptools' parser (the parser Node's http module uses),
keep-alive and pipelining in order. Every response names the PoP and server that served it
(``X-Anylab-Server``); an unknown host is a 404 saying so. A deployment's isolates come from the warm
spawner on demand (up to ``max_isolates`` at once, one request at a time each) and idle ones beyond
``min_isolates`` are evicted after ``idle_s``. Installing a new set of deployments swaps the routing
table in one assignment: a request is served wholly by the version it was routed to.

In the lab the same process answers the probers' UDP probes on the anycast addresses (``--udp-port``,
``{"pop", "server", "seq"}``) and the health agent's ``GET /healthz`` on ``127.0.0.1:--health-port``, so
when it dies, everything the server serves dies with it. ``--deployments DIR`` is the server's store
(:class:`pop_agent.sync.LocalStore`): its last good set is served from the start, SIGHUP reloads it, and
with ``--control ADDRESS:PORT,… --auth F`` (every region's control plane, home first) a
:class:`pop_agent.sync.Syncer` keeps it in step with the control plane (its requests signed with the
server's ``pop`` key of ``F``; the DO router's with its ``do-router`` key: :mod:`core.peer_auth`).

Run as ``python -m pop_agent.edge --pop P --server S --address A [--address B] --deployments DIR
[--control A:P,… --auth F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol, cast

import httptools
import uvloop
from prometheus_client import CONTENT_TYPE_LATEST

from core.clock import monotonic
from core.http_client import KeepAlivePool, NotConnected
from core.metrics import METRICS_PATH, METRICS_PORT, Metrics, TextfileCollector, authorized, read_token
from core.peer_auth import Signer
from core.timers import SLACK_S, Flag, next_tick, phase_of
from pop_agent.do_router import DO_ROUTER_PORT, DoRouter
from pop_agent.sync import LocalStore, Syncer
from protect.guard import configured
from protect.levels import Level, Signals, level
from protect.limits import (
    PRIORITIES,
    Bucket,
    Peer,
    Priority,
    RateWindow,
    admit,
    choose_peer,
    count,
    place,
    pops_down,
    rate,
    spilled_to,
    take_all,
)
from tenant.deployment import Deployment
from tenant.egress import Egress, origins_of
from tenant.isolate import DeployError, Isolate, IsolateSpawner, Result
from tenant.worker_api import Request, Response

#: The header a spilled request carries to the PoP that takes it (never spilled again from there).
SPILLED_FROM = "x-anylab-spilled-from"
#: How long a peer's last load report counts, and how long a silent PoP counts as up.
#: A peer's report counts for spilling while this fresh; its PoP is silent (Level 3) after this long
#: unheard; its servers are polled this often while this server is busy (utilisation at half the
#: spill threshold or more), and this often otherwise — at hundreds of PoPs, idle polling at 4 Hz would
#: be most of an idle lab's traffic.
#: The housekeeping period (levels, idle isolates, protect.json); the idle peer poll shares its tick.
HOUSEKEEPING_S = 1.0
PEER_FRESH_S, PEER_SILENT_S, PEER_POLL_S, PEER_IDLE_POLL_S = 1.0, 2.5, 0.25, HOUSEKEEPING_S
#: ``protect.json`` is rewritten at once when its content changes, else this often (a heartbeat).
PROTECT_HEARTBEAT_S = 5.0
FULL = (1.0, 1.0, 1.0, 1.0)


class Pool:
    """The isolates of one deployment version."""

    def __init__(self, dep: Deployment, spawner: IsolateSpawner, executor: ThreadPoolExecutor) -> None:
        self.dep, self.spawner, self.executor = dep, spawner, executor
        #: Where this deployment's sandboxed isolates may send requests (tenant.egress), and how many of
        #: their requests the edge refused.
        self.egress = Egress.of(dep.name, dep.account, dep.bindings, origins_of(os.environ.get("ANYLAB_HOSTS", "")))
        self.egress_refused = 0
        self.buckets = [Bucket(dep.rate_per_s, max(1.0, dep.rate_per_s)),
                        Bucket(dep.rate_per_min / 60.0, max(1.0, dep.rate_per_min))]
        self.idle: list[tuple[float, Isolate]] = []
        self.busy = 0
        self.freed = asyncio.Condition()
        self.cold_starts = 0
        self.closed = False

    async def _acquire(self) -> Isolate:
        loop = asyncio.get_running_loop()
        async with self.freed:
            while not self.idle and self.busy >= self.dep.max_isolates:
                await self.freed.wait()
            self.busy += 1
            if self.idle:
                return self.idle.pop()[1]
        try:
            self.cold_starts += 1
            iso = await loop.run_in_executor(self.executor, self.spawner.spawn, self.dep.code, self.dep.bindings,
                                             self.dep.limits, self.dep.name)
            iso.egress, iso.on_refused = self.egress, self._refused
            return iso
        except BaseException:
            async with self.freed:
                self.busy -= 1
                self.freed.notify()
            raise

    def _refused(self) -> None:
        self.egress_refused += 1

    async def call(self, req: Request) -> Result:
        iso = await self._acquire()
        try:
            return await iso.acall(req)
        finally:
            async with self.freed:
                self.busy -= 1
                if not iso.dead and not self.closed:
                    self.idle.append((monotonic(), iso))
                else:
                    iso.kill()
                self.freed.notify()

    def evict(self, now: float) -> int:
        """Kill isolates idle longer than ``idle_s`` beyond ``min_isolates``; returns how many."""
        keep, gone = [], 0
        for i, (t, iso) in enumerate(sorted(self.idle, key=lambda x: x[0], reverse=True)):
            if i >= self.dep.min_isolates and now - t > self.dep.idle_s:
                iso.kill()
                gone += 1
            else:
                keep.append((t, iso))
        self.idle = keep
        return gone

    def close(self) -> None:
        self.closed = True
        for _t, iso in self.idle:
            iso.kill()
        self.idle.clear()


class Edge:
    """Routing table + pools; ``install`` swaps in a new set of deployments."""

    def __init__(self, pop: str, server: str, spawner: IsolateSpawner, workers: int = 8,
                 protect_file: Path | None = None, capacity_rps: float = 5000.0, max_inflight: int = 64,
                 spill_threshold: float = 0.8, peers: Iterable[Peer] = (),
                 account_rps: float = 100_000.0, phase: float | None = None) -> None:
        self.pop, self.server, self.spawner = pop, server, spawner
        #: True from the moment every listener is open until the edge closes; ``started`` is set then too.
        self.serving = False
        self.started = Flag()
        #: Where this server's 1 s loops (housekeeping, the idle peer poll) fall within the second; servers
        #: that poll each other do best on one phase (their polls and answers then share wake-ups).
        self.phase = phase_of(server, HOUSEKEEPING_S) if phase is None else phase % HOUSEKEEPING_S
        #: What makes 100 % utilisation (the shedding and spillover signal): requests taken on per second
        #: (the design's per-PoP capacity, per server) or requests in the isolates at once.
        self.capacity_rps, self.max_inflight = capacity_rps, max_inflight
        #: Requests taken on and requests in the isolates, per class.
        self.windows = {p: RateWindow() for p in PRIORITIES}
        self.inflight_by = dict.fromkeys(PRIORITIES, 0)
        self.spill_threshold = spill_threshold
        #: Servers of the nearest other PoPs, nearest first, with their last reported load.
        self.peers = list(peers)
        self.spill_pool = KeepAlivePool()
        self.spill_port = 80
        #: Every account's request bucket (its share of the design's per-account limit on this server).
        self.account_rps = account_rps
        self.accounts: dict[str, Bucket] = {}
        self.counters: dict[str, int] = {"rate_limited": 0, "shed": 0, "spilled_out": 0, "spilled_in": 0,
                                         "spill_failed": 0}
        self.level = Level(0)
        #: Circuit breakers the isolates report, ``deployment/dependency`` → state; written to
        #: ``protect_file`` (JSON) whenever one changes, for ``anylab status`` and the tests.
        self.breakers: dict[str, dict[str, Any]] = {}
        #: Other breakers this process holds (the DO router's), read when ``protect.json`` is written.
        self.reporters: list[Callable[[], dict[str, dict[str, Any]]]] = []
        self.protect_file = protect_file
        #: Set when a request finds this server at half its spill threshold (see PeerWatch).
        self.busy = Flag()
        #: The last protect.json content written (without its times) and when.
        self.protect_written: tuple[dict[str, Any], float] = ({}, -math.inf)
        #: kv.prom as last read, by its (mtime, size): the replica rewrites it only on a change.
        self.kv_metrics: tuple[tuple[int, int], dict[str, float]] = ((0, -1), {})
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="isolate-call")
        self.pools: dict[tuple[str, str], Pool] = {}  # (name, version) → pool
        self.table: dict[str, list[tuple[str, Pool]]] = {}
        #: What Prometheus scrapes (served on the unicast address with a token, :class:`MetricsHandler`):
        #: requests answered (route ``worker`` or ``unrouted``, status class: the error budget's events),
        #: whether the edge serves, its degradation level and utilisation.
        self.metrics = Metrics("edge")
        self.metrics.gauge("edge_serving", "1 while the edge serves").set_function(lambda: float(self.serving))
        self.metrics.gauge("edge_level", "The degradation level (0: normal)").set_function(lambda: self.level.level)
        self.metrics.gauge("edge_utilisation", "Requests taken on over capacity").set_function(
            lambda: self.utilisation(monotonic()))

    @property
    def inflight(self) -> int:
        return sum(self.inflight_by.values())

    def utilisation(self, now: float, priority: Priority = "P3") -> float:
        """The larger of the request rate over capacity and the requests in isolates over their limit,
        counting the classes at least as important as ``priority`` (by default: all)."""
        return self.utilisations(now)[PRIORITIES.index(priority)]

    def utilisations(self, now: float) -> tuple[float, ...]:
        """:meth:`utilisation` for each class of :data:`PRIORITIES`, in order (the load report)."""
        out: list[float] = []
        rps = inflight = 0.0
        for p in PRIORITIES:
            rps += rate(self.windows[p], now)
            inflight += self.inflight_by[p]
            out.append(max(rps / self.capacity_rps, inflight / self.max_inflight))
        return tuple(out)

    def install(self, deployments: Iterable[Deployment]) -> None:
        """Route to exactly ``deployments`` from now on (pools of unchanged versions are kept)."""
        pools: dict[tuple[str, str], Pool] = {}
        table: dict[str, list[tuple[str, Pool]]] = {}
        for dep in deployments:
            key = (dep.name, dep.version)
            pools[key] = self.pools.get(key) or Pool(dep, self.spawner, self.executor)
            table.setdefault(dep.host, []).append((dep.path_prefix, pools[key]))
        for routes in table.values():
            routes.sort(key=lambda r: len(r[0]), reverse=True)  # longest prefix first
        old = self.pools
        self.pools, self.table = pools, table  # the switch: one assignment each, no await in between
        for key, pool in old.items():
            if key not in pools:
                pool.close()

    def account_of(self, name: str) -> str:
        """The account worker ``name`` belongs to (its own name when this server does not run it)."""
        return next((pool.dep.account for (n, _v), pool in self.pools.items() if n == name), name)

    def classes_of(self, name: str) -> frozenset[str]:
        """The Durable Object classes worker ``name``'s deployment here declares as its own (bindings)."""
        pool = next((pool for (n, _v), pool in self.pools.items() if n == name), None)
        if pool is None:
            return frozenset()
        return frozenset(str(v["durable_object"]) for v in pool.dep.bindings.values()
                         if isinstance(v, dict) and "durable_object" in v and v.get("script", name) == name)

    def version_of(self, name: str) -> str | None:
        """The version of worker ``name`` this server runs (None: none)."""
        return next((version for (n, version) in self.pools if n == name), None)

    def route(self, host: str, path: str) -> Pool | None:
        for prefix, pool in self.table.get(host.split(":")[0].lower(), []):
            if path.startswith(prefix):
                return pool
        return None

    def stamp(self, resp: Response) -> Response:
        resp.headers["x-anylab-server"] = f"{self.pop}/{self.server}"
        return resp

    async def handle(self, req: Request) -> Response:
        """The answer to ``req``, counted in :attr:`metrics` (a bug's exception as a 5xx, then raised)."""
        path = req.url.split("?", 1)[0]
        pool = self.route(req.host, path)
        if pool is None:
            self.metrics.requests.labels("unrouted", "4xx").inc()
            body = json.dumps({"error": "no_deployment", "host": req.host,
                               "detail": "no worker is deployed for this host and path"}).encode()
            return self.stamp(Response(body, 404, {"content-type": "application/json"}))
        status = 500
        try:
            resp = await self.serve_with(pool, req)
            status = resp.status
            return resp
        finally:
            self.metrics.requests.labels("worker", f"{status // 100}xx").inc()

    async def serve_with(self, pool: Pool, req: Request) -> Response:
        """``req`` served by ``pool`` here, spilled to a peer, or refused (rate limits, shedding)."""
        now = monotonic()
        spilled_in = SPILLED_FROM in req.headers
        decision = self.admission(pool, now, spilled_in)
        if isinstance(decision, Response):
            return self.stamp(decision)
        if isinstance(decision, int):
            spilled = await self.spill(req, decision, pool.dep.priority)
            if spilled is not None:
                return spilled
            if not admit(pool.dep.priority, self.utilisation(monotonic(), pool.dep.priority)):
                self.counters["shed"] += 1
                return self.stamp(_shed(self, pool))
        priority = pool.dep.priority
        self.windows[priority] = count(self.windows[priority], now)
        self.counters["spilled_in"] += spilled_in
        self.inflight_by[priority] += 1
        try:
            result = await pool.call(req)
        finally:
            self.inflight_by[priority] -= 1
        if result.breakers:
            self.record_breakers(pool.dep.name, result.breakers)
        return self.stamp(result.response)

    def admission(self, pool: Pool, now: float, spilled_in: bool = False) -> Response | int | None:
        """None to serve here; the index of the peer to spill to; else the refusal: 429 ``rate_limited``
        past the deployment's or its account's rate limits, 503 ``shed`` when this server's utilisation sheds the
        deployment's class (P3 from 90 %, P0 never) and no peer has headroom — both with Retry-After."""
        account = pool.dep.account
        if account not in self.accounts:
            self.accounts[account] = Bucket(self.account_rps, max(1.0, self.account_rps))
        buckets, ok, wait = take_all([*pool.buckets, self.accounts[account]], now)
        pool.buckets, self.accounts[account] = buckets[:-1], buckets[-1]
        if not ok:
            self.counters["rate_limited"] += 1
            return _refusal(429, "rate_limited", f"{pool.dep.name} (account {account}) is over its rate limit", wait)
        priority = pool.dep.priority
        peer = choose_peer(self.peers, now, self.spill_threshold, PEER_FRESH_S, priority)
        utilisation = self.utilisation(now, priority)
        if utilisation >= self.spill_threshold / 2 and not self.busy.is_set():
            self.busy.set()  # the peer poller goes from 1 Hz to 4 Hz now, not at its next idle poll
        where = place(priority, utilisation, self.spill_threshold, spilled_in, peer is not None)
        if where == "shed":
            self.counters["shed"] += 1
            return _shed(self, pool)
        return peer if where == "spill" else None

    async def spill(self, req: Request, index: int, priority: Priority) -> Response | None:
        """Forward ``req`` to peer ``index`` and return its answer (marked ``x-anylab-spilled-by``); None
        when no connection could be made (the peer counts as full until it reports again)."""
        peer = self.peers[index]
        # What this request adds to the peer's rate until its next report.
        self.peers[index] = spilled_to(peer, priority, 1.0 / self.capacity_rps)
        headers = {k: v for k, v in req.headers.items() if k not in ("content-length", "connection", "host")}
        headers["Host"] = req.host
        headers[SPILLED_FROM] = f"{self.pop}/{self.server}"
        try:
            status, answer_headers, body = await self.spill_pool.request(
                peer.address, self.spill_port, req.method, req.url, req.body, headers, connect_s=0.5, answer_s=10.0)
        except NotConnected:
            self.counters["spill_failed"] += 1
            self.peers[index] = replace(self.peers[index], utilisation=FULL)
            return None
        except (OSError, TimeoutError, EOFError, httptools.HttpParserError) as exc:
            self.counters["spill_failed"] += 1
            body = json.dumps({"error": "spill_failed", "detail": f"{peer.server}: {exc!r}"}).encode()
            return self.stamp(Response(body, 502, {"content-type": "application/json",
                                                   "x-anylab-error": "spill_failed"}))
        self.counters["spilled_out"] += 1
        answer_headers.pop("content-length", None)
        answer_headers.pop("connection", None)
        answer_headers["x-anylab-spilled-by"] = f"{self.pop}/{self.server}"
        return Response(body, status, answer_headers)

    def heard(self, address: str, utilisation: tuple[float, ...], now: float) -> None:
        """A peer's load report (its utilisation per class)."""
        for i, p in enumerate(self.peers):
            if p.address == address:
                # The constructor, not dataclasses.replace: a few times a second on every server.
                self.peers[i] = Peer(p.pop, p.server, p.address, p.distance, utilisation, now)

    def record_breakers(self, deployment: str, breakers: dict[str, Any]) -> None:
        changed = False
        for dependency, state in breakers.items():
            key = f"{deployment}/{dependency}"
            if self.breakers.get(key) != state:
                self.breakers[key], changed = state, True
        if changed:
            self.write_protect()

    def degradation(self, kv_prom: Path | None, control_reachable: bool | None) -> Level:
        """This server's degradation level from its signals: its KV replica's lag and master (from
        ``kv.prom``), its utilisation, the watched PoPs that went silent, and whether the control plane
        answers its sync."""
        now = monotonic()
        metrics: dict[str, float] = {}
        if kv_prom is not None:
            with contextlib.suppress(OSError, ValueError):
                st = kv_prom.stat()
                if (st.st_mtime_ns, st.st_size) != self.kv_metrics[0]:
                    for line in kv_prom.read_text().splitlines():
                        if line and not line.startswith("#"):
                            name, _, value = line.rpartition(" ")
                            metrics[name.split("{")[0]] = float(value)
                    self.kv_metrics = ((st.st_mtime_ns, st.st_size), metrics)
                metrics = self.kv_metrics[1]
        return level(Signals(kv_lag_s=metrics.get("anylab_kv_replica_lag_seconds", 0.0),
                             kv_master_reachable=metrics.get("anylab_kv_master_reachable", 1.0) == 1.0,
                             utilisation=self.utilisation(now), pops_down=pops_down(self.peers, now, PEER_SILENT_S),
                             control_reachable=control_reachable is not False))

    def write_protect(self, degradation: Level | None = None) -> None:
        """``protect.json``: breakers, refusals, degradation level (for ``anylab status`` and tests)."""
        if degradation is not None:
            self.level = degradation
        if self.protect_file is None:
            return
        now = monotonic()
        breakers = dict(self.breakers)
        for report in self.reporters:
            breakers.update(report())
        peers: list[dict[str, Any]] = [{"server": p.server, "utilisation": [round(u, 3) for u in p.utilisation],
                                        "silent": now - p.heard_at > PEER_SILENT_S} for p in self.peers]
        counters = {**self.counters, "egress_refused": sum(p.egress_refused for p in self.pools.values())}
        content = {"breakers": breakers, "counters": counters,
                   "level": self.level.level, "reasons": self.level.reasons,
                   "inflight": self.inflight, "utilisation": round(self.utilisation(now), 3),
                   "capacity_rps": self.capacity_rps, "max_inflight": self.max_inflight, "peers": peers}
        if content == self.protect_written[0] and now - self.protect_written[1] < PROTECT_HEARTBEAT_S:
            return  # nothing new: an idle server writes a heartbeat only
        self.protect_written = (content, now)  # a snapshot: compared, never changed
        aged = [{**out, "age_s": round(now - p.heard_at, 2)} for out, p in zip(peers, self.peers, strict=True)]
        tmp = self.protect_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**content, "peers": aged, "t": now}))
        tmp.replace(self.protect_file)

    def health(self) -> str | None:
        """What ``/healthz`` would say, without the HTTP: None while serving, else why not (the check of
        a health agent folded into this process, :mod:`pop_agent.agent`)."""
        return None if self.serving else "the edge is not serving"

    def close(self) -> None:
        self.serving = False
        self.spill_pool.close()
        for pool in self.pools.values():
            pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _shed(edge: Edge, pool: Pool) -> Response:
    return _refusal(503, "shed", f"{edge.server} at {edge.utilisation(monotonic()):.0%} of capacity: "
                    f"{pool.dep.priority} is shed", 1)


def _refusal(status: int, code: str, detail: str, retry_after_s: float) -> Response:
    body = json.dumps({"error": code, "detail": detail}).encode()
    return Response(body, status, {"content-type": "application/json", "x-anylab-error": code,
                                   "retry-after": str(max(1, math.ceil(retry_after_s)))})


class MetricsHandler:
    """``GET /metrics`` for the holder of the lab's metrics token (:mod:`core.metrics`): the edge's
    registry and what the node's other processes write (``health.prom``, ``kv.prom``). Anything else: 404;
    no or a wrong token: 401."""

    def __init__(self, metrics: Metrics, token: str) -> None:
        self.metrics, self.token = metrics, token

    async def handle(self, req: Request) -> Response:
        if req.method != "GET" or req.url.split("?", 1)[0] != METRICS_PATH:
            return Response(b"not found\n", 404)
        if not authorized(req.headers.get("authorization"), self.token):
            return Response(b"metrics token\n", 401, {"www-authenticate": "Bearer"})
        return Response(self.metrics.exposition(), 200, {"content-type": CONTENT_TYPE_LATEST})

    def stamp(self, resp: Response) -> Response:
        return resp


class Handler(Protocol):
    async def handle(self, req: Request) -> Response: ...

    def stamp(self, resp: Response) -> Response: ...


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; pipelined requests are answered in order."""

    def __init__(self, edge: Handler) -> None:
        self.edge = edge
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple[Request, bool] | None] = asyncio.Queue()
        self.worker = asyncio.ensure_future(self._serve())
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(Response(b"malformed request\n", 400), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        req = Request(method, self._url.decode("latin-1"), self._headers, bytes(self._body))
        self.queue.put_nowait((req, self.parser.should_keep_alive()))
        self._url, self._headers, self._body = b"", {}, bytearray()

    async def _serve(self) -> None:
        while (item := await self.queue.get()) is not None:
            req, keep_alive = item
            try:
                resp = await self.edge.handle(req)
            except Exception as exc:  # a bug of ours: answer, do not drop the connection silently
                resp = self.edge.stamp(Response(f"internal error: {exc}\n", 500))
            self._write(resp, keep_alive)
            if not keep_alive:
                return

    def _write(self, resp: Response, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else "Unknown"
        head = [f"HTTP/1.1 {resp.status} {reason}", f"content-length: {len(resp.body)}",
                f"connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items() if k not in ("content-length", "connection")]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
        if not keep_alive:
            self.transport.close()


class Echo(asyncio.DatagramProtocol):
    """The probers' UDP probes: ``{"seq": N}`` is answered with ``{"pop", "server", "seq"}``; with
    ``"load": 1`` also ``"u"``, the server's utilisation for P0 … P3 (how the other PoPs' spillover routers
    learn its headroom)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.transport: asyncio.DatagramTransport | None = None
        # The answer to a plain probe, but for its sequence number: no JSON work for the thousands a
        # second that a 1 kHz measurement sends.
        self.prefix = f'{{"pop": {json.dumps(edge.pop)}, "server": {json.dumps(edge.server)}, "seq": '.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b'{"seq": ') and data.endswith(b"}"):
            assert self.transport is not None
            if data[8:-1].isdigit():
                self.transport.sendto(self.prefix + data[8:-1] + b"}", addr)
                return
            if data.endswith(b', "load": 1}') and data[8:-12].isdigit():  # a peer's poll, as PeerWatch sends it
                load = ", ".join(repr(round(u, 3)) for u in self.edge.utilisations(monotonic()))
                self.transport.sendto(b"%s%s, \"u\": [%s]}" % (self.prefix, data[8:-12], load.encode()), addr)
                return
        try:
            probe = json.loads(data)
            seq = probe.get("seq")
        except (ValueError, AttributeError):
            return  # not a probe: no answer
        assert self.transport is not None
        answer = {"pop": self.edge.pop, "server": self.edge.server, "seq": seq}
        if probe.get("load"):  # a peer's spillover router; the probers (thousands a second) do not ask
            now = monotonic()
            answer["u"] = [round(u, 3) for u in self.edge.utilisations(now)]
        self.transport.sendto(json.dumps(answer).encode(), addr)


class PeerWatch(asyncio.DatagramProtocol):
    """Asks every peer for its load every ``PEER_POLL_S`` (one UDP probe each) and hands the answers to
    the edge: the spillover router's view of who has headroom, and the count of silent PoPs (Level 3)."""

    def __init__(self, edge: Edge, udp_port: int) -> None:
        self.edge, self.udp_port = edge, udp_port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            u = tuple(float(x) for x in json.loads(data)["u"])
            if len(u) == len(PRIORITIES):
                self.edge.heard(addr[0], u, monotonic())

    def error_received(self, exc: Exception) -> None:
        pass  # an unreachable peer is one that does not answer

    async def run(self) -> None:
        seq = 0
        while True:
            seq += 1
            assert self.transport is not None
            poll = b'{"seq": %d, "load": 1}' % seq
            for p in self.edge.peers:
                self.transport.sendto(poll, (p.address, self.udp_port))
            now = monotonic()
            busy = self.edge.utilisation(now) >= self.edge.spill_threshold / 2
            if busy:
                await asyncio.sleep(PEER_POLL_S)  # the polling period itself
                continue
            # Idle: the next poll at the next housekeeping tick (one wake-up for both), or as soon as a
            # request finds the server busy.
            self.edge.busy.clear()
            await self.edge.busy.pause_until(next_tick(now + SLACK_S, PEER_IDLE_POLL_S, self.edge.phase))


async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``GET /healthz`` → ``ok`` (anything else 404): the health agent's check of this process."""
    try:
        line = await asyncio.wait_for(reader.readline(), 5.0)
        while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
            pass
        ok = line.split(b" ")[:2] == [b"GET", b"/healthz"]
        body = b"ok\n" if ok else b"not found\n"
        writer.write(b"HTTP/1.0 " + (b"200 OK" if ok else b"404 Not Found") +
                     f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def reload(edge: Edge, store: LocalStore) -> None:
    """Install the store's last good set; on a bad one keep serving what was installed (and say so)."""
    try:
        edge.install(store.load(store.current()))
    except DeployError as exc:
        print(f"edge: reload refused: {exc}", flush=True)


async def serve(edge: Edge, addresses: list[str], port: int, udp_port: int, health_port: int,
                store: LocalStore | None, control: tuple[list[tuple[str, int]], Signer] | None = None,
                directory: tuple[str, int, Signer] | None = None, unicast: str | None = None,
                account_limits: dict[str, float] | None = None, stop: Flag | None = None,
                metrics_token: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT — or, given ``stop``, until it is set (the signals are then the
    caller's). With ``store``, start from its last good set (SIGHUP reloads it); with
    ``control`` (the regions' control planes as (address, port), home first, and the signer) also keep it in
    sync with the control plane; with ``unicast`` (the
    server's own lab address) also take requests other PoPs spill here and watch the edge's peers, and
    with ``metrics_token`` too serve its metrics there on :data:`METRICS_PORT`."""
    loop = asyncio.get_running_loop()
    account_limits = account_limits or {}
    if stop is None:
        stop = Flag()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    syncer: Syncer | None = None
    if store is not None:
        loop.add_signal_handler(signal.SIGHUP, reload, edge, store)
        reload(edge, store)
        if control is not None:
            syncer = Syncer(store, edge.install, controls=control[0], signer=control[1], pop=edge.pop,
                            server=edge.server)
            tasks.append(asyncio.create_task(syncer.run()))
    closers: list[asyncio.BaseTransport | asyncio.Server] = []
    for address in addresses + ([unicast] if unicast else []):
        closers.append(await loop.create_server(lambda: HttpProtocol(edge), address, port))
        transport, _ = await loop.create_datagram_endpoint(lambda: Echo(edge), local_addr=(address, udp_port))
        closers.append(transport)
    if unicast and edge.peers:
        now = monotonic()  # every peer counts as heard at start: not yet a silent PoP
        edge.peers = [replace(p, heard_at=now) for p in edge.peers]
        transport, watch = await loop.create_datagram_endpoint(lambda: PeerWatch(edge, udp_port),
                                                               local_addr=(unicast, 0))
        closers.append(transport)
        tasks.append(asyncio.create_task(watch.run()))
    closers.append(await asyncio.start_server(healthz, "127.0.0.1", health_port))
    if unicast and metrics_token:
        if edge.protect_file is not None:  # the node's other processes' text files, beside protect.json
            node_dir = edge.protect_file.parent
            edge.metrics.registry.register(TextfileCollector([node_dir / "health.prom", node_dir / "kv.prom"]))
        handler = MetricsHandler(edge.metrics, metrics_token)
        closers.append(await loop.create_server(lambda: HttpProtocol(handler), unicast, METRICS_PORT))
    if directory is not None:
        router = DoRouter(directory[:2], edge.version_of, breaker=configured("do"), account_of=edge.account_of,
                          signer=directory[2], classes_of=edge.classes_of,
                          account_rps=account_limits.get("do_requests_per_s", 5000.0))
        edge.reporters.append(router.breaker_report)
        closers.append(await loop.create_server(lambda: HttpProtocol(router), "127.0.0.1", DO_ROUTER_PORT))
    kv_prom = edge.protect_file.parent / "kv.prom" if edge.protect_file is not None else None
    edge.serving = True
    edge.started.set()
    while not stop.is_set():
        now = monotonic()
        await stop.pause_until(next_tick(now + SLACK_S, HOUSEKEEPING_S, edge.phase))  # levels, idle isolates
        now = monotonic()
        for pool in list(edge.pools.values()):
            pool.evict(now)
        edge.write_protect(edge.degradation(kv_prom, syncer.state.reachable if syncer is not None else None))
    for task in tasks:
        task.cancel()
    for c in closers:
        c.close()
    edge.close()


def parser() -> argparse.ArgumentParser:
    """The edge worker's command line (also the first part of :mod:`pop_agent.agent`'s)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pop", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--address", action="append", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--udp-port", type=int, default=7)
    parser.add_argument("--health-port", type=int, default=8080)
    parser.add_argument("--deployments", type=Path, help="this server's store of deployments (last good set)")
    parser.add_argument("--control", help="the regions' control planes to sync with, ADDRESS:PORT,…: this "
                        "region's first, then the others nearest first")
    parser.add_argument("--auth", type=Path, help="JSON: this server's signing keys, {pop: {as, key_file}, "
                        "do-router: {as, key_file}} (core.peer_auth)")
    parser.add_argument("--directory", help="the Durable Object directory's ADDRESS:PORT (runs the DO router)")
    parser.add_argument("--unicast", help="this server's own lab address: spilled requests and load reports")
    parser.add_argument("--peers", type=Path, help="JSON: the servers of the nearest other PoPs to spill to")
    parser.add_argument("--capacity-rps", type=float, default=5000.0, help="requests/s at 100 %% utilisation")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="tenant code without its sandbox: bench/worker.py's reference run only")
    parser.add_argument("--spill-threshold", type=float, default=0.8, help="utilisation from which to spill")
    parser.add_argument("--account-limits", default="{}", help="JSON: this server's share of the per-account "
                        "limits (requests_per_s, do_requests_per_s)")
    parser.add_argument("--metrics-token", type=Path, help="file: the lab's metrics token (serve /metrics on "
                        f"the unicast address, port {METRICS_PORT})")
    parser.add_argument("--tick-phase", type=float, help="where in each second the housekeeping and idle peer "
                        "poll fall (default: from the server's name)")
    return parser


#: What :func:`run` runs beside the edge: given the edge and the stop flag (set on SIGTERM/SIGINT), it
#: returns when its own work is wound down; the edge stops after it.
Companion = Callable[[Edge, Flag], Coroutine[Any, Any, None]]


def run(args: argparse.Namespace, companion: Companion | None = None) -> None:
    """Run the edge worker of ``args`` (:func:`parser`) until SIGTERM/SIGINT, with ``companion`` in the
    same event loop when given. Raises OSError if a file it names cannot be read."""
    auth = json.loads(args.auth.read_text()) if args.auth else {}
    control = None
    if args.control:
        ends = [end.rpartition(":") for end in args.control.split(",")]
        control = ([(address, int(cport)) for address, _, cport in ends], Signer.load(auth["pop"]))
    directory = None
    if args.directory:
        address, _, dport = args.directory.rpartition(":")
        directory = (address, int(dport), Signer.load(auth["do-router"]))
    spawner = IsolateSpawner(sandboxed=not getattr(args, "no_sandbox", False))
    spawner.start()  # before any event loop or thread exists: the spawner is forked from a clean process
    try:
        store = LocalStore(args.deployments) if args.deployments else None
        protect_file = args.deployments.parent / "protect.json" if args.deployments else None
        peers = [Peer(**p) for p in json.loads(args.peers.read_text())] if args.peers else []
        account_limits = {k: float(v) for k, v in json.loads(args.account_limits).items()}
        metrics_token = read_token(args.metrics_token)
        edge = Edge(args.pop, args.server, spawner, protect_file=protect_file, capacity_rps=args.capacity_rps,
                    spill_threshold=args.spill_threshold, peers=peers,
                    account_rps=account_limits.get("requests_per_s", 100_000.0), phase=args.tick_phase)

        def serving(stop: Flag | None) -> Coroutine[Any, Any, None]:
            return serve(edge, args.address, args.port, args.udp_port, args.health_port, store, control,
                         directory, args.unicast, account_limits, stop, metrics_token)

        async def together(companion: Companion) -> None:
            stopping, edge_stop = Flag(), Flag()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopping.set)
            edge_task = asyncio.create_task(serving(edge_stop))
            other = asyncio.create_task(companion(edge, stopping))
            try:
                # The edge ends first only when it failed (it waits for edge_stop): then so does the rest.
                await asyncio.wait({edge_task, other}, return_when=asyncio.FIRST_COMPLETED)
                stopping.set()
                await other
            finally:
                edge_stop.set()
                await edge_task

        uvloop.run(serving(None) if companion is None else together(companion))
    finally:
        spawner.stop()


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
