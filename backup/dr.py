"""The DR region's copy of the primary backup store, and the cold archive (the design's "DR region storage"
and "30-day cold archive").

Every :data:`POLL_S` it asks the primary's backup service for its index (``/v1/replica/index``, signed as
role ``backup``) and copies what it lacks (:mod:`backup.mirror`): a WAL from where its copy ends, each
snapshot file and artifact once, its hash checked, a snapshot's manifest last. Each snapshot copied is
verified here by restoring it and comparing digests; it is then linked into the archive
(``archive/<part>/<n>``), which keeps it ``archive_s`` whatever the primary deletes. Snapshots the primary
deleted are deleted from the copy (the copy mirrors; the archive keeps).

The copy is a backup store of its own (``copy/``, the primary's layout): what a restore in the DR region
reads when the primary region is gone.

With a standby platform in the region (``site``: its KV master, its control plane's etcd and artifact
store), a failover restores the copy into it as of a time (:mod:`backup.restore`, the primary store's
own restores), holding the copy still meanwhile.

HTTP API on the operator's socket (``/metrics`` also on the lab network): ``GET /v1/status``: the last
copy (when, how far behind the primary's index), files and bytes copied, snapshots verified and failed,
the archive per part (count, oldest), what was pruned, the failovers; ``POST /v1/failover {at?}``
(CLOCK_MONOTONIC; none: now): the control plane's keys and artifacts, then the KV data, as the copy held
them at ``at``, into the standby platform (404 without one).

Run as ``python -m backup.dr --config FILE``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from backup.kv import MANIFEST, KvFiles, list_snapshots
from backup.mirror import PARTS, append, check_path, place, prune, verify_snapshot
from backup.restore import artifact_stores, control_into, errors, etcd_client, kv_into, requested_at
from backup.streams import BackupError, ControlBackup
from control_plane.artifacts import Replicas
from control_plane.etcd import Etcd
from core.clock import monotonic
from core.metrics import Metrics, service_metrics
from core.peer_auth import Signer, Verifier, prefix_policy
from core.service import peer_middleware, run_service, service_main, signed_bytes, signed_call

POLL_S = 0.5
#: The piece of a file asked for at once (the primary caps it too).
CHUNK = 8 << 20


class DrCopy:
    """The copy and the archive under ``data_dir``; one event loop."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.data_dir = Path(cfg["data_dir"])
        self.copy = self.data_dir / "copy"
        self.archive = self.data_dir / "archive"
        self.copy.mkdir(parents=True, exist_ok=True)
        self.archive.mkdir(parents=True, exist_ok=True)
        self.primary = (str(cfg["primary"]["address"]), int(cfg["primary"]["port"]))
        self.archive_s = float(cfg["archive_s"])
        self.signer = Signer.load(cfg["auth"])
        self.verifier = Verifier.load(cfg["auth"], f"{cfg['listen'][0]}:{cfg['listen'][1]}")
        self.session: aiohttp.ClientSession | None = None
        self.verdicts_file = self.data_dir / "verified.json"
        self.verdicts: dict[str, bool] = (json.loads(self.verdicts_file.read_text())
                                          if self.verdicts_file.exists() else {})
        self.copied = {"files": 0, "bytes": 0}
        self.pruned: dict[str, list[int]] = {}
        self.last_sync: float | None = None
        self.behind: int | None = None
        self.error = ""
        #: The standby platform a failover restores into (None: this DR region has none).
        self.site: dict[str, Any] | None = cfg.get("site")
        self.etcd: Etcd | None = None
        self.stores: Replicas | None = None
        #: Held by a round of copying and by a failover: a restore reads a copy no round is changing.
        self.lock = asyncio.Lock()
        self.round: asyncio.Future[int] | None = None
        self.failovers: list[dict[str, Any]] = []

    def open(self, session: aiohttp.ClientSession) -> None:
        """Make what needs the running loop: the session and, with a standby platform, its etcd client and
        artifact store."""
        self.session = session
        if self.site is not None:
            self.etcd = etcd_client(session, self.site)
            self.stores = artifact_stores(session, self.signer, self.site)

    async def _fetch(self, rel: str, offset: int, size: int) -> bytes:
        """Bytes ``offset``..``size`` of the primary's file ``rel``; raises BackupError."""
        out = b""
        while offset + len(out) < size:
            target = f"/v1/replica/file?path={quote(rel, safe='')}&offset={offset + len(out)}&limit={CHUNK}"
            status, data = await signed_bytes(self.session, self.signer, "GET", *self.primary, target, timeout=30.0)
            if status != 200:
                raise BackupError(f"{rel}: the primary answered {status}: {data[:200]!r}", status=502)
            if not data:
                raise BackupError(f"{rel}: shorter than its index says", status=502)
            out += data
        return out[:size - offset]

    async def sync(self) -> int:
        """One round: copy what the index names and the copy lacks; returns how many files changed.
        Raises BackupError, aiohttp.ClientError, TimeoutError."""
        status, reply = await signed_call(self.session, self.signer, "GET", *self.primary, "/v1/replica/index",
                                          timeout=10.0)
        if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("files"), dict):
            raise BackupError(f"the primary's index: HTTP {status}: {str(reply)[:200]}", status=502)
        files: dict[str, dict[str, Any]] = reply["files"]
        # A snapshot's manifest last: a snapshot here is whole when its manifest is.
        order = sorted(files, key=lambda rel: (rel.endswith("/" + MANIFEST), rel))
        changed = 0
        self.behind = 0
        for rel in order:
            meta = files[rel]
            local = self.copy / check_path(rel)
            size = int(meta["size"])
            if "/wal/" in rel:
                have = local.stat().st_size if local.exists() else 0
                if have < size:
                    append(local, await self._fetch(rel, have, size))
                    self._count(size - have)
                    changed += 1
                continue
            if local.exists():
                continue
            place(local, await self._fetch(rel, 0, size), str(meta["sha256"]))
            self._count(size)
            changed += 1
            if rel.endswith("/" + MANIFEST):
                self._settle(rel.split("/")[0], local.parent)
        self._drop_deleted(files)
        return changed

    def _count(self, size: int) -> None:
        self.copied["files"] += 1
        self.copied["bytes"] += size

    def _settle(self, part: str, snap_dir: Path) -> None:
        """A snapshot copied whole: verify it here, then link it into the archive."""
        ok = verify_snapshot(part, snap_dir, self.data_dir / "verify-scratch")
        self.verdicts[f"{part}/{snap_dir.name}"] = ok
        self.verdicts_file.write_text(json.dumps(self.verdicts))
        dest = self.archive / part / snap_dir.name
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in sorted(snap_dir.iterdir(), key=lambda p: p.name == MANIFEST):
                os.link(f, tmp / f.name)
            tmp.replace(dest)

    def _drop_deleted(self, files: dict[str, Any]) -> None:
        """Snapshots the primary no longer lists leave the copy (the archive keeps them)."""
        listed = {"/".join(rel.split("/")[:3]) for rel in files if "/snapshots/" in rel}
        for part in PARTS:
            for d in (self.copy / part / "snapshots").glob("[0-9]" * 6):
                if f"{part}/snapshots/{d.name}" not in listed and (d / MANIFEST).exists():
                    (d / MANIFEST).unlink()
                    shutil.rmtree(d, ignore_errors=True)

    def prune_archive(self) -> None:
        now = monotonic()
        for part in PARTS:
            gone = prune(self.archive / part, now, self.archive_s)
            if gone:
                self.pruned.setdefault(part, []).extend(gone)

    async def failover(self, at: float) -> dict[str, Any]:
        """Bring the standby platform's data up from the copy as of ``at`` (CLOCK_MONOTONIC): the control
        plane's keys and artifacts into its control plane, then the KV data into its master. Returns
        what each restore was made of and took, its seconds, and how old the copy was (``copy_age_s``:
        what it had not received from the primary is what the failover loses). Raises BackupError
        (404: no standby platform) or KvError."""
        if self.site is None or self.etcd is None or self.stores is None or self.session is None:
            raise BackupError("this DR region has no standby platform (backup.dr_servers)", status=404)
        t0 = monotonic()
        if self.round is not None:
            # A round stuck on a primary that is gone would hold the copy for its timeout (10 s): the copy
            # stops where it is. Cancelled only at an await, a round never leaves a file half written.
            self.round.cancel()
        async with self.lock:
            t_held = monotonic()
            control = await control_into(ControlBackup(self.copy / "control"), at, self.etcd, self.stores)
            t1 = monotonic()
            kv = await kv_into(KvFiles(self.copy / "kv"), at, self.data_dir / "restore-kv", self.site["masters"],
                               self.session, self.signer)
            t2 = monotonic()
        out = {"at": at, "control": control, "kv": kv, "waited_s": round(t_held - t0, 3),
               "control_s": round(t1 - t_held, 3), "kv_s": round(t2 - t1, 3),
               "copy_age_s": None if self.last_sync is None else round(at - self.last_sync, 3)}
        self.failovers.append({"t": t0, "at": at, "s": round(t2 - t0, 3)})
        return out

    async def follow(self) -> None:
        """Copy for ever, every :data:`POLL_S`; prune the archive each round."""
        while True:
            t0 = monotonic()
            try:
                async with self.lock:
                    self.round = asyncio.ensure_future(self.sync())
                    try:
                        await self.round
                    finally:
                        self.round = None
                self.last_sync, self.error = monotonic(), ""
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the service stops
                self.error = "a round cancelled by a failover"
            except (BackupError, aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
                self.error = str(exc) or type(exc).__name__
            self.prune_archive()
            await asyncio.sleep(max(0.0, POLL_S - (monotonic() - t0)))  # the copy's period

    def status(self) -> dict[str, Any]:
        archive = {}
        for part in PARTS:
            snaps = list_snapshots(self.archive / part)
            archive[part] = {"count": len(snaps), "oldest_t": snaps[0].t if snaps else None,
                             "newest_t": snaps[-1].t if snaps else None, "pruned": len(self.pruned.get(part, []))}
        return {"last_sync": self.last_sync, "error": self.error, "copied": self.copied,
                "verified": sum(self.verdicts.values()), "failed": sorted(k for k, v in self.verdicts.items() if not v),
                "archive_s": self.archive_s, "archive": archive,
                "copy": {part: [s.n for s in list_snapshots(self.copy / part / "snapshots")] for part in PARTS},
                "standby": self.site is not None, "failovers": self.failovers}


def make_app(dr: DrCopy, outer: tuple[Any, ...] = ()) -> web.Application:
    async def status(_request: web.Request) -> web.Response:
        return web.json_response(dr.status())

    async def failover(request: web.Request) -> web.Response:
        return web.json_response(await dr.failover(await requested_at(request)))

    app = web.Application(middlewares=[*outer, peer_middleware(dr.verifier, prefix_policy({})), errors])
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/failover", failover)
    return app


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    dr = DrCopy(cfg)
    dr.open(aiohttp.ClientSession())

    async def stop() -> None:
        assert dr.session is not None
        await dr.session.close()

    app = make_app(dr, (service_metrics(cfg, Metrics("backup-dr")),))
    await run_service(app, cfg, [dr.follow()], stop, handle_signals)


def main() -> None:
    service_main(serve, __doc__ or "")


if __name__ == "__main__":
    main()
