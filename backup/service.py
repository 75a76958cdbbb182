"""The backup service of the primary region (the design's "Backup Architecture"): it follows

- every KV master's change stream into a WAL, and snapshots what the WAL makes every ``snapshot_s`` (the
  design's daily snapshot, lab-scaled; :mod:`backup.kv`);
- every DO host's objects (``/v1/backup/changes``, polled every :data:`OBJECTS_POLL_S`: the shipping
  window), snapshotted every ``objects.snapshot_s`` (the design's hourly; :mod:`backup.streams`);
- the control plane's etcd (a watch, as a client with its own certificate: the design's config change
  stream) and every code artifact the state names (fetched from the regions' control planes, kept once,
  read-only), snapshotted with the KV data;

verifies each snapshot by restoring it elsewhere and comparing digests, and restores any of the three as
of a time: KV into the masters, DO objects into their owners (each a write of its own, shipped to its
backup region), the control plane's keys into etcd after its artifacts into every region's store.

HTTP API (aiohttp, JSON), on the operator's socket; on the lab network only ``/metrics`` and, for the DR
region's copy (signed, role ``backup``), ``GET /v1/replica/index`` (the files to copy: :mod:`backup.mirror`)
and ``GET /v1/replica/file?path=&offset=&limit=`` (a file's bytes). Snapshots older than ``keep_s`` are
deleted after each new one (the newest verified kept):

=============================  ====================================================================
``GET  /v1/status``            per source (KV master, DO host, etcd): WAL lines, last record
                               (CLOCK_MONOTONIC), reachable; the DO cursors, the control plane's
                               revision and versions; each part's snapshots
``POST /v1/snapshot``          one of each part now: their manifests ``{kv, do, control}``
``POST /v1/restore/kv``        ``{at?}`` (CLOCK_MONOTONIC; none: now): the state at ``at`` built and
                               written into every master (``/v1/replicate``, signed as ``backup``;
                               last writer wins, so a master's newer data stays); what it was made of
``POST /v1/restore/do``        ``{at?}``: every object as of ``at`` written into its owner (the host
                               that takes ``/v1/restore``); objects created after ``at`` are left
``POST /v1/restore/control``   ``{at?}``: the artifacts the state at ``at`` names pushed to every
                               region, then etcd's keys made equal to it (puts and deletes, in
                               transactions of :data:`backup.restore.TXN_OPS`), read back and compared
=============================  ====================================================================

Its own requests to the masters are signed (role ``backup``); it follows a master as a replica does
(``/v1/changes`` long polls with a cursor per master, kept on disk).

Run as ``python -m backup.service --config FILE``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from backup import RESTORABLE
from backup.kv import KvBackup
from backup.mirror import Index, prune, read_range
from backup.restore import REQ, artifact_stores, control_into, errors, etcd_client, kv_into, requested_at, versions
from backup.streams import BackupError, ControlBackup, ObjectsBackup
from control_plane.artifacts import ReplicaError, Replicas
from control_plane.etcd import Etcd, EtcdError, b64
from control_plane.store import PREFIX
from core.clock import monotonic
from core.files import write_atomic
from core.metrics import Metrics, service_metrics
from core.peer_auth import Signer, Verifier, prefix_policy
from core.service import peer_middleware, run_service, service_main, signed_call
from kv.service import Cursor
from kv.store import KvError

#: How long one long poll of a master waits for news, and the pause after a master did not answer.
POLL_S = 2.0
RETRY_S = 0.5
#: The test-only weakening's value (the lab sets it from ``ANYLAB_WEAKEN=backup``, for a bench to fail).
WEAK_NO_WAL = "no-wal"
#: The largest piece of a file one ``/v1/replica/file`` answer carries.
MIRROR_CHUNK = 8 << 20
#: Who may read the store on the lab network: the DR region's copy (role ``backup``); anything else only on
#: the operator's socket.
REPLICA_POLICY = prefix_policy({"GET /v1/replica/": ("backup",)})
#: How often each DO host is asked for its objects' news: the DO backup's shipping window.
OBJECTS_POLL_S = 0.2
#: How long etcd's revision may stay ahead of what the watch delivered before the watch is started over
#: (its member cut off: a watch that is silently dropped never ends).
WATCH_QUIET_S = 2.0


def kv_root(data_dir: Path) -> Path:
    """Where a backup store in ``data_dir`` keeps its KV part."""
    return data_dir / "kv"


class Backup:
    """The service's state: the store, a cursor per master, the signer; one event loop."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.data_dir = Path(cfg["data_dir"])
        self.kv = KvBackup(kv_root(self.data_dir))
        self.masters: list[dict[str, Any]] = [{"name": str(m["name"]), "address": str(m["address"]),
                                                "port": int(m["port"])} for m in cfg["masters"]]
        self.snapshot_s = float(cfg.get("snapshot_s", 86400.0))
        if self.snapshot_s <= 0:
            raise ValueError("snapshot_s must be positive")
        self.signer = Signer.load(cfg["auth"])
        self.verifier = Verifier.load(cfg["auth"], f"{cfg['listen'][0]}:{cfg['listen'][1]}")
        self.index = Index(self.data_dir)
        #: How long snapshots are kept here (the DR's archive keeps them longer).
        self.keep_s = float(cfg.get("keep_s", 7 * 86400.0))
        self.cursor_file = self.data_dir / "cursors.json"
        saved = json.loads(self.cursor_file.read_text()) if self.cursor_file.exists() else {}
        self.cursors = {m["name"]: Cursor.from_json(saved.get(m["name"])) for m in self.masters}
        self.reachable: dict[str, bool] = {}
        #: The test-only weakening (``ANYLAB_WEAKEN=backup``): no WAL, snapshots only.
        self.wal = cfg.get("weaken") != WEAK_NO_WAL
        self.session: aiohttp.ClientSession | None = None
        objects = cfg.get("objects") or {}
        self.hosts: list[dict[str, Any]] = [{"name": str(h["name"]), "address": str(h["address"]),
                                              "port": int(h["port"])} for h in objects.get("hosts", [])]
        self.objects = ObjectsBackup(self.data_dir / "do")
        self.objects_snapshot_s = float(objects.get("snapshot_s", 3600.0))
        control = cfg.get("control")
        self.control = ControlBackup(self.data_dir / "control")
        self.control_cfg: dict[str, Any] | None = control
        self.etcd: Etcd | None = None
        self.replicas: Replicas | None = None
        self.etcd_seen = 0  # the last revision the watch delivered (or the full read was at)
        self.missing_artifacts: dict[str, str] = {}
        self.control_error = ""
        if min(self.snapshot_s, self.objects_snapshot_s) <= 0:
            raise ValueError("snapshot periods must be positive")

    def open(self, session: aiohttp.ClientSession) -> None:
        """Make what needs the running loop: the session, etcd's client and the regions' artifact stores."""
        self.session = session
        if self.control_cfg is not None:
            self.etcd = etcd_client(session, self.control_cfg)
            self.replicas = artifact_stores(session, self.signer, self.control_cfg)

    async def follow(self, master: dict[str, Any]) -> None:
        """Follow one master's changes for ever, each batch on the WAL's disk before the cursor moves."""
        name = master["name"]
        while True:
            cursor = self.cursors[name]
            try:
                status, reply = await signed_call(self.session, self.signer, "GET", master["address"], master["port"],
                                                  cursor.target(POLL_S), timeout=POLL_S + 1.5)
                if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("changes"), dict):
                    raise ValueError(f"HTTP {status}: {str(reply)[:200]}")
                changes = reply["changes"]
                self.kv.record(name, changes, monotonic(), wal=self.wal)
            except (aiohttp.ClientError, TimeoutError, ValueError, KvError):
                self.reachable[name] = False
                await asyncio.sleep(RETRY_S)  # the master is down or refuses: ask again, not at once
                continue
            self.reachable[name] = True
            pulled = {ns: max(int(e.get("seq", 0)) for e in entries) for ns, entries in changes.items() if entries}
            if cursor.take(reply, pulled):
                write_atomic(self.cursor_file, json.dumps({k: c.to_json() for k, c in self.cursors.items()}))

    async def follow_objects(self, host: dict[str, Any]) -> None:
        """Ask one DO host for its objects' news every :data:`OBJECTS_POLL_S`, for ever; each object's
        record on the WAL's disk before the next question (the cursors are the state itself)."""
        name = f"do/{host['name']}"
        while True:
            t0 = monotonic()
            try:
                status, reply = await signed_call(self.session, self.signer, "POST", host["address"], host["port"],
                                                  "/v1/backup/changes", {"cursors": self.objects.cursors()},
                                                  timeout=2.0)
                if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("objects"), dict):
                    raise ValueError(f"HTTP {status}: {str(reply)[:200]}")
                now = monotonic()
                for key, rec in reply["objects"].items():
                    if not isinstance(rec, dict):
                        raise ValueError(f"{key}: not a record")
                    self.objects.record(host["name"], {**rec, "key": key}, now, wal=self.wal)
                self.reachable[name] = True
            except (aiohttp.ClientError, TimeoutError, ValueError, BackupError):
                self.reachable[name] = False
            await asyncio.sleep(max(0.0, OBJECTS_POLL_S - (monotonic() - t0)))  # the polling period

    async def follow_control(self) -> None:
        """Follow etcd for ever: a full read (recorded when it differs from what is held), then its watch
        from the next revision; started over after an error or a quiet watch."""
        assert self.etcd is not None
        while True:
            try:
                kvs, revision = await self.etcd.range(PREFIX, prefix=True)
                full = {kv.key: b64(kv.value) for kv in kvs if not kv.key.startswith(REQ)}
                if full != self.control.state.get("keys"):
                    self.control.record("etcd", {"revision": revision, "full": full}, monotonic(), wal=self.wal)
                self.etcd_seen = revision
                self.reachable["etcd"] = True
                await self.fetch_artifacts()
                watch = asyncio.create_task(self._watch(revision))
                await asyncio.gather(watch, self._watch_quiet(watch))
            except (EtcdError, BackupError, ValueError, KeyError) as exc:
                self.reachable["etcd"] = False
                self.control_error = str(exc)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                self.control_error = "watch quiet while etcd moved on: started over"
            await asyncio.sleep(RETRY_S)  # before a new full read: the member or the network was at fault

    async def _watch(self, revision: int) -> None:
        assert self.etcd is not None
        async for rev, events in self.etcd.watch(PREFIX, revision + 1):
            puts = {e.key: b64(e.value) for e in events if e.value is not None and not e.key.startswith(REQ)}
            deletes = [e.key for e in events if e.value is None and not e.key.startswith(REQ)]
            if puts or deletes:
                self.control.record("etcd", {"revision": rev, "put": puts, "delete": deletes}, monotonic(),
                                    wal=self.wal)
            self.etcd_seen = max(self.etcd_seen, rev)
            if any(k.startswith(PREFIX + "v/") for k in puts):
                await self.fetch_artifacts()

    async def _watch_quiet(self, watch: asyncio.Task[None]) -> None:
        """Cancel ``watch`` when etcd's revision stays ahead of it for :data:`WATCH_QUIET_S`; returns when
        the watch ends."""
        assert self.etcd is not None
        behind_since: float | None = None
        while not watch.done():
            await asyncio.sleep(0.5)  # the check's period
            try:
                _kvs, revision = await self.etcd.range(PREFIX + "quorum", timeout=1.0, race=True)
            except EtcdError:
                continue
            if revision <= self.etcd_seen:
                behind_since = None
            elif behind_since is None:
                behind_since = monotonic()
            elif monotonic() - behind_since >= WATCH_QUIET_S:
                watch.cancel()
                raise EtcdError(f"the watch stayed at revision {self.etcd_seen}, etcd is at {revision}")

    async def fetch_artifacts(self) -> None:
        """Copy every artifact the held state names and the store lacks, from the nearest region that has it;
        what could not be fetched is kept in :attr:`missing_artifacts` (tried again at the next change and
        snapshot)."""
        assert self.replicas is not None
        for version, sha in versions(self.control.state.get("keys", {})).items():
            if self.control.has_artifact(sha):
                self.missing_artifacts.pop(version, None)
                continue
            try:
                data, _region = await self.replicas.fetch(sha)
                self.control.put_artifact(sha, data)
                self.missing_artifacts.pop(version, None)
            except (ReplicaError, BackupError) as exc:
                self.missing_artifacts[version] = str(exc)

    async def periodic(self, period: float, take: Callable[[], Awaitable[object]]) -> None:
        """``take`` every ``period`` seconds, for ever."""
        while True:
            await asyncio.sleep(period)  # the snapshot period itself, not a wait for a state
            await take()

    async def take(self) -> dict[str, Any]:
        """A snapshot of every part now: their manifests."""
        return {"kv": await self.take_kv(), "do": await self.take_objects(), "control": await self.take_control()}

    async def take_kv(self) -> dict[str, Any]:
        snap = self.kv.snapshot(monotonic(), time.time(), self.data_dir / "verify-scratch")
        prune(self.kv.snap_dir, snap.t, self.keep_s)
        return snap.to_json()

    async def take_objects(self) -> dict[str, Any]:
        snap = self.objects.snapshot(monotonic(), time.time())
        prune(self.objects.snap_dir, snap.t, self.keep_s)
        return snap.to_json()

    async def take_control(self) -> dict[str, Any] | None:
        if self.replicas is None:
            return None
        await self.fetch_artifacts()
        snap = self.control.snapshot(monotonic(), time.time())
        prune(self.control.snap_dir, snap.t, self.keep_s)
        return snap.to_json()

    def status(self) -> dict[str, Any]:
        return {"masters": {m["name"]: {"wal_lines": self.kv.lines.get(m["name"], 0),
                                        "last_record": self.kv.last_record.get(m["name"]),
                                        "reachable": self.reachable.get(m["name"])} for m in self.masters},
                "snapshots": [s.to_json() for s in self.kv.snapshots()],
                "do": {"hosts": {h["name"]: {"wal_lines": self.objects.lines.get(h["name"], 0),
                                             "last_record": self.objects.last_record.get(h["name"]),
                                             "reachable": self.reachable.get(f"do/{h['name']}")}
                                 for h in self.hosts},
                       "objects": self.objects.cursors(),
                       "snapshots": [s.to_json() for s in self.objects.snapshots()]},
                "control": None if self.control_cfg is None else {
                    "revision": self.control.revision, "seen": self.etcd_seen,
                    "reachable": self.reachable.get("etcd"), "wal_lines": self.control.lines.get("etcd", 0),
                    "last_record": self.control.last_record.get("etcd"),
                    "versions": sorted(versions(self.control.state.get("keys", {}))),
                    "missing_artifacts": self.missing_artifacts,
                    "snapshots": [s.to_json() for s in self.control.snapshots()]}}

    async def restore_kv(self, at: float) -> dict[str, Any]:
        """The KV state at ``at`` written into every master (:func:`backup.restore.kv_into`)."""
        assert self.session is not None
        return await kv_into(self.kv, at, self.data_dir / "restore-kv", self.masters, self.session, self.signer)

    async def restore_objects(self, at: float) -> dict[str, Any]:
        """Write every object as of ``at`` into its owner (the first host that takes it); raises BackupError
        naming the objects no host took (the others are written)."""
        state, made_of = self.objects.state_at(at)
        written: dict[str, str] = {}
        errors = []
        for key, obj in sorted(state.items()):
            tried = []
            for h in self.hosts:
                try:
                    status, reply = await signed_call(self.session, self.signer, "POST", h["address"], h["port"],
                                                      "/v1/restore", {"key": key, "data": obj["data"]}, timeout=5.0)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, reply = 0, str(exc) or type(exc).__name__
                if status == 200:
                    written[key] = h["name"]
                    break
                tried.append(f"{h['name']}: HTTP {status} {str(reply)[:120]}")
            else:
                errors.append(f"{key}: " + "; ".join(tried))
        if errors:
            raise BackupError("restore incomplete: " + " | ".join(errors), status=502)
        return {**made_of, "at": at, "objects": len(state), "written": written}

    async def restore_control(self, at: float) -> dict[str, Any]:
        """etcd's keys and the artifacts as of ``at`` (:func:`backup.restore.control_into`); raises
        BackupError."""
        if self.etcd is None or self.replicas is None:
            raise BackupError("this backup store does not follow a control plane", status=404)
        return await control_into(self.control, at, self.etcd, self.replicas)


