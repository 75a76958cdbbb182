"""A region's Durable Object host (on the region's storage node, beside its KV master): runs the objects
this region owns and keeps the copies of those it backs up.

- **Lease**: renews with the directory every ``renew_s``; it serves only while the lease it last got is
  running (``lease_s`` from when the renewal was *sent*) and only objects the directory's answer says it
  owns, at that epoch. A call carrying a newer epoch makes it renew at once (a promotion it has not
  heard of yet).
- **Owner**: an object's code is the deployment's (fetched from the control plane by version, like a PoP
  does), run in a sandboxed isolate of the object's own (:class:`durable.runtime.IsolatedClass`: the
  deployment's uid, no network, no file of the host; its storage calls come back here) — the host never runs
  tenant code itself; events go through :class:`durable.runtime.ObjectHost` (input and output gates). The
  output gate ships the object's new log entries to its backup (``/v1/replicate``); a backup that has
  another epoch's history or a gap gets a snapshot first (``/v1/install``). ``sync``: the answer waits for
  the backup (retrying for ``ship_deadline_s``, following the directory when it names a new backup);
  ``async``: it does not (the lag is measured). When the directory names a new backup, it is seeded with a
  snapshot at once; every ``snapshot_s`` the backup gets a fresh snapshot and the log before it is dropped.
- **Promotion**: when the directory's answer makes this region the owner at a new epoch, the local copy
  (kept current by the shipped log: a hot standby, so there is no log left to replay) is fenced at the
  new epoch and served from then on. **Fencing**: a copy this host owned before and no longer owns is
  fenced at the new epoch: its writes fail with "no longer current".

HTTP (aiohttp) on the lab network and ``do.sock``:

``POST /v1/call``       ``{key, epoch, version, request: {method, url, headers, body}}`` (body base64) →
                        ``{status, headers, body, owner, epoch}``; refusals ``{error, definite}``: 503
                        ``lease_expired``, 421 ``not_owner`` (with the owner), 409 ``fenced`` — definite:
                        nothing took effect —, 503 ``backup_unreachable`` and 500 ``object_error`` —
                        not definite: the write may surface later
``POST /v1/replicate``  ``{key, entries}`` from the owner → ``{seq}``; 409 ``need_snapshot`` or ``fenced``
``POST /v1/install``    ``{key, snapshot}`` → ``{seq}``; 409 ``fenced``
``GET  /v1/status``     lease, owned objects, shipping lag
``POST /v1/backup/changes``  (the backup service) ``{cursors: {key: [epoch, seq]}}`` → per object this host
                        owns that moved past its cursor: ``{entries}`` (the log after it) or ``{snapshot}``
                        (the cursor is another epoch's, ahead, or before the kept log)
``POST /v1/restore``    (the backup service) ``{key, data}``: the owned object's data replaced, as one
                        write at its epoch, shipped to its backup region like any other → ``{seq}``; 421
                        ``not_owner``, 503 ``lease_expired`` or ``backup_unreachable``

Decisions are JSON lines in ``events`` (CLOCK_MONOTONIC ``time``): ``promote``, ``fenced``,
``first_served`` (the first answer at a new epoch), ``lease_lost``.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from core import peer_auth
from core.clock import monotonic
from core.errors import AnylabError
from core.metrics import Metrics, service_metrics
from core.peer_auth import Signer, Verifier
from core.service import PEER, peer_middleware, run_service, service_main, signed_call
from core.stats import quantile
from durable.runtime import FencedAfterCommit, IsolatedClass, ObjectHost
from durable.storage import Fenced, ObjectStore
from tenant.isolate import DeployError, Isolate, IsolateSpawner, Limits, check_code
from tenant.worker_api import Request

SHIP_TIMEOUT_S = 0.5
#: The largest request a host takes (413 beyond): a snapshot of one object, with room.
MAX_BODY = 64 * 1024 * 1024
#: Who may call what on the lab network (``do.sock`` is the operator's): the PoPs' routers run calls, the
#: other regions' hosts ship and seed.
HOST_POLICY = peer_auth.prefix_policy({
    "POST /v1/call": ("do-router",),
    "POST /v1/replicate": ("do-host",),
    "POST /v1/install": ("do-host",),
    "POST /v1/backup/": ("backup",),
    "POST /v1/restore": ("backup",),
})


class ShipError(AnylabError):
    """The backup did not confirm in time: the write is kept here and may still reach it."""


class Refused(Exception):
    """A call this host will not run; ``definite``: certainly nothing took effect."""

    def __init__(self, status: int, error: str, definite: bool, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.error, self.definite, self.extra = status, error, definite, extra

    def response(self) -> web.Response:
        return web.json_response({"error": self.error, "definite": self.definite, **self.extra},
                                 status=self.status)


def key_parts(key: str) -> tuple[str, str, str]:
    """``script/Class/id`` → its parts; raises ValueError for anything else."""
    script, cls, oid = key.split("/")
    if not (script and cls.isidentifier() and oid):
        raise ValueError(key)
    return script, cls, oid


class Host:
    """One region's DO host; all on one event loop."""

    def __init__(self, cfg: dict[str, Any], spawner: IsolateSpawner | None = None) -> None:
        #: Where the objects' code runs: a sandboxed isolate per object (tenant.isolate); None: nowhere —
        #: a host without one refuses every call (the host never runs tenant code itself).
        self.spawner = spawner
        self.region = str(cfg["region"])
        self.data_dir = Path(cfg["data_dir"])
        (self.data_dir / "objects").mkdir(parents=True, exist_ok=True)
        self.directory = tuple(cfg["directory"])
        #: The regions' control planes, this region's first: code comes from the first that has it.
        self.controls = [(str(a), int(p)) for a, p in cfg["control"]]
        self.signer = Signer.load(cfg["auth"])
        self.verifier = Verifier.load(cfg["auth"], f"{cfg['listen'][0]}:{cfg['listen'][1]}")
        #: What authenticated peers sent that was refused, by reason.
        self.refused: dict[str, int] = {"epoch_not_issued": 0, "not_owner": 0}
        self.mode = str(cfg.get("mode", "sync"))
        self.renew_s = float(cfg.get("renew_s", 0.1))
        self.snapshot_s = float(cfg.get("snapshot_s", 3600.0))
        self.ship_deadline_s = float(cfg.get("ship_deadline_s", 2.0))
        self.events = Path(cfg["events"])
        self.lease_until = 0.0
        self.placements: dict[str, tuple[str, int, str | None]] = {}
        self.regions: dict[str, tuple[str, int]] = {}
        self.stores: dict[str, ObjectStore] = {}
        self.owned: dict[str, int] = {}  # key → the epoch this host serves it at
        self.seeded: dict[str, str] = {}  # key → the backup region that has a snapshot from us
        self.runtimes: dict[tuple[str, str], tuple[str, ObjectHost]] = {}
        self.code: dict[str, dict[str, Any]] = {}
        self.served: set[tuple[str, int]] = set()
        self.unprotected = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.renewing: asyncio.Lock | None = None
        self.session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Make what needs the running event loop."""
        self.session = aiohttp.ClientSession()
        self.renewing = asyncio.Lock()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for _version, runtime in self.runtimes.values():
            runtime.close()  # kills the objects' isolates
        if self.session is not None:
            await self.session.close()
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                store.close()

    # -- bookkeeping -------------------------------------------------------------------------------

    def _event(self, event: dict[str, Any]) -> None:
        with self.events.open("a") as f:
            f.write(json.dumps({"time": monotonic(), "region": self.region, **event}) + "\n")

    def store(self, key: str) -> ObjectStore:
        store = self.stores.get(key)
        if store is None:
            name = hashlib.sha256(key.encode()).hexdigest()[:32]
            store = self.stores[key] = ObjectStore(self.data_dir / "objects" / f"{name}.db")
        return store

    def lease_ok(self) -> bool:
        return monotonic() < self.lease_until

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._event({"event": "background_error", "error": repr(task.exception())})

    async def _post(self, address: tuple[str, int], path: str, body: dict[str, Any],
                    timeout: float) -> tuple[int, dict[str, Any]]:
        """A signed POST; raises aiohttp.ClientError/TimeoutError, ValueError for an answer not JSON."""
        status, reply = await signed_call(self.session, self.signer, "POST", address[0], address[1], path, body,
                                          timeout)
        if not isinstance(reply, dict):
            raise ValueError(f"HTTP {status} without a JSON answer")
        return status, reply

    async def check_sender(self, key: str, sender: tuple[str, str], epoch: int) -> web.Response | None:
        """Whether host ``sender`` may ship or seed ``key`` at ``epoch``: None if so, else the refusal.
        Epochs move forward only through the directory: one newer than the directory's placement (asked
        again once), or any for an object it has not placed, is refused (``epoch_not_issued``, counted);
        at the placement's epoch only its owner may send (``not_owner``); an older epoch is answered
        ``fenced`` by the store, as before."""
        role, region = sender
        if role == "operator":
            return None
        placement = self.placements.get(key)
        if placement is None or placement[1] < epoch or (placement[1] == epoch and placement[0] != region):
            await self.renew()
            placement = self.placements.get(key)
        current = placement[1] if placement else 0
        if placement is None or epoch > current:  # not placed at all: no epoch of it was ever issued
            self.refused["epoch_not_issued"] += 1
            return web.json_response({"error": "epoch_not_issued", "epoch": current,
                                      "detail": f"the directory has {key} at epoch {current}, not {epoch}"},
                                     status=409)
        if placement is not None and epoch == current and placement[0] != region:
            self.refused["not_owner"] += 1
            return web.json_response({"error": "not_owner", "owner": placement[0],
                                      "detail": f"{region} does not own {key} at epoch {epoch}"}, status=403)
        return None

    # -- lease -------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return {key: {"seq": self.store(key).seq, "shipped_to": self.seeded.get(key)} for key in self.owned}

    async def renew(self) -> bool:
        """One renewal; True when the directory answered (lease extended, placements applied)."""
        assert self.renewing is not None
        async with self.renewing:
            sent = monotonic()
            try:
                status, reply = await self._post(self.directory, "/v1/lease",
                                                 {"region": self.region, "objects": self.report()}, timeout=0.5)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return False
            if status != 200:
                return False
            self.lease_until = sent + float(reply["lease_s"])
            self.regions = {r: (a, int(p)) for r, (a, p) in reply["regions"].items()}
            self.apply({k: (o, int(e), b) for k, (o, e, b) in reply["objects"].items()})
            return True

    def apply(self, placements: dict[str, tuple[str, int, str | None]]) -> None:
        """Take the directory's placements: promote what is now ours, fence what no longer is, seed new
        backups."""
        self.placements = placements
        for key, (owner, epoch, backup) in placements.items():
            if owner == self.region:
                if self.owned.get(key) != epoch:
                    t0 = monotonic()
                    store = self.store(key)
                    before = store.epoch
                    store.fence(epoch)
                    self._drop(key)
                    if epoch > 1 and before < epoch:
                        self._event({"event": "promote", "key": key, "epoch": epoch, "seq": store.seq,
                                     "restore_s": round(monotonic() - t0, 6)})
                    self.owned[key] = epoch
                if backup is not None and self.seeded.get(key) != backup:
                    self._spawn(self.seed(key, backup))
            elif key in self.owned or (key in self.stores and self.stores[key].epoch < epoch
                                       and backup != self.region):
                self.owned.pop(key, None)
                self._drop(key)
                self.store(key).fence(epoch)
                self._event({"event": "fenced", "key": key, "epoch": epoch, "owner": owner})

    def _drop(self, key: str) -> None:
        for _version, runtime in self.runtimes.values():
            runtime.drop(key)

    async def keep_lease(self) -> None:
        had = False
        while True:
            ok = await self.renew()
            if had and not ok and not self.lease_ok():
                self._event({"event": "lease_lost"})
            had = ok or self.lease_ok()
            await asyncio.sleep(self.renew_s)  # the renewal period

    # -- replication ---------------------------------------------------------------------------------

    async def seed(self, key: str, backup: str) -> int | None:
        """Install a snapshot of ``key`` on ``backup``; the sequence number it confirmed, None if it did
        not."""
        address = self.regions.get(backup)
        if address is None:
            return None
        snapshot = self.store(key).snapshot()
        try:
            status, reply = await self._post(address, "/v1/install", {"key": key, "snapshot": snapshot},
                                             timeout=SHIP_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if status == 409 and reply.get("error") == "fenced":
            raise Fenced(f"{backup} refused the snapshot of {key}: this host is no longer its owner")
        if status != 200:
            return None
        if self.seeded.get(key) != backup:
            self.seeded[key] = backup
            # Tell the directory now, not at the next renewal: it promotes only a backup it knows holds a
            # copy, and a write acknowledged after this must not wait a renewal period to count.
            await self.renew()
        return int(snapshot["seq"])

    async def ship(self, key: str, entries: list[dict[str, Any]]) -> None:
        """The output gate's shipping: ``entries`` confirmed by the object's current backup. Raises
        Fenced (the backup is at a newer epoch: this host is not the owner), ShipError (no confirmation
        within ``ship_deadline_s``)."""
        t0 = monotonic()
        while True:
            placement = self.placements.get(key)
            backup = placement[2] if placement else None
            if backup is None:  # nobody to ship to (every other region is down): acknowledged unprotected
                self.unprotected += 1
                return
            address = self.regions.get(backup)
            try:
                if address is not None:
                    status, reply = await self._post(address, "/v1/replicate", {"key": key, "entries": entries},
                                                     timeout=SHIP_TIMEOUT_S)
                    if status == 200:
                        return
                    if reply.get("error") == "fenced":
                        raise Fenced(f"{backup} is at a newer epoch for {key}: this host is no longer its owner")
                    if reply.get("error") == "need_snapshot":
                        seeded = await self.seed(key, backup)
                        if seeded is not None and entries and seeded >= int(entries[-1]["seq"]):
                            return  # the snapshot the backup confirmed holds these entries
                        # Otherwise try again after the backoff, within the deadline: going round at once
                        # spun this loop forever when the backup kept refusing the snapshot.
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            if monotonic() - t0 > self.ship_deadline_s:
                raise ShipError(f"backup region {backup} did not confirm {key} within {self.ship_deadline_s} s")
            await asyncio.sleep(0.05)  # retry backoff; the directory may name another backup meanwhile

    async def snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_s)  # the configured snapshot period
            for key in list(self.owned):
                placement = self.placements.get(key)
                confirmed = await self.seed(key, placement[2]) if placement and placement[2] else None
                if confirmed is not None:
                    self.store(key).truncate(confirmed)  # the backup has everything up to there

    # -- running objects -------------------------------------------------------------------------------

    async def runtime(self, key: str, version: str) -> ObjectHost:
        script, cls_name, _ = key_parts(key)
        current = self.runtimes.get((script, cls_name))
        if current is not None and current[0] == version:
            return current[1]
        artifact = self.code.get(version)
        if artifact is None:
            artifact = self.code[version] = await self._fetch_code(version)
        if artifact.get("name") != script:
            raise Refused(400, "bad_version", True, detail=f"version {version} is not a version of {script}")
        code, spawner = str(artifact["code"]), self.spawner
        try:
            limits = Limits(**(artifact.get("limits") or {}))
            check_code(code, limits)  # size and syntax, with the messages a worker's upload gets
            tree = ast.parse(code)  # read for its classes, never run here
        except (DeployError, TypeError, SyntaxError) as exc:
            raise Refused(400, "load_error", True, detail=str(exc)) from None
        if not any(isinstance(n, ast.ClassDef) and n.name == cls_name for n in tree.body):
            raise Refused(400, "no_such_class", True, detail=f"{script} {version} defines no class {cls_name}")
        if spawner is None:
            raise Refused(503, "no_isolates", True, detail="this host runs no isolates")
        bindings = {k: v for k, v in artifact.get("bindings", {}).items() if not isinstance(v, dict)}

        async def spawn() -> Isolate:
            t0 = monotonic()
            isolate = await asyncio.get_running_loop().run_in_executor(
                None, lambda: spawner.spawn(code, bindings, limits, tenant=script, do_class=cls_name))
            self._event({"event": "isolate", "class": f"{script}/{cls_name}", "spawn_s": round(monotonic() - t0, 6)})
            return isolate

        host = ObjectHost(self.store, IsolatedClass(spawn), None, lambda k: self.owned[k], self.ship, self.mode)
        self.runtimes[(script, cls_name)] = (version, host)
        return host

    async def _fetch_code(self, version: str) -> dict[str, Any]:
        if not version.replace("-", "").isalnum():
            raise Refused(400, "bad_version", True, detail="a version is letters, digits and '-'")
        errors = []
        for address, port in self.controls:
            try:
                status, artifact = await signed_call(self.session, self.signer, "GET", address, port,
                                                     f"/v1/artifacts/{version}", timeout=2.0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{address}: {exc!r}")
                continue
            if status == 200 and isinstance(artifact, dict):
                return artifact
            errors.append(f"{address} answered {status}")
        raise Refused(502, "code_unavailable", True, detail="the control plane: " + "; ".join(errors))

    async def call(self, data: dict[str, Any]) -> dict[str, Any]:
        """Run one stub call; raises Refused saying whether anything may have taken effect."""
        key, epoch = str(data["key"]), int(data["epoch"])
        try:
            key_parts(key)
        except ValueError:
            raise Refused(400, "bad_key", True, detail="key must be script/Class/id") from None
        if not self.lease_ok():
            raise Refused(503, "lease_expired", True)
        if self.owned.get(key, 0) < epoch or key not in self.placements:
            await self.renew()  # a placement or promotion this host has not heard of yet
        owner, current, _backup = self.placements.get(key, (None, 0, None))
        if owner != self.region or self.owned.get(key) != epoch or current != epoch:
            raise Refused(421, "not_owner", True, owner=owner, epoch=current)
        runtime = await self.runtime(key, str(data["version"]))
        raw = data.get("request", {})
        request = Request(str(raw.get("method", "GET")), str(raw.get("url", "/")), dict(raw.get("headers", {})),
                          base64.b64decode(raw.get("body", "")))
        try:
            response, wrote = await runtime.call(key, request)
        except FencedAfterCommit as exc:  # it wrote here first: it may surface if this host owns it again
            raise Refused(409, "fenced", False, detail=str(exc)) from None
        except Fenced as exc:
            raise Refused(409, "fenced", True, detail=str(exc)) from None
        except ShipError as exc:
            raise Refused(503, "backup_unreachable", False, detail=str(exc)) from None
        except DeployError as exc:  # no isolate could be made for it: nothing ran
            raise Refused(400, "load_error", True, detail=str(exc)) from None
        except Exception as exc:  # the object's own code failed; what it wrote before stays
            raise Refused(500, "object_error", False, detail=f"{type(exc).__name__}: {exc}") from None
        if not wrote and not self.lease_ok():
            # A read that finished after the lease ran out may have missed a new owner's write.
            raise Refused(503, "lease_expired", True)
        if self.owned.get(key) != epoch:
            # The object moved while the call ran: a read may have missed the new owner's writes (it is
            # refused, and certainly had no effect); a write happened here, at an epoch no longer current.
            if wrote:
                raise Refused(503, "owner_changed", False, detail=f"{key} moved past epoch {epoch} during the call")
            raise Refused(421, "not_owner", True, owner=self.placements.get(key, (None,))[0], epoch=epoch)
        if (key, epoch) not in self.served:
            self.served.add((key, epoch))
            self._event({"event": "first_served", "key": key, "epoch": epoch})
        return {"status": response.status, "headers": response.headers,
                "body": base64.b64encode(response.body).decode(), "owner": self.region, "epoch": epoch}

    def backup_changes(self, cursors: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """What the backup service has not seen of the objects this host owns, from its ``cursors`` (key →
        [epoch, seq] it holds): the log after the cursor when it follows this copy's history and the log
        still has it, else the whole object. Raises ValueError/TypeError for a malformed cursor."""
        out: dict[str, dict[str, Any]] = {}
        if not self.lease_ok():
            return out  # a host without a lease may have been replaced: its copies are not the objects
        for key in list(self.owned):
            store = self.store(key)
            raw = cursors.get(key)
            epoch, seq = (int(raw[0]), int(raw[1])) if raw is not None else (0, 0)
            if seq == store.seq and (seq == 0 or epoch >= store.data_epoch):
                continue  # nothing new
            if epoch == store.data_epoch and seq < store.seq:
                entries = store.log_since(seq)
                if entries and int(entries[0]["seq"]) == seq + 1:
                    out[key] = {"entries": entries}
                    continue
            out[key] = {"snapshot": store.snapshot()}
        return out

    async def restore(self, key: str, data: dict[str, Any]) -> int:
        """Replace an owned object's data with ``data`` (one write at its epoch, between its events:
        the store's commits are serialized) and ship it to its backup region. Raises Refused."""
        key_parts(key)
        if not self.lease_ok():
            raise Refused(503, "lease_expired", True)
        epoch = self.owned.get(key)
        if epoch is None:
            raise Refused(421, "not_owner", True, owner=self.placements.get(key, (None,))[0])
        store = self.store(key)
        before = store.seq
        with store.transaction(epoch) as tx:
            for k in store.list():
                if k not in data:
                    tx.delete(k)
            for k, v in data.items():
                tx.put(str(k), v)
        self._drop(key)  # an instance's state in memory would be the old data's
        entries = store.log_since(before)
        try:
            await self.ship(key, entries)
        except ShipError as exc:
            raise Refused(503, "backup_unreachable", False, detail=str(exc)) from None
        self._event({"event": "restored", "key": key, "epoch": epoch, "seq": store.seq})
        return store.seq

    def status(self) -> dict[str, Any]:
        ship_lag = [lag for _version, runtime in self.runtimes.values() for lag in runtime.ship_lag]
        return {"region": self.region, "mode": self.mode, "lease_ok": self.lease_ok(),
                "lease_left_s": round(self.lease_until - monotonic(), 3), "owned": len(self.owned),
                "auth_refused": self.verifier.refused, "refused": self.refused,
                "copies": len(self.stores), "unprotected_writes": self.unprotected,
                "ship_lag_s": {"p50": quantile(ship_lag, 0.5), "p99": quantile(ship_lag, 0.99),
                               "max": max(ship_lag, default=None)},
                "async_ship_failures": sum(runtime.ship_failures for _v, runtime in self.runtimes.values()),
                "objects": {k: {"epoch": e, "seq": self.store(k).seq,
                                "backup": self.placements.get(k, ("", 0, None))[2],
                                "seeded": self.seeded.get(k)}
                            for k, e in sorted(self.owned.items())}}


