"""The Durable Object directory on the control node: which region owns each object, at which epoch,
with which backup; which regions are live; failover when a region's lease runs out.

Every region's DO host renews a **lease** here every ``renew_s``; its lease lasts ``lease_s`` from when it
*sent* the renewal, and it serves nothing once the lease ran out. The directory declares the region down
``lease_s + margin_s`` after the last renewal it *received* — strictly later than the host stopped
serving, on the one CLOCK_MONOTONIC all the lab's namespaces share — and only then moves the region's
objects to their backups with the next epoch (:mod:`durable.directory`). So two owners never serve the
same object at the same time, partition or not. It fails nobody over while most regions are silent at
once: then it is the directory that is cut off.

HTTP on the lab network (hosts, PoP routers) and on ``do.sock`` (the operator):

``POST /v1/lease``  ``{region, objects: {key: {seq, shipped, lag_s}}}`` → ``{lease_s, objects: {key:
[owner, epoch, backup]}, regions: {name: [address, port]}}`` (a region declared down that renews is
live again; what it owned is owned elsewhere now, which the answer says)
``GET /v1/where?key=K&hint=R`` → ``{owner, epoch, backup, address, port, incarnation}``, placing the object
on its first call; 503 when its owner is down with no backup to take over
``GET /v1/objects`` → regions (live, age of the last renewal) and objects (placement, lag)

Every decision is a JSON line in ``events`` (``time`` on CLOCK_MONOTONIC): ``region_down`` (with the
objects moved), ``promote`` (per object), ``region_up``, ``route`` (the first ``where`` answered with an
object's new epoch).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from core import peer_auth
from core.clock import monotonic
from core.metrics import Metrics, service_metrics
from core.peer_auth import Verifier
from core.service import PEER, peer_middleware, run_service, service_main
from durable import directory
from durable.directory import Place, Placement, RegionDown, RegionUp, Seeded

#: Who may call what on the lab network (``do.sock`` is the operator's): hosts renew their own region's
#: lease, the PoPs' routers ask where objects are.
DIRECTORY_POLICY = peer_auth.prefix_policy({"POST /v1/lease": ("do-host",), "GET /v1/where": ("do-router",)})


class Directory:
    """The directory's state and its lease clock; all on one event loop."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.regions: dict[str, tuple[str, int]] = {r: (a, int(p)) for r, (a, p) in cfg["regions"].items()}
        self.lease_s = float(cfg.get("lease_s", 1.0))
        self.renew_s = float(cfg.get("renew_s", 0.1))
        self.margin_s = float(cfg.get("margin_s", 0.25))
        self.state_file = Path(cfg["state"])
        self.events = Path(cfg["events"])
        self.state = self._load()
        now = monotonic()
        self.last_seen = {r: now for r in self.regions}  # a (re)start gives every host a whole lease
        self.reports: dict[str, dict[str, Any]] = {}
        self.routed: set[tuple[str, int]] = set()
        self.isolated = False
        #: Bumped each time a region comes back: the routers' circuit breakers are per incarnation of an
        #: owner (one opened against a host that failed says nothing about the host that returned).
        self.incarnation = dict.fromkeys(self.regions, 0)
        self.verifier = Verifier.load(cfg["auth"], f"{cfg['listen'][0]}:{cfg['listen'][1]}")
        #: Authenticated requests refused, by reason (a host renewing another region's lease).
        self.refused = {"other_region": 0}
        self.metrics = Metrics("do-directory")
        #: Regions failed over (their objects promoted in their backups): the DoFailover alert's signal.
        self.failovers = self.metrics.counter("do_failovers", "Regions failed over by the directory", ("region",))
        for region in self.regions:  # from 0: Prometheus's increase() needs the series before the first
            self.failovers.labels(region)
        live = self.metrics.gauge("do_regions_live", "Regions whose DO host holds its lease")
        live.set_function(lambda: len(self.state.live))

    def _load(self) -> directory.State:
        state = directory.initial(list(self.regions))
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            objects = {k: Placement(o, e, b, bool(rest and rest[0]))
                       for k, (o, e, b, *rest) in saved["objects"].items()}
            state = directory.State(state.regions, frozenset(saved["live"]) & set(self.regions), objects)
        return state

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        objects = {k: [p.owner, p.epoch, p.backup, p.seeded] for k, p in self.state.objects.items()}
        tmp.write_text(json.dumps({"live": sorted(self.state.live), "objects": objects}))
        tmp.replace(self.state_file)

    def _event(self, event: dict[str, Any]) -> None:
        with self.events.open("a") as f:
            f.write(json.dumps({"time": monotonic(), **event}) + "\n")

    def _step(self, event: Any) -> list[directory.Action]:
        self.state, actions = directory.step(self.state, event)
        self._save()
        return actions

    def renew(self, region: str, objects: dict[str, Any]) -> dict[str, Any]:
        """A lease renewal from ``region``'s host; raises KeyError for an unknown region."""
        if region not in self.regions:
            raise KeyError(region)
        self.last_seen[region] = monotonic()
        self.reports[region] = objects
        for key, report in objects.items():  # the owner's word that the backup holds a copy
            p = self.state.objects.get(key)
            shipped = report.get("shipped_to") if isinstance(report, dict) else None
            if p is not None and p.owner == region and not p.seeded and shipped == p.backup and shipped:
                self._step(Seeded(key, str(shipped)))
        if region not in self.state.live:
            self.incarnation[region] += 1
            reseeds = self._step(RegionUp(region))
            self._event({"event": "region_up", "region": region, "reseeds": len(reseeds)})
        return {"lease_s": self.lease_s, "renew_s": self.renew_s,
                "objects": {k: [p.owner, p.epoch, p.backup] for k, p in self.state.objects.items()},
                "regions": {r: list(a) for r, a in self.regions.items()}}

    def check_leases(self) -> None:
        """Declare down every live region whose lease ran out (plus the margin) — unless most regions
        went silent at once: then it is this directory that is cut off, and failing them over would
        only move objects away from hosts that are fine (they stop serving on their own meanwhile)."""
        now = monotonic()
        fresh = [r for r in self.regions if now - self.last_seen[r] <= self.lease_s + self.margin_s]
        if 2 * len(fresh) <= len(self.regions):
            if not self.isolated:
                self.isolated = True
                self._event({"event": "directory_isolated", "renewing": fresh})
            return
        self.isolated = False
        for region in sorted(self.state.live):
            silent = now - self.last_seen[region]
            if silent > self.lease_s + self.margin_s:
                actions = self._step(RegionDown(region))
                self.failovers.labels(region).inc()
                promoted = [a for a in actions if a.kind == "promote"]
                self._event({"event": "region_down", "region": region, "silent_s": silent,
                             "moved": len(promoted)})
                for a in promoted:
                    self._event({"event": "promote", "key": a.object_id, "region": a.region, "epoch": a.epoch})

    def where(self, key: str, hint: str | None) -> dict[str, Any]:
        """The object's placement (placing it first if new); raises LookupError if it has no live owner."""
        if key not in self.state.objects:
            self._step(Place(key, hint))
        p = self.state.objects[key]
        if p.owner not in self.state.live:
            raise LookupError(f"the owner region {p.owner} is down and the object has no backup to take over")
        if p.epoch > 1 and (key, p.epoch) not in self.routed:
            self.routed.add((key, p.epoch))
            self._event({"event": "route", "key": key, "region": p.owner, "epoch": p.epoch})
        address, port = self.regions[p.owner]
        return {"owner": p.owner, "epoch": p.epoch, "backup": p.backup, "address": address, "port": port,
                "incarnation": self.incarnation[p.owner]}

    def listing(self) -> dict[str, Any]:
        now = monotonic()
        reported: dict[str, Any] = {}
        for region_objects in self.reports.values():
            reported.update(region_objects)
        return {"lease_s": self.lease_s, "margin_s": self.margin_s, "auth_refused": self.verifier.refused,
                "refused": self.refused,
                "regions": {r: {"live": r in self.state.live, "last_renewal_s": round(now - self.last_seen[r], 3)}
                            for r in self.regions},
                "objects": {k: {"owner": p.owner, "epoch": p.epoch, "backup": p.backup,
                                **reported.get(k, {})} for k, p in sorted(self.state.objects.items())}}

    async def watch(self) -> None:
        while True:
            self.check_leases()
            await asyncio.sleep(self.renew_s / 2)  # the lease clock's tick, not a wait for something