def make_app(b: Backup, outer: tuple[Any, ...] = ()) -> web.Application:
    async def replica_index(_request: web.Request) -> web.Response:
        return web.json_response({"files": b.index.files(), "t": monotonic()})

    async def replica_file(request: web.Request) -> web.Response:
        try:
            offset, limit = int(request.query.get("offset", "0")), int(request.query.get("limit", str(MIRROR_CHUNK)))
        except ValueError:
            raise BackupError("offset and limit are integers") from None
        data = read_range(b.data_dir, request.query.get("path", ""), offset, max(0, min(limit, MIRROR_CHUNK)))
        return web.Response(body=data, content_type="application/octet-stream")

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(b.status())

    async def snapshot(_request: web.Request) -> web.Response:
        return web.json_response(await b.take())

    async def restore(request: web.Request) -> web.Response:
        at = await requested_at(request)
        what = request.match_info["what"]
        restores = {"kv": b.restore_kv, "do": b.restore_objects, "control": b.restore_control}
        assert set(restores) == set(RESTORABLE)
        if what not in restores:
            raise KvError(f"nothing called {what!r} is backed up: {', '.join(RESTORABLE)}", status=404)
        return web.json_response(await restores[what](at))

    app = web.Application(middlewares=[*outer, peer_middleware(b.verifier, REPLICA_POLICY), errors])
    app.router.add_get("/v1/replica/index", replica_index)
    app.router.add_get("/v1/replica/file", replica_file)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/snapshot", snapshot)
    app.router.add_post("/v1/restore/{what}", restore)
    return app


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    b = Backup(cfg)
    b.open(aiohttp.ClientSession())

    async def stop() -> None:
        assert b.session is not None
        await b.session.close()
        b.kv.state.close()

    app = make_app(b, (service_metrics(cfg, Metrics("backup")),))
    tasks = [*(b.follow(m) for m in b.masters), b.periodic(b.snapshot_s, b.take_kv),
             *(b.follow_objects(h) for h in b.hosts), b.periodic(b.objects_snapshot_s, b.take_objects)]
    if b.etcd is not None:
        tasks += [b.follow_control(), b.periodic(b.snapshot_s, b.take_control)]
    await run_service(app, cfg, tasks, stop, handle_signals)


def main() -> None:
    service_main(serve, __doc__ or "")


if __name__ == "__main__":
    main()
