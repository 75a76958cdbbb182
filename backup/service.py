"""The backup service of the primary region (the design's "Backup Architecture"): it follows every KV
master's change stream into a WAL, snapshots what the WAL makes every ``snapshot_s`` (the design's daily
snapshot, lab-scaled), verifies each snapshot by restoring it elsewhere and comparing digests
(:mod:`backup.kv`), and restores the KV data as of a time into the masters.

HTTP API (aiohttp, JSON), on the operator's socket only (the lab network gets nothing but ``/metrics``):

=============================  ====================================================================
``GET  /v1/status``            per master: WAL lines, last record (CLOCK_MONOTONIC), reachable; the
                               snapshots
``POST /v1/snapshot``          take one now: its manifest
``POST /v1/restore/kv``        ``{at?}`` (CLOCK_MONOTONIC; none: now): the state at ``at`` built and
                               written into every master (``/v1/replicate``, signed as ``backup``;
                               last writer wins, so a master's newer data stays); what it was made of
=============================  ====================================================================

Its own requests to the masters are signed (role ``backup``); it follows a master as a replica does
(``/v1/changes`` long polls with a cursor per master, kept on disk).

Run as ``python -m backup.service --config FILE``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from backup.kv import KvBackup
from core.clock import monotonic
from core.files import write_atomic
from core.metrics import Metrics, service_metrics
from core.peer_auth import Signer
from core.service import is_operator, run_service, service_main, signed_call
from kv.service import Cursor
from kv.store import KvError

#: How long one long poll of a master waits for news, and the pause after a master did not answer.
POLL_S = 2.0
RETRY_S = 0.5
#: The test-only weakening's value (the lab sets it from ``ANYLAB_WEAKEN=backup``, for a bench to fail).
WEAK_NO_WAL = "no-wal"
#: Entries per ``/v1/replicate`` request of a restore.
RESTORE_BATCH = 500


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
        self.cursor_file = self.data_dir / "cursors.json"
        saved = json.loads(self.cursor_file.read_text()) if self.cursor_file.exists() else {}
        self.cursors = {m["name"]: Cursor.from_json(saved.get(m["name"])) for m in self.masters}
        self.reachable: dict[str, bool] = {}
        #: The test-only weakening (``ANYLAB_WEAKEN=backup``): no WAL, snapshots only.
        self.wal = cfg.get("weaken") != WEAK_NO_WAL
        self.session: aiohttp.ClientSession | None = None

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

    async def snapshots(self) -> None:
        """A snapshot every ``snapshot_s``."""
        while True:
            await asyncio.sleep(self.snapshot_s)  # the snapshot period itself, not a wait for a state
            self.take()

    def take(self) -> dict[str, Any]:
        snap = self.kv.snapshot(monotonic(), time.time(), self.data_dir / "verify-scratch")
        return snap.to_json()

    def status(self) -> dict[str, Any]:
        return {"masters": {m["name"]: {"wal_lines": self.kv.lines.get(m["name"], 0),
                                        "last_record": self.kv.last_record.get(m["name"]),
                                        "reachable": self.reachable.get(m["name"])} for m in self.masters},
                "snapshots": [s.to_json() for s in self.kv.snapshots()]}

    async def restore_kv(self, at: float) -> dict[str, Any]:
        """Build the state at ``at`` and write it into every master; raises KvError if a master refuses
        or cannot be reached (the others are still written)."""
        store, made_of = self.kv.state_at(at, self.data_dir / "restore-kv")
        written: dict[str, int] = {}
        errors = []
        try:
            batches = [(ns, [e.to_json() for e in entries[i:i + RESTORE_BATCH]])
                       for ns in store.namespaces() for entries in [list(store.all(ns))]
                       for i in range(0, len(entries), RESTORE_BATCH)]
        finally:
            store.close()
        for m in self.masters:
            written[m["name"]] = 0
            for ns, entries in batches:
                try:
                    status, reply = await signed_call(self.session, self.signer, "POST", m["address"], m["port"],
                                                      "/v1/replicate", {"ns": ns, "entries": entries}, timeout=30.0)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, reply = 0, str(exc) or type(exc).__name__
                if status != 200:
                    errors.append(f"{m['name']}: HTTP {status}: {str(reply)[:200]}")
                    break
                written[m["name"]] += len(entries)
        if errors:
            raise KvError("restore incomplete: " + "; ".join(errors), status=502)
        return {**made_of, "at": at, "entries": sum(len(e) for _, e in batches), "written": written}


def make_app(b: Backup, outer: tuple[Any, ...] = ()) -> web.Application:
    @web.middleware
    async def operator_only(request: web.Request, handler: Any) -> web.StreamResponse:
        if not is_operator(request):
            return web.json_response({"error": "the backup service answers its operator only"}, status=403)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except KvError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(b.status())

    async def snapshot(_request: web.Request) -> web.Response:
        return web.json_response(b.take())

    async def restore(request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise KvError("the body must be a JSON object: {at?}")
        at = data.get("at")
        if at is None:
            at = monotonic()
        if not isinstance(at, int | float) or isinstance(at, bool) or at != at:
            raise KvError("'at' must be a CLOCK_MONOTONIC time in seconds")
        return web.json_response(await b.restore_kv(float(at)))

    app = web.Application(middlewares=[*outer, operator_only])
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/snapshot", snapshot)
    app.router.add_post("/v1/restore/kv", restore)
    return app


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    b = Backup(cfg)
    b.session = aiohttp.ClientSession()

    async def stop() -> None:
        assert b.session is not None
        await b.session.close()
        b.kv.state.close()

    app = make_app(b, (service_metrics(cfg, Metrics("backup")),))
    await run_service(app, cfg, [*(b.follow(m) for m in b.masters), b.snapshots()], stop, handle_signals)


def main() -> None:
    service_main(serve, __doc__ or "")


if __name__ == "__main__":
    main()
