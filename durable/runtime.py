"""Running Durable Objects on their owner: one instance per object, its events one at a time (input
gate), its answers held until what they depend on is durable as configured (output gate), one alarm each.

Object code has the Workers shape::

    class Room:
        def __init__(self, state, env): ...
        async def fetch(self, request): ...          # request: tenant.worker_api.Request
        async def alarm(self): ...                   # optional

``state.storage`` is the object's :class:`~durable.storage.ObjectStore` seen at the owner's epoch
(``get/put/delete/list``, ``transaction()``), plus ``set_alarm(at)``/``get_alarm()``/``delete_alarm()``.
On a host the class runs in a sandboxed isolate per object (:class:`IsolatedClass`); there the storage is
:class:`tenant.isolate.ObjectStorage`, every call made by the host, and ``transaction()`` is ``async with``
(``await tx.get``). A plain class (the unit tests of the gates) runs in-process.

- **Input gate**: an object handles one event (a fetch or its alarm) at a time, in arrival order.
- **Output gate**: after the event, what it wrote is shipped to the backup by ``ship`` (the host's
  replication: an awaitable taking the new log entries). In ``sync`` mode the answer leaves only after
  ``ship`` returned (RPO 0); in ``async`` mode it leaves at once and shipping follows (the design's
  RPO < 1 s; the lag is what ``ship_lag`` reports).
- **Alarms**: at most one per object; run at least once at or after their time, retried with backoff
  (0.1 s doubling, ≤ 5 tries) when ``alarm()`` raises; setting a new one replaces the old.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.clock import monotonic
from durable.storage import Fenced, ObjectStore
from tenant.isolate import Isolate, StorageRefused
from tenant.worker_api import Request, Response, to_response

Ship = Callable[[str, list[dict[str, Any]]], Awaitable[None]]
ALARM_RETRIES = 5


class Storage:
    """``state.storage``: the object's store at the owner's epoch, and its alarm."""

    def __init__(self, store: ObjectStore, epoch: int, host: ObjectHost, object_id: str) -> None:
        self._store, self._epoch, self._host, self._id = store, epoch, host, object_id

    async def get(self, key: str) -> Any:
        return self._store.get(key)

    async def put(self, key: str, value: Any) -> None:
        self._store.put(key, value, self._epoch)

    async def delete(self, key: str) -> None:
        self._store.delete(key, self._epoch)

    async def list(self, prefix: str = "") -> dict[str, Any]:
        return self._store.list(prefix)

    def transaction(self) -> Any:
        return self._store.transaction(self._epoch)

    async def set_alarm(self, at_monotonic: float) -> None:
        self._host.set_alarm(self._id, at_monotonic)

    async def get_alarm(self) -> float | None:
        return self._host.alarms.get(self._id)

    async def delete_alarm(self) -> None:
        self._host.set_alarm(self._id, None)


@dataclass
class State:
    id: str
    storage: Storage


@dataclass
class Live:
    """One object on this host."""

    instance: Any
    store: ObjectStore
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    shipped: int = 0
    shipping: asyncio.Lock = field(default_factory=asyncio.Lock)


class ObjectHost:
    """The objects one node owns. ``cls`` is the object class from the deployment's code."""

    def __init__(self, open_store: Callable[[str], ObjectStore] | Path, cls: Callable[[State, Any], Any], env: Any,
                 epoch_of: Callable[[str], int], ship: Ship, mode: str = "sync") -> None:
        if mode not in ("sync", "async"):
            raise ValueError(f"mode {mode!r}: sync or async")
        if isinstance(open_store, Path):
            root = open_store
            open_store = lambda oid: ObjectStore(root / f"{oid}.db")  # noqa: E731
        self.open_store, self.cls, self.env, self.epoch_of, self.ship, self.mode = (
            open_store, cls, env, epoch_of, ship, mode)
        self.objects: dict[str, Live] = {}
        self.alarms: dict[str, float] = {}
        self._alarm_tasks: dict[str, asyncio.Task[None]] = {}
        self.background: set[asyncio.Task[None]] = set()
        self.ship_lag: list[float] = []
        self.ship_failures = 0

    def _live(self, object_id: str) -> Live:
        live = self.objects.get(object_id)
        if live is None:
            store = self.open_store(object_id)
            store.fence(self.epoch_of(object_id))
            state = State(object_id, Storage(store, self.epoch_of(object_id), self, object_id))
            live = Live(self.cls(state, self.env), store, shipped=store.seq)
            self.objects[object_id] = live
        return live

    async def _ship(self, object_id: str, live: Live) -> None:
        async with live.shipping:  # one shipment at a time per object, in log order
            entries = live.store.log_since(live.shipped)
            if entries:
                t0 = monotonic()
                await self.ship(object_id, entries)
                live.shipped = entries[-1]["seq"]
                self.ship_lag.append(monotonic() - t0)
                del self.ship_lag[:-1000]  # the recent ones are what the lag is about

    def drop(self, object_id: str) -> None:
        """Forget the object's instance (its owner or epoch changed): the next event makes a new one at
        the epoch ``epoch_of`` says; its alarm is cancelled (and an isolated object's isolate killed)."""
        live = self.objects.pop(object_id, None)
        close = getattr(live.instance, "close", None) if live is not None else None
        if close is not None:
            close()
        task = self._alarm_tasks.pop(object_id, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        """Drop every object (their isolates die): the host is going away."""
        for object_id in list(self.objects):
            self.drop(object_id)

    async def _ship_later(self, object_id: str, live: Live) -> None:
        """Async mode's shipping: a failure is counted (the next event ships what is left)."""
        try:
            await self._ship(object_id, live)
        except Exception:
            self.ship_failures += 1

    async def _event(self, object_id: str, run: Callable[[Any], Awaitable[Any]]) -> tuple[Any, bool]:
        """One event through both gates: (its result, whether it wrote). Raises Fenced when nothing of it
        was written, FencedAfterCommit when some of it was (then it may or may not survive)."""
        live = self._live(object_id)
        async with live.gate:  # input gate: one event at a time
            seq0 = live.store.seq
            try:
                result = await run(live.instance)
            except Fenced as exc:
                if live.store.seq != seq0:  # an earlier write of this event committed before the fence
                    raise FencedAfterCommit(str(exc)) from None
                raise
            wrote = live.store.seq != seq0
            if self.mode == "sync":
                try:
                    await self._ship(object_id, live)  # output gate: durable at the backup first
                except Fenced as exc:
                    if wrote:  # committed here, refused by a backup at a newer epoch: not "did not happen"
                        raise FencedAfterCommit(str(exc)) from None
                    raise
            else:
                task = asyncio.create_task(self._ship_later(object_id, live))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
            return result, wrote

    async def fetch(self, object_id: str, request: Request) -> Response:
        """Deliver a request to the object (its fetch), through both gates. Exceptions of the object's
        code propagate (Fenced among them: this node is no longer the owner)."""
        return (await self.call(object_id, request))[0]

    async def call(self, object_id: str, request: Request) -> tuple[Response, bool]:
        """:meth:`fetch`, and whether the event wrote anything (a read-only answer can still be refused
        after the fact, e.g. when the owner's lease ran out meanwhile)."""
        result, wrote = await self._event(object_id, lambda obj: obj.fetch(request))
        return to_response(result), wrote

    def set_alarm(self, object_id: str, at: float | None) -> None:
        old = self._alarm_tasks.pop(object_id, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        if at is None:
            self.alarms.pop(object_id, None)
            return
        self.alarms[object_id] = at
        self._alarm_tasks[object_id] = asyncio.create_task(self._alarm(object_id, at))

    async def _alarm(self, object_id: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - monotonic()))  # the alarm's own time, not a poll
        delay = 0.1
        for attempt in range(ALARM_RETRIES):
            try:
                if self.alarms.get(object_id) == at:
                    self.alarms.pop(object_id, None)
                await self._event(object_id, lambda obj: obj.alarm())
                return
            except Exception:
                if attempt == ALARM_RETRIES - 1:
                    raise
                self.alarms.setdefault(object_id, at)
                await asyncio.sleep(delay)  # the retry backoff
                delay *= 2


class FencedAfterCommit(Exception):
    """An event's write committed on this host, and then this host turned out not to own the object any
    more (a later write fenced, or the backup is at a newer epoch): the write may or may not survive."""


class ObjectFailed(Exception):
    """The object's code failed in its isolate (its error code and detail): what it wrote stays."""


class IsolatedClass:
    """A Durable Object class whose objects each run in a sandboxed isolate of their own
    (:class:`tenant.isolate.IsolateSpawner`, ``do_class``): called like the class, ``(state, env)``, it
    makes an :class:`IsolatedObject`. The host never runs the class's code itself."""

    def __init__(self, spawn: Callable[[], Awaitable[Isolate]]) -> None:
        self.spawn = spawn

    def __call__(self, state: State, env: Any) -> IsolatedObject:
        return IsolatedObject(self.spawn, state)


class IsolatedObject:
    """One Durable Object in its isolate: events go to the isolate, its storage calls come back here and
    are made on ``state.storage`` (the owner's store at its epoch). An isolate that died (a limit, a
    crash) is replaced at the next event; the object's in-memory fields go with it, its storage stays."""

    def __init__(self, spawn: Callable[[], Awaitable[Isolate]], state: State) -> None:
        self.spawn, self.state = spawn, state
        self.isolate: Isolate | None = None
        self.fenced: Fenced | None = None

    async def _event(self, request: Request, alarm: bool) -> Response:
        """Raises Fenced (a write was refused: this host no longer owns the object), ObjectFailed, and
        DeployError when no isolate could be made."""
        if self.isolate is None or self.isolate.dead:
            self.isolate = await self.spawn()
            self.isolate.on_store = self._store
        self.fenced = None
        result = await self.isolate.acall(request, {"id": self.state.id, **({"alarm": True} if alarm else {})})
        if self.fenced is not None:
            raise self.fenced
        if result.error is not None:
            raise ObjectFailed(f"{result.error}: {result.response.body[:300].decode(errors='replace')}")
        return result.response

    async def fetch(self, request: Request) -> Response:
        return await self._event(request, False)

    async def alarm(self) -> None:
        await self._event(Request("POST", "/alarm", {}, b""), True)

    def close(self) -> None:
        if self.isolate is not None:
            self.isolate.kill()

    async def _store(self, call: dict[str, Any]) -> Any:
        """One storage call of the object's code (:class:`tenant.isolate.ObjectStorage`); raises
        StorageRefused with the reason the code is told."""
        storage, op = self.state.storage, call.get("op")
        try:
            if op == "get":
                return await storage.get(str(call["key"]))
            if op == "put":
                await storage.put(str(call["key"]), call.get("value"))
                return None
            if op == "delete":
                await storage.delete(str(call["key"]))
                return None
            if op == "list":
                return await storage.list(str(call.get("prefix", "")))
            if op == "commit":
                with storage.transaction() as tx:
                    for kind, key, value in call["ops"]:
                        if kind == "put":
                            tx.put(str(key), value)
                        else:
                            tx.delete(str(key))
                return None
            if op == "set_alarm":
                at = call.get("at")
                await (storage.delete_alarm() if at is None else storage.set_alarm(float(at)))
                return None
            if op == "get_alarm":
                return await storage.get_alarm()
        except Fenced as exc:
            self.fenced = exc
            raise StorageRefused("fenced: this host no longer owns the object") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageRefused(f"bad storage call: {exc!r}") from None
        raise StorageRefused(f"unknown storage operation {op!r}")