def make_app(host: Host, outer: tuple[Any, ...] = ()) -> web.Application:
    """The host's HTTP API (its session and lock are made by :meth:`Host.open`)."""

    async def call(request: web.Request) -> web.Response:
        try:
            return web.json_response(await host.call(await request.json()))
        except Refused as exc:
            return exc.response()
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": "bad_request", "definite": True, "detail": str(exc)}, status=400)

    async def replicate(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            key, entries = str(data["key"]), list(data["entries"])
            key_parts(key)
            epoch = max((int(e["epoch"]) for e in entries), default=0)
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        refusal = await host.check_sender(key, request[PEER], epoch)
        if refusal is not None:
            return refusal
        store = host.store(key)
        if entries and int(entries[0]["epoch"]) < store.epoch:
            return web.json_response({"error": "fenced", "epoch": store.epoch}, status=409)
        if not store.follows(entries):
            return web.json_response({"error": "need_snapshot", "seq": store.seq}, status=409)
        try:
            return web.json_response({"seq": store.replay(entries)})
        except Fenced:
            return web.json_response({"error": "fenced", "epoch": store.epoch}, status=409)
        except AnylabError:
            return web.json_response({"error": "need_snapshot", "seq": store.seq}, status=409)

    async def install(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            key, snapshot = str(data["key"]), dict(data["snapshot"])
            key_parts(key)
            epoch, _seq, _data = int(snapshot["epoch"]), int(snapshot["seq"]), dict(snapshot["data"])
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        refusal = await host.check_sender(key, request[PEER], epoch)
        if refusal is not None:
            return refusal
        try:
            return web.json_response({"seq": host.store(key).install(snapshot)})
        except Fenced:
            return web.json_response({"error": "fenced"}, status=409)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(host.status())

    async def backup_changes(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            cursors = dict(data["cursors"])
            return web.json_response({"objects": host.backup_changes(cursors)})
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)

    async def restore(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            key, values = str(data["key"]), dict(data["data"])
            return web.json_response({"seq": await host.restore(key, values)})
        except Refused as exc:
            return exc.response()
        except Fenced as exc:
            return web.json_response({"error": "fenced", "definite": True, "detail": str(exc)}, status=409)
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)

    app = web.Application(client_max_size=MAX_BODY, middlewares=[*outer, peer_middleware(host.verifier, HOST_POLICY)])
    app.router.add_post("/v1/call", call)
    app.router.add_post("/v1/replicate", replicate)
    app.router.add_post("/v1/install", install)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/backup/changes", backup_changes)
    app.router.add_post("/v1/restore", restore)
    return app


async def serve(cfg: dict[str, Any], handle_signals: bool = True, spawner: IsolateSpawner | None = None) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``), the objects in ``spawner``'s
    isolates."""
    host = Host(cfg, spawner)
    host.open()
    app = make_app(host, (service_metrics(cfg, Metrics("do-host")),))
    await run_service(app, cfg, [host.keep_lease(), host.snapshots()], host.close, handle_signals)


def main() -> None:
    """The objects' isolates come from a spawner forked before any event loop or thread exists."""
    spawner = IsolateSpawner(sandboxed=True)
    spawner.start()
    try:
        service_main(functools.partial(serve, spawner=spawner), __doc__ or "")
    finally:
        spawner.stop()


if __name__ == "__main__":
    main()
