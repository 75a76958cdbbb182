"""A PoP server's KV replica: reads served from its own SQLite copy, writes forwarded to the region's
master, the master's change stream followed — and the design's Level 1 when that master is away.

Local API (127.0.0.1, and a Unix socket in the server's run directory for ``anylab kv``): the master's
``put``/``delete``/``get``/``list`` (see :mod:`kv.master`), plus ``GET /v1/status``.

- **Reads** come from the local copy and carry ``stale: true`` when the replica is more than
  ``stale_after_s`` behind (design: 5 min) or its master is unreachable. If the local copy cannot answer
  (a database error), the read is retried at once on the masters (the design: 2 immediate retries on
  another replica).
- **Writes** go to the master with the design's retries (3, after 50/100/200 ms). Committed there (on two
  regions' masters) → ``committed: true``. Master unreachable → the write goes to a durable local queue
  (SQLite) and the answer is ``accepted: true, committed: false``; while the queue is not empty every new
  write joins it, and a drainer sends them in order once the master answers. A master answering 503 (it
  has the write, no peer confirmed) → ``accepted`` and queued too, with the version the master gave it:
  the master's copy alone is one disk, and the queue sends the same version again until a write is
  confirmed (a master that lost its disk meanwhile takes it as it was).
- **Stamps**: a queued write is stamped here when it is accepted (this replica's HLC, which follows every
  version it takes from the master), so that draining it late does not order it after writes acknowledged
  since, elsewhere; the master keeps the stamp a write carries.
- **Write ids**: every write gets one here, kept through the retries and the queue; the master stamps a
  write once by its id (:meth:`kv.master.Master.entry_of`), so a retry is never a second version.
- **Following**: long polls of the master's ``/v1/changes`` from the last sequence numbers seen (kept on
  disk), so a restarted or cut-off replica catches up with what it missed, never by a full copy.
- **Lag** (seconds since the replica was last known caught up; 0 while it is) and the queue depth are
  written as Prometheus text (``kv.prom``); every queued and drained write is a JSON line
  (``kv-events.jsonl``), every batch taken from the master too (``kv-applied.jsonl``: time and keys).

Run as ``python -m kv.replica --config FILE``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from core.clock import monotonic
from core.peer_auth import Signer
from core.service import is_operator, run_service, service_main, signed_call
from kv import service
from kv.hlc import Clock, admissible
from kv.service import Cursor, body, now, save_json, value_of
from kv.store import Entry, KvError, Store, check_key, check_namespace, check_put, metadata_text
from protect.limits import Bucket, take

WRITE_RETRIES = (0.05, 0.1, 0.2)
DRAIN_BATCH = 200
QUEUE_WAIT_S = 2.0
POLL_WAIT = 2.0
ATTEMPT_TIMEOUT_S = 0.5
#: How soon a batch the master stored but no other region confirmed (503) is sent again.
UNCONFIRMED_RETRY_S = 0.5


class Replica:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.server = str(cfg["server"])
        data = Path(cfg["data_dir"])
        self.store = Store(data, durable=False)
        self.master: dict[str, Any] = cfg["master"]
        self.masters: list[dict[str, Any]] = list(cfg.get("masters", [self.master]))
        self.stale_after = float(cfg.get("stale_after_s", 300.0))
        self.signer = Signer.load(cfg["auth"])
        #: How long a long poll of the master waits for news: an idle replica asks this often, and
        #: notices a silent master this long (plus 1 s) after it fell silent.
        self.poll_wait = float(cfg.get("poll_wait_s", POLL_WAIT))
        self.metrics = Path(cfg["metrics"])
        self.metrics_written = ""
        self.events = Path(cfg["events"])
        self.applied_log = Path(cfg["events"]).with_name("kv-applied.jsonl")
        self.cursor_file = data / "cursors.json"
        #: Stamps the writes this replica queues (kv.hlc), after every version it has taken from the master.
        self.clock = Clock()
        self.cursor = Cursor.from_json(json.loads(self.cursor_file.read_text()) if self.cursor_file.exists() else None)
        self.queue = sqlite3.connect(data / "queue.sqlite", check_same_thread=False, isolation_level=None)
        self.queue.execute("PRAGMA journal_mode=WAL")
        self.queue.execute("PRAGMA synchronous=FULL")  # an accepted write survives a crash
        self.queue.execute("CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT, "
                           "op TEXT, body TEXT, t REAL)")
        self.queued = asyncio.Event()
        self.drained = asyncio.Condition()
        self.outcomes: dict[int, dict[str, Any]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.reachable: bool | None = None  # not known until the first exchange with the master
        self.caught_up = False
        self.t_ok = monotonic()
        #: The design's per-account KV limits (this server's share): account → (reads, writes) buckets.
        limits = cfg.get("account_limits", {})
        self.read_rps = float(limits.get("kv_reads_per_s", 50_000.0))
        self.write_rps = float(limits.get("kv_writes_per_s", 1_000.0))
        self.accounts: dict[str, tuple[Bucket, Bucket]] = {}
        self.refused_no_account = 0

    # -- state -----------------------------------------------------------------------------------

    def lag(self) -> float:
        return 0.0 if self.reachable and self.caught_up else round(monotonic() - self.t_ok, 3)

    def stale(self) -> bool:
        return self.reachable is not True or self.lag() > self.stale_after

    def depth(self) -> int:
        return int(self.queue.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def write_metrics(self) -> None:
        text = (f"# HELP anylab_kv_replica_lag_seconds seconds since this replica was last caught up\n"
                f"anylab_kv_replica_lag_seconds{{server=\"{self.server}\"}} {self.lag()}\n"
                f"anylab_kv_queue_depth{{server=\"{self.server}\"}} {self.depth()}\n"
                f"anylab_kv_master_reachable{{server=\"{self.server}\"}} {int(self.reachable is True)}\n")
        if text == self.metrics_written:
            return  # an idle, caught-up replica would rewrite the same three lines every poll
        self.metrics_written = text
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.metrics)

    def event(self, **fields: Any) -> None:
        with open(self.events, "a") as fh:
            fh.write(json.dumps({"t": round(monotonic(), 6), **fields}) + "\n")

    def applied(self, ns: str, entries: list[Entry]) -> None:
        """One line per batch taken from the master, for propagation figures; the file is rotated
        at 16 MB so that a lab left up stays bounded."""
        if self.applied_log.exists() and self.applied_log.stat().st_size > 16 * 1024 * 1024:
            self.applied_log.replace(self.applied_log.with_suffix(".jsonl.1"))
        with open(self.applied_log, "a") as fh:
            fh.write(json.dumps({"t": round(monotonic(), 6), "ns": ns,
                                 "keys": [e.key.decode(errors="replace") for e in entries]}) + "\n")

    # -- talking to the master -------------------------------------------------------------------

    async def to_master(self, master: dict[str, Any], method: str, target: str, data: Any,
                        timeout: float) -> tuple[int, dict[str, Any]]:
        """One signed request to ``master``: status and JSON answer; raises aiohttp.ClientError/TimeoutError
        when it does not answer, ValueError when the answer is not a JSON object."""
        status, reply = await signed_call(self.session, self.signer, method, master["address"], master["port"],
                                          target, data, timeout)
        if not isinstance(reply, dict):
            raise ValueError(f"HTTP {status} without a JSON answer")
        return status, reply

    async def send(self, ns: str, op: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One try at the master; raises aiohttp.ClientError/TimeoutError when it does not answer."""
        return await self.to_master(self.master, "POST", f"/v1/kv/{ns}/{op}", data, ATTEMPT_TIMEOUT_S)

    async def forward(self, ns: str, op: str, data: dict[str, Any]) -> dict[str, Any]:
        if self.depth():
            reply = self.enqueue(ns, op, data, "behind earlier queued writes")
            if self.reachable is True:
                # The master is back and the queue is draining: wait (briefly) for this write's turn, so
                # that the caller learns it committed instead of only that it was accepted.
                with contextlib.suppress(TimeoutError):
                    async with self.drained:
                        await asyncio.wait_for(self.drained.wait_for(lambda: reply["id"] in self.outcomes),
                                               QUEUE_WAIT_S)
                    return {**self.outcomes[reply["id"]], "accepted": True, "via": "queue"}
            return reply
        if self.reachable is False:  # known away (the change stream broke): no point waiting for retries
            return self.enqueue(ns, op, data, "master unreachable")
        last = ""
        for delay in (0.0, *WRITE_RETRIES):
            if delay:
                await asyncio.sleep(delay)  # the design's write backoff
            try:
                status, reply = await self.send(ns, op, data)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.reachable = False
                last = str(exc) or type(exc).__name__
                continue
            self.reachable = True
            if status == 503:  # on the master's disk alone: kept here, as the version it was stored as
                stamp = {"hlc": reply["hlc"], "node": reply["node"]} if "hlc" in reply and "node" in reply else {}
                return self.enqueue(ns, op, {**data, **stamp}, f"not confirmed by another region: {reply.get('error')}")
            if status >= 400:
                raise KvError(str(reply.get("error")), status)
            if reply.get("committed") is True:
                await self.own_copy(ns, op, data, reply)
            return {**reply, "accepted": True}
        return self.enqueue(ns, op, data, f"master unreachable: {last}")

    async def own_copy(self, ns: str, op: str, data: dict[str, Any], reply: dict[str, Any]) -> None:
        """Store an acknowledged write here as the master stored it (its stamp, its expiration), so that a
        read on this server right after it sees it: the master's change stream brings the same version a
        moment later (and LWW keeps one). Without this a worker's read after its own write raced the
        stream. A reply that does not say the version is left to the stream."""
        hlc, node = reply.get("hlc"), reply.get("node")
        if not isinstance(hlc, int) or not isinstance(node, str):
            return
        key = check_key(str(data.get("key", "")))
        if op == "delete":
            entry = Entry(key, b"", None, None, hlc, node, deleted=True)
        else:
            entry = Entry(key, value_of(data), metadata_text(data.get("metadata")), reply.get("expiration"), hlc, node)
        await asyncio.get_running_loop().run_in_executor(None, self.store.apply, ns, [entry])

    def enqueue(self, ns: str, op: str, data: dict[str, Any], why: str) -> dict[str, Any]:
        # When it was accepted goes with it: its expiration is checked as of then, not when it drains, and
        # its version is stamped now (unless the master already stamped it).
        if "hlc" not in data:
            self.clock, hlc = self.clock.tick(int(now() * 1000))
            data = {**data, "hlc": hlc, "node": self.server}
        cur = self.queue.execute("INSERT INTO queue (ns, op, body, t) VALUES (?, ?, ?, ?)",
                                 (ns, op, json.dumps({**data, "accepted_at": now()}), monotonic()))
        self.queued.set()
        self.event(event="queued", id=cur.lastrowid, ns=ns, op=op, key=data.get("key"), why=why)
        self.write_metrics()
        return {"committed": False, "accepted": True, "queued": self.depth(), "detail": why, "id": cur.lastrowid}

    async def drain(self) -> None:
        """Send queued writes in order once the master answers — up to ``DRAIN_BATCH`` of one namespace
        in one call, acknowledged together; never gives up on a write the master could still take."""
        limit = DRAIN_BATCH
        while True:
            rows = self.queue.execute("SELECT id, ns, op, body FROM queue ORDER BY id LIMIT ?",
                                      (limit,)).fetchall()
            if not rows:
                self.queued.clear()
                self.write_metrics()
                await self.queued.wait()
                continue
            ns = rows[0][1]
            same = [r[1] == ns for r in rows]
            rows = rows[:same.index(False)] if False in same else rows  # one namespace per batch
            ops = [{**json.loads(r[3]), "op": r[2]} for r in rows]
            try:
                status, reply = await self.to_master(self.master, "POST", f"/v1/kv/{ns}/batch", {"ops": ops}, 2.0)
                if status in (401, 403):  # the master did not look at the writes: keep them, as for an outage
                    raise ValueError(f"HTTP {status}: {reply.get('error')}")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.reachable = False
                await asyncio.sleep(0.2)  # the master is still away: try again soon
                continue
            self.reachable = True
            if status == 413 and limit > 1:  # too much in one body: smaller batches, nothing dropped
                limit = max(1, limit // 2)
                continue
            if status not in (200, 503):
                # The master did not take the batch as a whole (it checks each op on its own, so this is
                # not about one write): keep every write and try again later — never drop an accepted one.
                self.event(event="drain_refused", ns=ns, status=status, error=reply.get("error"), count=len(rows))
                await asyncio.sleep(1.0)  # the retry backoff of a refused batch
                continue
            limit = DRAIN_BATCH
            given = reply.get("results")
            results: list[Any] = given if isinstance(given, list) and len(given) == len(rows) else \
                [{"ok": True}] * len(rows)
            oks = [isinstance(r, dict) and bool(r.get("ok")) for r in results]
            # Confirmed (200), or refused for what the master holds: done. On the master's disk alone (503):
            # kept, and sent again (the same version) until another region confirms it.
            done = [r for r, ok in zip(rows, oks, strict=True) if status == 200 or not ok]
            if done:
                self.queue.execute(f"DELETE FROM queue WHERE id IN ({','.join('?' * len(done))})", [r[0] for r in done])
            for r, op, raw_result, ok in zip(rows, ops, results, oks, strict=True):
                if status != 200 and ok:
                    continue
                result = raw_result if isinstance(raw_result, dict) else {"ok": False, "error": "no result"}
                outcome = "committed" if ok else f"refused {result.get('status')}"
                error = reply.get("error") if ok else result.get("error")
                # A write the master refused for what it holds is reported (here and to a waiting writer),
                # not silently lost.
                self.event(event="drained", id=r[0], ns=ns, op=r[2], key=op.get("key"), outcome=outcome, error=error)
                self.outcomes[r[0]] = {"committed": ok, "replicated_to": reply.get("replicated_to"),
                                       "detail": error, **({} if ok else {"refused": True})}
            if status == 503:
                self.event(event="drain_unconfirmed", ns=ns, count=len(rows) - len(done), error=reply.get("error"))
                await asyncio.sleep(UNCONFIRMED_RETRY_S)
            while len(self.outcomes) > 10000:  # only the writers waiting right now need them
                del self.outcomes[next(iter(self.outcomes))]
            async with self.drained:
                self.drained.notify_all()

    async def follow(self) -> None:
        backoff = 0.1
        while True:
            try:
                status, reply = await self.to_master(self.master, "GET", self.cursor.target(self.poll_wait), None,
                                                     self.poll_wait + 1.0)
                if status != 200:  # refused (say, a key the master does not take): an outage, not news
                    raise ValueError(f"HTTP {status}: {reply.get('error')}")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.reachable = self.caught_up = False
                self.write_metrics()
                await asyncio.sleep(backoff)  # the master is away: reads are served stale meanwhile
                backoff = min(backoff * 2, 0.5)
                continue
            backoff = 0.1
            pulled_to: dict[str, int] = {}
            for ns, raw in reply.get("changes", {}).items():
                entries = [Entry.from_json(e) for e in raw]
                if entries:
                    await asyncio.get_running_loop().run_in_executor(None, self.store.apply, ns, entries)
                    pulled_to[ns] = max(e.seq for e in entries)
                    self.applied(ns, entries)
                    now_ms = int(now() * 1000)
                    seen = [e.hlc for e in entries if admissible(e.hlc, now_ms)]
                    if seen:
                        self.clock = self.clock.observe(max(seen), now_ms)
            if self.cursor.take(reply, pulled_to):
                save_json(self.cursor_file, self.cursor.to_json())
            seqs = reply.get("seqs", {})
            self.reachable = True
            self.caught_up = all(self.cursor.seqs.get(ns, 0) >= seq for ns, seq in seqs.items())
            if self.caught_up:
                self.t_ok = monotonic()
            self.write_metrics()

    # -- the local API ---------------------------------------------------------------------------

    @web.middleware
    async def account_limits(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """429 when the calling worker's account (``X-Anylab-Account``) is over its KV reads or writes
        per second here. On 127.0.0.1 (the edge, for its workers) the account is required: a call without
        one is refused (400), so no call escapes the limits; the operator's calls on ``kv.sock`` are not
        limited."""
        account = request.headers.get("X-Anylab-Account")
        op = request.path.rsplit("/", 1)[-1]
        if not account and not is_operator(request) and request.path.startswith("/v1/kv/"):
            self.refused_no_account += 1
            return web.json_response({"error": "X-Anylab-Account is required: every worker's KV call counts "
                                               "against its account's limits"}, status=400)
        if account and request.path.startswith("/v1/kv/"):
            reads, writes = self.accounts.get(account) or (Bucket(self.read_rps, max(1.0, self.read_rps)),
                                                           Bucket(self.write_rps, max(1.0, self.write_rps)))
            write = op in ("put", "delete")
            bucket, ok, wait = take(writes if write else reads, monotonic())
            self.accounts[account] = (reads, bucket) if write else (bucket, writes)
            if not ok:
                kind, rate = ("writes", self.write_rps) if write else ("reads", self.read_rps)
                return web.json_response({"error": f"rate_limited: account {account} is over {rate:g} KV {kind}/s "
                                                   "here"}, status=429,
                                         headers={"Retry-After": str(max(1, math.ceil(wait)))})
        response: web.StreamResponse = await handler(request)
        return response

    async def put(self, request: web.Request) -> web.Response:
        ns = check_namespace(request.match_info["ns"])
        data = await body(request)
        check_put(str(data.get("key", "")), value_of(data), data.get("metadata"), data.get("expiration"),
                  data.get("expiration_ttl"), now())  # refuse here what the master would refuse
        return web.json_response(await self.forward(ns, "put", {**data, "write_id": uuid.uuid4().hex}))

    async def delete(self, request: web.Request) -> web.Response:
        ns = check_namespace(request.match_info["ns"])
        data = await body(request)
        check_key(str(data.get("key", "")))
        return web.json_response(await self.forward(ns, "delete", {**data, "write_id": uuid.uuid4().hex}))

    async def get(self, request: web.Request) -> web.Response:
        ns = check_namespace(request.match_info["ns"])
        data = await body(request)
        key = check_key(str(data.get("key", "")))
        try:
            e = self.store.get(ns, key, now())
        except sqlite3.Error:
            return await self.read_elsewhere(ns, data)
        if e is None:
            return web.json_response({"error": "no such key", "stale": self.stale()}, status=404)
        return web.json_response({"value": base64.b64encode(e.value).decode(),
                                  "metadata": json.loads(e.metadata) if e.metadata else None,
                                  "expiration": e.expiration, "stale": self.stale()})

    async def read_elsewhere(self, ns: str, data: dict[str, Any]) -> web.Response:
        for master in self.masters[:2]:
            try:
                status, reply = await self.to_master(master, "POST", f"/v1/kv/{ns}/get", data, 1.0)
                return web.json_response(reply, status=status)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
        raise KvError("the local copy and two masters could not answer the read", 503)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"server": self.server, "master": self.master["name"], "reachable": self.reachable,
                                  "lag_s": self.lag(), "stale": self.stale(), "queue": self.depth(),
                                  "seqs": self.cursor.seqs, "refused": {"no_account": self.refused_no_account}})


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    replica = Replica(cfg)
    replica.session = aiohttp.ClientSession()
    replica.write_metrics()
    if replica.depth():
        replica.queued.set()

    async def stop() -> None:
        assert replica.session is not None
        await replica.session.close()
        replica.store.close()

    app = service.make_app(replica, {}, now, (replica.account_limits,))
    await run_service(app, cfg, [replica.follow(), replica.drain()], stop, handle_signals)


def main() -> None:
    service_main(serve, __doc__ or "")


if __name__ == "__main__":
    main()
