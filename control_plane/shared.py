"""The control plane's state shared by every region through etcd: a region's :class:`~control_plane.store.View`
kept current by a watch, quorum watched, and every write a compare-and-swap transaction.

- **Reads** (what a PoP should run, listings) come from the view. :meth:`Shared.follow` loads every key
  with a linearizable range, then watches from the next revision; if the watch breaks it loads again. A
  watch can also go quiet without breaking (its member was cut off, a TCP stream that is silently
  dropped): the quorum check sees etcd's revision ahead of the view for :data:`QUORUM_TIMEOUT_S` and
  starts the watch over; until the view caught up the region does not serve.
- **Quorum**: :meth:`Shared.check_quorum` does a linearizable read every :data:`QUORUM_PERIOD_S`; a
  region whose reads fail for :data:`QUORUM_TIMEOUT_S` (its member cut off in the minority, or every
  member down) is *not serving*: its API refuses PoP syncs with 503 so that its PoPs go to another region,
  and its writes fail (etcd refuses them without a quorum).
- **Writes** (:meth:`Shared.write`): the change is computed from the view, then committed by one etcd
  transaction comparing the mod revision of every key it read (and that the request's id is new); a
  compare that fails means another region wrote first: the keys are read again and the change computed
  again. A write is acknowledged only after etcd committed it, i.e. after a majority of the members wrote
  it to disk. When etcd cannot be reached the write raises :class:`Unavailable`: not acknowledged — it may
  still have been committed (a timeout), which is why an operator's request carries an id: the same request
  sent to another region finds the reply of the first instead of doing it twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from control_plane.etcd import Etcd, EtcdError, mod_is, put
from control_plane.store import PREFIX, ApiError, Conflict, View, key
from core.clock import monotonic

#: The test-only weakening (``ANYLAB_WEAKEN=cp``, :mod:`lab.run.launchers`): writes without their compares
#: (the last writer wins), and one etcd does not take is acknowledged from the region's own view — what a
#: control plane that "accepts and syncs later" does. bench/control_plane.py shows it lose deploys.
WEAK_WRITES = "blind-and-local"
QUORUM_PERIOD_S = 0.25
QUORUM_TIMEOUT_S = 1.0
#: Attempts of one write when other regions keep writing the same keys first.
WRITE_ATTEMPTS = 8


class Unavailable(ApiError):
    status = 503


#: A write: from the view, the keys it read (with the view's mod revisions), what it puts, and its reply.
Change = Callable[[View], tuple[list[str], dict[str, bytes], dict[str, Any]]]


class Shared:
    def __init__(self, view: View, etcd: Etcd, region: str, weaken: str | None = None) -> None:
        self.view, self.etcd, self.region = view, etcd, region
        self.weak = weaken == WEAK_WRITES
        self.loaded = False
        self.quorum = False
        self.quorum_since = monotonic()
        self.last_ok = 0.0
        self.last_error = "not yet in touch with etcd"
        self.changed = asyncio.Condition()
        #: Since when etcd's revision has been ahead of the view (None: it is not).
        self.behind_since: float | None = None
        self.watch_task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        """Whether this region answers the PoPs: its view loaded and current, etcd's quorum within reach."""
        behind = self.behind_since is not None and monotonic() - self.behind_since >= QUORUM_TIMEOUT_S
        return self.loaded and self.quorum and not behind

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _load(self) -> int:
        kvs, revision = await self.etcd.range(PREFIX, prefix=True)
        fresh = View(self.view.configured.values())
        for kv in kvs:
            if not kv.key.startswith(PREFIX + "req/"):
                fresh.apply(kv.key, kv.value, kv.mod_revision)
        fresh.revision = max(fresh.revision, revision)
        self.view.take(fresh)
        self.loaded = True
        await self.notify()
        return revision

    async def _watch(self) -> None:
        revision = await self._load()
        async for rev, events in self.etcd.watch(PREFIX, revision + 1):
            changed = False
            for e in events:
                if not e.key.startswith(PREFIX + "req/"):
                    changed |= self.view.apply(e.key, e.value, e.mod_revision)
            self.view.revision = max(self.view.revision, rev)
            if changed:
                await self.notify()

    async def follow(self) -> None:
        """Keep the view current until cancelled (see the module docstring); never raises for etcd."""
        while True:
            self.watch_task = asyncio.create_task(self._watch())
            try:
                await self.watch_task
            except (EtcdError, ValueError, KeyError) as exc:
                self.last_error = f"watch: {exc}"
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # follow itself is cancelled; else the quorum check restarted a quiet watch
                self.last_error = "watch: quiet while etcd moved on; started over"
            await asyncio.sleep(0.1)  # then load again: a broken watch may have missed a deletion

    async def check_quorum(self) -> None:
        """Keep :attr:`quorum` true while linearizable reads succeed; until cancelled."""
        while True:
            t = monotonic()
            try:
                _kvs, revision = await self.etcd.range(PREFIX + "quorum", timeout=QUORUM_TIMEOUT_S, race=True)
                self.last_ok = monotonic()
                self._check_behind(revision)
                if not self.quorum:
                    self.quorum, self.quorum_since = True, self.last_ok
                    await self.notify()
            except EtcdError as exc:
                self.last_error = str(exc)
                if self.quorum and monotonic() - self.last_ok >= QUORUM_TIMEOUT_S:
                    self.quorum, self.quorum_since = False, monotonic()
                    await self.notify()  # the long polls answer 503 now: their PoPs move on
            await asyncio.sleep(max(0.0, QUORUM_PERIOD_S - (monotonic() - t)))

    def _check_behind(self, revision: int) -> None:
        """Every write is under PREFIX, so etcd's revision is the last change the view should have seen."""
        if revision <= self.view.revision or not self.loaded:
            self.behind_since = None
            return
        if self.behind_since is None:
            self.behind_since = self.last_ok
        elif self.last_ok - self.behind_since >= QUORUM_TIMEOUT_S and self.watch_task is not None:
            self.watch_task.cancel()
            self.behind_since = self.last_ok  # a new watch gets its own time to catch up

    async def earlier_reply(self, request_id: str) -> dict[str, Any] | None:
        """The reply already given to ``request_id`` (in any region), or None."""
        try:
            kvs, _rev = await self.etcd.range(key("req", request_id))
        except EtcdError as exc:
            if self.weak:
                return None  # weakened: goes ahead and "accepts" it
            raise Unavailable(self._unavailable(exc)) from None
        if not kvs:
            return None
        reply: dict[str, Any] = json.loads(kvs[0].value)
        return {**reply, "revision": kvs[0].mod_revision}

    def _unavailable(self, exc: EtcdError) -> str:
        return (f"the control plane in region {self.region} cannot reach an etcd quorum ({exc}); nothing "
                "was acknowledged: send the request to another region")

    async def write(self, change: Change, request_id: str | None = None) -> dict[str, Any]:
        """Commit ``change``; its reply with ``revision`` (the etcd revision it was committed at). Raises
        what ``change`` raises (ApiError), Unavailable (not acknowledged), or Conflict after
        WRITE_ATTEMPTS lost races."""
        if request_id is not None:
            earlier = await self.earlier_reply(request_id)
            if earlier is not None:
                return {**earlier, "repeated": True}
        for _attempt in range(WRITE_ATTEMPTS):
            read, puts, reply = change(self.view)
            if not puts and request_id is None:  # nothing to write (the same upload again): no transaction
                return {**reply, "revision": self.view.revision}
            compares = [] if self.weak else [mod_is(k, self.view.mod.get(k, 0)) for k in read]
            ops = [put(k, v) for k, v in puts.items()]
            if request_id is not None:  # the reply, in the same transaction (its revision is the key's)
                compares.append(mod_is(key("req", request_id), 0))
                ops.append(put(key("req", request_id), json.dumps(reply).encode()))
            try:
                ok, revision, _ = await self.etcd.txn(compares, ops)
            except EtcdError as exc:
                if not self.weak:
                    raise Unavailable(self._unavailable(exc)) from None
                ok, revision = True, self.view.revision  # weakened: "accepted", kept in this region only
            if ok:
                for k, v in puts.items():
                    self.view.apply(k, v, revision)
                await self.notify()
                return {**reply, "revision": revision}
            if request_id is not None:
                earlier = await self.earlier_reply(request_id)
                if earlier is not None:
                    return {**earlier, "repeated": True}
            try:  # another region wrote one of these keys first: read them again and start over
                for k in read:
                    kvs, _rev = await self.etcd.range(k)
                    self.view.apply(k, kvs[0].value if kvs else None, kvs[0].mod_revision if kvs else 0)
            except EtcdError as exc:
                raise Unavailable(self._unavailable(exc)) from None
        raise Conflict("other regions kept changing the same worker; try again")
