"""A region's KV master: takes writes, makes them durable here and on another region's master before it
acknowledges, pulls every other master's changes (multi-master, LWW by HLC + node), and streams its
changes to the PoP replicas of its region.

HTTP API (aiohttp; JSON bodies; keys are strings, values base64 in ``value``):

=============================================  ==================================================
``POST /v1/kv/{ns}/put``                       ``{key, value, metadata?, expiration?,
                                               expiration_ttl?}`` → ``{committed, hlc, replicated_to}``
``POST /v1/kv/{ns}/delete``                    ``{key}`` → the same (a tombstone)
``POST /v1/kv/{ns}/batch``                     ``{ops: [{op: put|delete, …, accepted_at?, hlc?,
                                               node?}]}``: in order, one ack, results per op
``POST /v1/kv/{ns}/get``                       ``{key}`` → ``{value, metadata, expiration}`` or 404
``GET  /v1/kv/{ns}/list?prefix&limit&cursor``  Workers KV's list
``POST /v1/replicate``                         ``{ns, entries}`` from a peer master: applied, on disk
``GET  /v1/changes?since={json}&of=I&wait=S`` ``{node, incarnation, seqs, changes: {ns: [entries]}}``:
                                               what changed after the caller's per-namespace sequence
                                               numbers of incarnation I (another, or none: from the
                                               start); waits up to S s for something to change
=============================================  ==================================================

A write is acknowledged (``committed: true``) only when a peer master in another region answered
``/v1/replicate`` *and* it is on this master's disk (SQLite ``synchronous=FULL``) — peers are tried in the
configured order, a peer that failed moved to the back. If none confirms, the answer is 503 and the write
is not acknowledged (it is stored here and reaches the others through their pulls) — unless a peer refused
it as stamped too far ahead of its clock: then 409, and it is stored nowhere. A master without
peers (a one-region lab) acknowledges after its own fsync, with ``replicated_to: null``. Errors are
``{"error": …}`` with the status.

Two things only the operator's socket takes (a fault's tools, never a peer): ``POST /v1/clock
{"offset_s": S}`` moves the physical input of this master's HLC by S seconds (a clock jump, without
touching the host's clock), and the test-only weakening ``"weaken": "ack-one-fsync"`` in the config
(set by the lab from ``ANYLAB_WEAKEN``, for proving that a bench can fail) acknowledges after this master's
own fsync, as a master without peers would.

Run as ``python -m kv.master --config FILE``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from core import peer_auth
from core.clock import monotonic
from core.metrics import Metrics, service_metrics
from core.peer_auth import Signer, Verifier
from core.service import is_operator, peer_middleware, run_service, service_main, signed_call
from kv import service
from kv.hlc import MAX_AHEAD_MS, Clock, admissible, physical_ms, worth_waiting
from kv.service import Cursor, body, now, save_json, value_of
from kv.store import Entry, KvError, Store, check_key, check_namespace, check_put

CHANGES_WAIT_MAX = 25.0
STAMPED_MAX = 100_000
BATCH = 500
#: How soon a peer's change stream is asked again while an entry of it waits for this clock to catch up.
HELD_RETRY_S = 1.0
#: The test-only weakening of the ack (``weaken`` in the config): after one fsync, not two regions'.
WEAK_ACK = "ack-one-fsync"
#: How far a clock jump may move a master's HLC input (a day: far past any bound it is meant to cross).
MAX_CLOCK_OFFSET_S = 86_400.0
#: Who may call what on the lab network (the operator's ``kv.sock`` is not asked): peer masters replicate
#: and pull; the replicas write, read what their copy cannot and follow.
MASTER_POLICY = peer_auth.prefix_policy({
    "POST /v1/replicate": ("kv-master", "backup"),  # the backup service's restore writes as a peer does
    "GET /v1/changes": ("kv-master", "kv-replica", "backup"),
    "POST /v1/kv/": ("kv-replica",),
    "GET /v1/kv/": ("kv-replica",),
    "GET /v1/status": ("kv-master", "kv-replica"),
})


def changes_since(store: Store, since: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for ns, seq in store.seqs().items():
        if seq > since.get(ns, 0):
            out[ns] = [e.to_json() for e in store.changes(ns, since.get(ns, 0), BATCH)]
    return out


#: How far back a replica's ``accepted_at`` is taken (a write queued longer is checked as of this).
ACCEPTED_MAX_AGE_S = 7 * 86400.0


def accepted_at(raw: Any, now_s: float) -> float:
    """When a queued write was accepted, as the replica says, within [now − ACCEPTED_MAX_AGE_S, now];
    ``now_s`` if it says nothing usable."""
    if not isinstance(raw, int | float) or isinstance(raw, bool) or raw != raw:
        return now_s
    return min(now_s, max(now_s - ACCEPTED_MAX_AGE_S, float(raw)))


def parse_since(raw: str | None) -> dict[str, int]:
    try:
        since = json.loads(raw or "{}")
        return {str(k): int(v) for k, v in since.items()}
    except (ValueError, TypeError, AttributeError):
        raise KvError("since must be a JSON object of namespace → sequence number") from None


class Master:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.node = str(cfg["node"])
        self.region = str(cfg["region"])
        self.store = Store(Path(cfg["data_dir"]), durable=True)
        self.peers: list[dict[str, Any]] = list(cfg.get("peers", []))
        self.cursor_file = Path(cfg["data_dir"]) / "cursors.json"
        saved = json.loads(self.cursor_file.read_text()) if self.cursor_file.exists() else {}
        #: Peer master → how far its change stream was read.
        self.cursors: dict[str, Cursor] = {str(k): Cursor.from_json(v) for k, v in saved.items()}
        self.clock = Clock()
        #: Seconds added to the wall clock for this master's HLC (a clock-jump fault; 0 otherwise).
        self.clock_offset_s = 0.0
        #: Test-only: acknowledge after this master's own fsync (the bench's proof that it can fail).
        self.ack_one_fsync = cfg.get("weaken") == WEAK_ACK
        #: Writes by id, stamped once (:meth:`entry_of`): the most recent STAMPED_MAX, in memory (a
        #: restarted master stamps a retried write anew).
        self.stamped: collections.OrderedDict[str, tuple[str, Entry]] = collections.OrderedDict()
        self.signer = Signer.load(cfg["auth"])
        self.verifier = Verifier.load(cfg["auth"], f"{cfg['listen'][0]}:{cfg['listen'][1]}")
        #: What peers sent that was refused, by reason (issue 19: validate what peers send).
        self.refused: dict[str, int] = {"future_hlc": 0, "clock_skew": 0, "held_future": 0}
        self.changed = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.peer_state: dict[str, dict[str, Any]] = {}

    def now_ms(self) -> int:
        """The physical input of this master's HLC: the wall clock, moved by a clock-jump fault."""
        return int((now() + self.clock_offset_s) * 1000)

    def stamp(self) -> int:
        self.clock, hlc = self.clock.tick(self.now_ms())
        return hlc

    async def set_clock(self, request: web.Request) -> web.Response:
        """The operator's clock jump: ``{"offset_s": S}`` with |S| ≤ :data:`MAX_CLOCK_OFFSET_S`; raises
        KvError (403 from a peer, 400 for a bad offset)."""
        if not is_operator(request):
            raise KvError("the clock is the operator's (the master's socket)", 403)
        raw = (await body(request)).get("offset_s")
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not abs(raw) <= MAX_CLOCK_OFFSET_S:
            raise KvError(f"offset_s must be a number of seconds within ±{MAX_CLOCK_OFFSET_S:g}")
        self.clock_offset_s = float(raw)
        return web.json_response({"offset_s": self.clock_offset_s, "hlc": self.clock.last})

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # -- client writes ---------------------------------------------------------------------------

    async def apply(self, ns: str, entries: list[Entry]) -> None:
        """Store ``entries`` here (in order, one transaction, fsync'd) and wake the long polls."""
        await asyncio.get_running_loop().run_in_executor(None, self.store.apply, ns, entries)
        self.notify()

    async def write(self, ns: str, entries: list[Entry]) -> dict[str, Any]:
        """Have a peer in another region store ``entries``, then store them here: acknowledged when both
        have. A peer refusing them as stamped too far ahead of its clock is tried past like one that does
        not answer. Raises KvError 503 when no peer confirms (the entries are stored here all the same, and
        reach the others through their pulls: not acknowledged) — but 409 when one of them refused them for
        the clock: this master's clock or that peer's is off, and the entries are stored nowhere (kept here,
        they would reach that peer only once time caught up with them, and could then overwrite writes
        acknowledged after them)."""
        last = entries[-1]
        done = {"committed": True, "hlc": last.hlc, "node": last.node, "count": len(entries)}
        if not self.peers or self.ack_one_fsync:  # a one-region lab: there is no other region to wait for
            await self.apply(ns, entries)
            return {**done, "replicated_to": None}
        skewed: list[str] = []
        for peer in list(self.peers):
            try:
                payload = {"ns": ns, "entries": [e.to_json() for e in entries]}
                status, reply = await signed_call(self.session, self.signer, "POST", peer["address"], peer["port"],
                                                  "/v1/replicate", payload, timeout=1.0)
                if status == 200:
                    await self.apply(ns, entries)
                    return {**done, "replicated_to": peer["name"]}
                if status == 400 and isinstance(reply, dict) and reply.get("reason") == "future_hlc":
                    skewed.append(peer["name"])
            except (aiohttp.ClientError, TimeoutError):
                pass
            # A peer that did not confirm goes last, so that one outage costs one timeout, not one per
            # write; it comes forward again when the others fail.
            self.peers.remove(peer)
            self.peers.append(peer)
        if skewed:
            self.refused["clock_skew"] += len(entries)
            raise KvError(f"refused as stamped too far ahead of the clock of {', '.join(skewed)}, and no other "
                          f"region confirmed it: this master's clock and its peers' disagree by more than "
                          f"{MAX_AHEAD_MS / 1000:g} s; nothing was stored", 409)
        await self.apply(ns, entries)
        raise KvError("no other region's master confirmed the write: it is not acknowledged (it is kept here "
                      "and will reach the other masters when they are back)", 503)

    def entry_of(self, ns: str, op: str, data: dict[str, Any], at: float | None = None) -> Entry:
        """A client's put or delete as a stamped version, its expiration checked as of ``at`` (when the
        write was accepted; default now); raises KvError naming what is wrong. A write that carries a
        ``write_id`` (a replica's, kept through its retries and its queue) is stamped once: when it comes
        again it is the same version, so applying it again changes nothing — a retry after a slow peer had
        been applied two to four times, each with a fresh HLC."""
        raw_id = data.get("write_id")
        wid = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 64 else None
        known = self.stamped.get(wid) if wid is not None else None
        if wid is not None and known is not None and known[0] == ns:
            self.stamped.move_to_end(wid)
            return known[1]
        entry = self._entry_of(op, data, at)
        if wid is not None:
            self.stamped[wid] = (ns, entry)
            while len(self.stamped) > STAMPED_MAX:
                self.stamped.popitem(last=False)
        return entry

    def _entry_of(self, op: str, data: dict[str, Any], at: float | None) -> Entry:
        key = data.get("key")
        if not isinstance(key, str):
            raise KvError("'key' must be a string")
        hlc, node = self.stamp_of(data)
        if op == "delete":
            return Entry(check_key(key), b"", None, None, hlc, node, deleted=True)
        if op != "put":
            raise KvError(f"unknown op {op!r}: put or delete")
        value = value_of(data)
        raw, meta, exp = check_put(key, value, data.get("metadata"), data.get("expiration"),
                                   data.get("expiration_ttl"), now() if at is None else at)
        return Entry(raw, value, meta, exp, hlc, node)

    def stamp_of(self, data: dict[str, Any]) -> tuple[int, str]:
        """The version of a write: the stamp it carries — given when it was first stamped (by this or a
        wiped master, or by the replica that queued it when it accepted it), so that a write drained late
        still orders by when it was accepted, and one sent again after a wipe is the same version — else a
        new one of this master's. A carried stamp must be admissible (:func:`kv.hlc.admissible`); raises
        KvError (400) otherwise."""
        hlc, node = data.get("hlc"), data.get("node")
        if hlc is None and node is None:
            return self.stamp(), self.node
        if not isinstance(hlc, int) or isinstance(hlc, bool) or not isinstance(node, str) or not 0 < len(node) <= 64:
            raise KvError("a stamped write carries 'hlc' (an integer) and 'node' (1–64 characters)")
        if not admissible(hlc, self.now_ms()):
            self.refused["future_hlc"] += 1
            raise KvError(f"the write's HLC {hlc} is more than {MAX_AHEAD_MS / 1000:g} s ahead of this master's clock")
        self.clock = self.clock.observe(hlc, self.now_ms())
        return hlc, node

    async def unconfirmed(self, ns: str, entry: Entry) -> web.Response:
        """A single write stored here: acknowledged (with its absolute expiration, so that the replica can
        store the same version at once), or 503 carrying the version it was stored as (so that the replica
        can keep it and send the same version again, even to this master after a wipe)."""
        try:
            return web.json_response({**await self.write(ns, [entry]), "expiration": entry.expiration})
        except KvError as exc:
            if exc.status != 503:
                raise
            return web.json_response({"error": str(exc), "hlc": entry.hlc, "node": entry.node}, status=503)

    async def put(self, request: web.Request) -> web.Response:
        ns = check_namespace(request.match_info["ns"])
        return await self.unconfirmed(ns, self.entry_of(ns, "put", await body(request)))

    async def delete(self, request: web.Request) -> web.Response:
        ns = check_namespace(request.match_info["ns"])
        return await self.unconfirmed(ns, self.entry_of(ns, "delete", await body(request)))

    async def batch(self, request: web.Request) -> web.Response:
        """``{"ops": [{"op": "put"|"delete", key, …, accepted_at?}]}``: a replica draining its queue. Each
        op is checked on its own (an expiration as of ``accepted_at``, the wall time the replica accepted
        it, at most :data:`ACCEPTED_MAX_AGE_S` back) and the good ones applied in order and acknowledged
        together; ``results`` says per op ``{ok}`` or ``{ok: false, error, status}`` — one bad op no
        longer refuses the others. 503 (with ``results``) when no peer confirmed."""
        ns = check_namespace(request.match_info["ns"])
        ops = (await body(request)).get("ops")
        if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
            raise KvError("'ops' must be a non-empty list of objects")
        entries: list[Entry] = []
        results: list[dict[str, Any]] = []
        t = now()
        for o in ops:
            try:
                at = accepted_at(o.get("accepted_at"), t)
                entries.append(self.entry_of(ns, str(o.get("op")), o, at))
                results.append({"ok": True})
            except KvError as exc:
                results.append({"ok": False, "error": str(exc), "status": exc.status})
        if not entries:
            return web.json_response({"committed": False, "results": results})
        try:
            return web.json_response({**await self.write(ns, entries), "results": results})
        except KvError as exc:
            return web.json_response({"error": str(exc), "results": results}, status=exc.status)

    async def get(self, request: web.Request) -> web.Response:
        ns = check_namespace(request.match_info["ns"])
        data = await body(request)
        e = self.store.get(ns, check_key(str(data.get("key", ""))), now())
        if e is None:
            raise KvError("no such key", 404)
        return web.json_response({"value": base64.b64encode(e.value).decode(),
                                  "metadata": json.loads(e.metadata) if e.metadata else None,
                                  "expiration": e.expiration, "stale": False})

    def stale(self) -> bool:
        return False  # a master's copy is the source

    # -- replication -----------------------------------------------------------------------------

    async def replicate(self, request: web.Request) -> web.Response:
        """A peer's entries, applied; 400 with ``reason: future_hlc`` (counted in ``status``'s ``refused``)
        for any entry whose HLC is not admissible (:func:`kv.hlc.admissible`), applying none of them."""
        data = await body(request)
        ns = check_namespace(str(data.get("ns", "")))
        entries = [Entry.from_json(e) for e in data.get("entries", [])]
        now_ms = self.now_ms()
        bad = [e for e in entries if not admissible(e.hlc, now_ms)]
        if bad:
            self.refused["future_hlc"] += len(bad)
            ahead = (physical_ms(bad[0].hlc) - now_ms) / 1000
            key = bad[0].key.decode(errors="replace")
            return web.json_response({"error": f"entry {key!r} has HLC {bad[0].hlc}, {ahead:.0f} s ahead of this "
                                               f"master's clock (at most {MAX_AHEAD_MS / 1000:g} s): refused, "
                                               "nothing applied", "reason": "future_hlc"}, status=400)
        for e in entries:
            self.clock = self.clock.observe(e.hlc, self.now_ms())
        await self.apply(ns, entries)
        return web.json_response({"ok": True})

    async def changes(self, request: web.Request) -> web.Response:
        """What changed since the caller's cursor. A cursor of another incarnation of this store (it lost
        its disk since: its sequence numbers began again) is taken as none — everything from the start,
        which LWW makes harmless to apply again; without that a follower would skip every write until the
        new sequence passed its old cursor."""
        since = parse_since(request.query.get("since"))
        if request.query.get("of") != self.store.incarnation:
            since = {}
        wait = min(max(float(request.query.get("wait", "0")), 0.0), CHANGES_WAIT_MAX)
        out = changes_since(self.store, since)
        if not out and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)
            out = changes_since(self.store, since)
        return web.json_response({"node": self.node, "incarnation": self.store.incarnation, "seqs": self.store.seqs(),
                                  "changes": out, "t": monotonic()})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"node": self.node, "region": self.region, "seqs": self.store.seqs(),
                                  "peers": self.peer_state, "refused": self.refused,
                                  "auth_refused": self.verifier.refused})

    async def pull(self, peer: dict[str, Any]) -> None:
        """Follow one peer master's changes for ever: the anti-entropy that makes every master converge,
        whatever was missed while one was down."""
        name = peer["name"]
        backoff = 0.1
        while True:
            cursor = self.cursors.setdefault(name, Cursor())
            try:
                status, reply = await signed_call(self.session, self.signer, "GET", peer["address"], peer["port"],
                                                  cursor.target(2.0), timeout=3.5)
                if status != 200 or not isinstance(reply, dict):
                    # A refusal (a peer of another lab, a key it does not take) is an outage, not an empty
                    # answer: asking again at once would spin.
                    raise ValueError(f"HTTP {status}: {reply}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.peer_state[name] = {"reachable": False, "error": str(exc) or type(exc).__name__}
                await asyncio.sleep(backoff)  # the peer is down: try again, less often
                backoff = min(backoff * 2, 0.5)
                continue
            backoff = 0.1
            self.peer_state[name] = {"reachable": True, "seqs": reply.get("seqs", {})}
            pulled_to: dict[str, int] = {}
            held = False
            for ns, raw in reply.get("changes", {}).items():
                pulled = [Entry.from_json(e) for e in raw]
                now_ms = self.now_ms()
                # An entry stamped too far ahead of this clock is not applied. If time may still catch up
                # with it (a clock off by less than MAX_WAIT_AHEAD_MS) the cursor stops before it and it is
                # asked for again later — skipping it lost it for good. Garbage (further ahead, or past
                # 2^63) is skipped and counted: the cursor moves past it.
                first_held = next((i for i, e in enumerate(pulled) if not admissible(e.hlc, now_ms)
                                   and worth_waiting(e.hlc, now_ms)), len(pulled))
                if first_held < len(pulled):
                    held = True
                    self.refused["held_future"] += 1
                taken = pulled[:first_held]
                entries = [e for e in taken if admissible(e.hlc, now_ms)]
                self.refused["future_hlc"] += len(taken) - len(entries)
                for e in entries:
                    self.clock = self.clock.observe(e.hlc, self.now_ms())
                if entries:
                    await self.apply(ns, entries)
                if taken:
                    pulled_to[ns] = max(e.seq for e in taken)
            if cursor.take(reply, pulled_to):
                save_json(self.cursor_file, {k: c.to_json() for k, c in self.cursors.items()})
                self.notify()
            if held:
                await asyncio.sleep(HELD_RETRY_S)  # asked again at once, the held entry would come back at once


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    master = Master(cfg)
    master.session = aiohttp.ClientSession()

    async def stop() -> None:
        master.notify()  # long polls answer now instead of holding the shutdown
        assert master.session is not None
        await master.session.close()
        master.store.close()

    app = service.make_app(master, {("POST", "/v1/kv/{ns}/batch"): master.batch,
                                    ("POST", "/v1/replicate"): master.replicate,
                                    ("GET", "/v1/changes"): master.changes,
                                    ("POST", "/v1/clock"): master.set_clock}, now,
                           (peer_middleware(master.verifier, MASTER_POLICY),),
                           (service_metrics(cfg, Metrics("kv-master")),))
    await run_service(app, cfg, [master.pull(p) for p in master.peers], stop, handle_signals)


def main() -> None:
    service_main(serve, __doc__ or "")


if __name__ == "__main__":
    main()