def make_app(d: Directory, outer: tuple[Any, ...] = ()) -> web.Application:
    """The directory's HTTP API."""

    async def lease(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            region, objects = str(data["region"]), dict(data.get("objects", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        role, name = request[PEER]
        if role == "do-host" and name != region:
            d.refused["other_region"] += 1
            return web.json_response({"error": "other_region",
                                      "detail": f"the host of {name} may renew only its own lease, not {region}'s"},
                                     status=403)
        try:
            return web.json_response(d.renew(region, objects))
        except KeyError:
            return web.json_response({"error": f"unknown region {region!r}"}, status=400)

    async def where(request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        if not key:
            return web.json_response({"error": "key= is required"}, status=400)
        try:
            return web.json_response(d.where(key, request.query.get("hint") or None))
        except (LookupError, ValueError) as exc:  # no live owner; no live region to place it in
            return web.json_response({"error": "unavailable", "detail": str(exc)}, status=503)

    async def objects(request: web.Request) -> web.Response:
        return web.json_response(d.listing())

    app = web.Application(middlewares=[*outer, peer_middleware(d.verifier, DIRECTORY_POLICY)])
    app.router.add_post("/v1/lease", lease)
    app.router.add_get("/v1/where", where)
    app.router.add_get("/v1/objects", objects)
    app.router.add_get("/v1/status", objects)
    return app


async def serve(cfg: dict[str, Any], handle_signals: bool = True) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT with ``handle_signals``)."""
    d = Directory(cfg)

    async def nothing() -> None:
        return None

    await run_service(make_app(d, (service_metrics(cfg, d.metrics),)), cfg, [d.watch()], nothing, handle_signals)


if __name__ == "__main__":
    service_main(serve, __doc__ or "")
