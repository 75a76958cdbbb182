"""The PoP server's side of the control plane: pull what this PoP should run, keep it on disk, switch.

:class:`LocalStore` is the server's disk: ``artifacts/<version>.json`` (immutable, written only after
their SHA-256 checked out) and ``current.json`` (name → version, replaced atomically): the last good set,
which the edge worker loads at start, so a server restarted while the control plane is down serves
what it served before (the design's Level 4).

:class:`Syncer` long-polls ``POST /v1/sync`` on a control plane, reporting what is applied. It knows every
region's control plane, its own region's first (*home*), then the others nearest first:

- **Failover**: a control plane that does not answer, or answers 503 (its region has no etcd quorum), is
  tried again with the design's retries (3, after 100/200/400 ms); then the syncer moves to the next
  region. Only when no region answers is the control plane unreachable (the design's Level 4): a new
  round from home after a backoff (0.1 s doubling to 2 s), nothing served changed.
- **Back home**: while it follows another region it long-polls there for :data:`AWAY_POLL_S` at most and
  then tries home once (no retries); home answering makes it home again.
- **Code**: when the desired set differs it fetches the missing artifacts from the region it follows,
  then from the others (each region with the same retries), checks their SHA-256, and only when *all*
  are good installs the whole set in one switch; otherwise it keeps serving the old set and reports the
  error.

The HTTP client is :mod:`core.http_client` (asyncio streams + httptools' parser, not aiohttp: its import
alone would cost each PoP server ~15 MB of the lean-PoP budget).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.files import write_atomic
from core.http_client import HttpError, http_call
from core.peer_auth import Signer
from tenant.deployment import Deployment
from tenant.isolate import DeployError

RETRY_DELAYS = (0.1, 0.2, 0.4)
BACKOFF_MAX = 2.0
POLL_WAIT = 20.0
#: The longest long poll on another region's control plane: how soon a PoP looks whether home is back.
AWAY_POLL_S = 2.0
#: How long a connection to a control plane may take: far above any lab link's round trip, far below a
#: long poll, so that a silent control plane is passed over in about a second.
CONNECT_S = 1.0



class LocalStore:
    """A server's deployments on disk; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.artifacts = root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)

    def has(self, version: str) -> bool:
        return (self.artifacts / f"{version}.json").exists()

    def put(self, version: str, sha256: str, data: bytes) -> None:
        """Keep an artifact; raises DeployError (nothing written) unless its hash is ``sha256``."""
        got = hashlib.sha256(data).hexdigest()
        if got != sha256 or not sha256.startswith(version):
            raise DeployError(f"artifact {version}: SHA-256 {got[:12]}… does not match {sha256[:12]}…")
        write_atomic(self.artifacts / f"{version}.json", data)

    def current(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / "current.json").read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise DeployError(f"{self.root / 'current.json'} is corrupt: {exc}") from None
        return {str(k): str(v) for k, v in data.items()}

    def set_current(self, versions: dict[str, str]) -> None:
        write_atomic(self.root / "current.json", json.dumps(versions, sort_keys=True).encode())

    def load(self, versions: dict[str, str]) -> list[Any]:
        """The Deployments for name → version; raises DeployError naming a missing or bad artifact."""

        out = []
        for name, version in sorted(versions.items()):
            try:
                data = json.loads((self.artifacts / f"{version}.json").read_bytes())
            except FileNotFoundError:
                raise DeployError(f"{name}: artifact {version} is not on this server") from None
            except ValueError as exc:
                raise DeployError(f"{name}: artifact {version} is corrupt: {exc}") from None
            out.append(Deployment.from_json({**data, "version": version}))
        return out


@dataclass
class SyncState:
    """What the syncer last saw; written to ``sync.json`` for ``anylab deployments`` and tests."""

    applied: dict[str, str] = field(default_factory=dict)
    t_applied: float | None = None
    generation: int = -1
    reachable: bool | None = None
    since: float = field(default_factory=monotonic)
    error: str | None = None
    fetch_attempts: int = 0
    #: The control plane followed now (``address:port``), and when the syncer last moved to another one.
    following: str | None = None
    failovers: int = 0
    t_failover: float | None = None


class Syncer:
    """Keeps ``install`` fed with the set the control plane wants for this PoP; ``controls`` are the
    regions' control planes as (address, port), home first."""

    def __init__(self, store: LocalStore, install: Callable[[list[Any]], None], *,
                 controls: Sequence[tuple[str, int]], signer: Signer, pop: str, server: str,
                 poll_wait: float = POLL_WAIT, retry_delays: Iterable[float] = RETRY_DELAYS) -> None:
        if not controls:
            raise ValueError("no control plane to sync with")
        self.store, self.install = store, install
        self.controls = list(controls)
        self.signer, self.pop, self.server = signer, pop, server
        self.poll_wait = poll_wait
        self.retry_delays = tuple(retry_delays)
        self.current = 0
        self.state = SyncState(applied=store.current())

    def _name(self, index: int) -> str:
        host, port = self.controls[index]
        return f"{host}:{port}"

    def _record(self) -> None:
        write_atomic(self.store.root / "sync.json", json.dumps(self.state.__dict__).encode())

    def _reachable(self, ok: bool) -> None:
        if self.state.reachable is not ok:
            # On disk first: whoever sees the new value in memory (another thread) finds it in sync.json too.
            changed = replace(self.state, reachable=ok, since=monotonic())
            write_atomic(self.store.root / "sync.json", json.dumps(changed.__dict__).encode())
            self.state.reachable, self.state.since = ok, changed.since

    def _follow(self, index: int) -> None:
        if index != self.current or self.state.following is None:
            if self.state.following is not None:
                self.state.failovers += 1
                self.state.t_failover = monotonic()
            self.current = index
            self.state.following = self._name(index)
            self._record()

    async def _with_retries(self, index: int, call: Callable[[str, int], Awaitable[bytes]],
                            retries: bool = True) -> bytes:
        """``call`` on control plane ``index``: the first try and, with ``retries``, one retry per delay.
        Raises the last error."""
        host, port = self.controls[index]
        last: Exception | None = None
        for delay in (0.0, *(self.retry_delays if retries else ())):
            if delay:
                await asyncio.sleep(delay)  # the design's backoff between retries
            try:
                return await call(host, port)
            except (DeployError, HttpError, OSError, TimeoutError) as exc:
                last = exc
        assert last is not None
        raise last

    async def fetch(self, version: str, sha256: str) -> None:
        """Get one artifact into the store: from the region followed, then the others, each with the
        retries. Raises the last error (DeployError for a bad hash, HttpError, OSError, TimeoutError)."""
        async def one(host: str, port: int) -> bytes:
            self.state.fetch_attempts += 1
            data = await http_call(host, port, "GET", f"/v1/artifacts/{version}", self.signer, connect_s=CONNECT_S)
            self.store.put(version, sha256, data)
            return data

        last: Exception | None = None
        for i in range(len(self.controls)):
            try:
                await self._with_retries((self.current + i) % len(self.controls), one)
                return
            except (DeployError, HttpError, OSError, TimeoutError) as exc:
                last = exc
        assert last is not None
        raise last

    async def apply(self, desired: list[dict[str, str]]) -> None:
        """Fetch what is missing and switch to ``desired`` as a whole, or keep the current set and
        record why not."""
        want = {d["name"]: d["version"] for d in desired}
        if want == self.state.applied and self.state.error is None:
            return
        try:
            for d in desired:
                if not self.store.has(d["version"]):
                    await self.fetch(d["version"], d["sha256"])
            deployments = self.store.load(want)
        except (DeployError, HttpError, OSError, TimeoutError) as exc:
            self.state.error = f"kept the previous set: {exc}"
            self._record()
            return
        self.store.set_current(want)  # the new last-good set, before it serves
        self.install(deployments)
        self.state.applied, self.state.t_applied, self.state.error = want, monotonic(), None
        self._record()

    async def _poll(self, index: int, retries: bool, probe: bool = False) -> dict[str, Any]:
        away = index != 0
        wait = 0.0 if self.state.reachable is False or probe else min(self.poll_wait,
                                                                       AWAY_POLL_S if away else self.poll_wait)
        report = {"server": self.server, "pop": self.pop, "applied": self.state.applied,
                  "t_applied": self.state.t_applied, "error": self.state.error,
                  "generation": self.state.generation, "home": not away,
                  # Right after a failure, an answer at once: that it is reachable again is news.
                  "wait": wait}

        async def one(host: str, port: int) -> bytes:
            return await http_call(host, port, "POST", "/v1/sync", self.signer, report, timeout=wait + 5.0,
                                   connect_s=CONNECT_S)

        raw = await self._with_retries(index, one, retries)
        reply: dict[str, Any] = json.loads(raw)
        return reply

    async def sync_once(self) -> dict[str, Any]:
        """One long poll: home first when away (one try), else the region followed and then the next ones
        (with retries). The reply; raises the last error when no region answered."""
        order = [(self.current + i) % len(self.controls) for i in range(len(self.controls))]
        if self.current != 0 and self.state.reachable:
            order = [0, *order]
        last: Exception | None = None
        for n, index in enumerate(order):
            probe = n == 0 and index == 0 and self.current != 0  # is home back? one quick try
            try:
                reply = await self._poll(index, retries=not probe, probe=probe)
            except (HttpError, OSError, TimeoutError, ValueError) as exc:
                last = exc
                continue
            self._follow(index)
            return reply
        assert last is not None
        raise last

    async def run(self) -> None:
        """Sync until cancelled; never raises for what the network or the control plane does."""
        backoff = RETRY_DELAYS[0]
        self.state.following = self._name(self.current)
        self._record()
        while True:
            try:
                reply = await self.sync_once()
                desired, generation = list(reply["deployments"]), int(reply["generation"])
            except (HttpError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                self._reachable(False)
                self.state.error = f"control plane: {exc or type(exc).__name__}"
                self.current = 0
                await asyncio.sleep(backoff)  # Level 4: keep serving, try again later from home
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = RETRY_DELAYS[0]
            self._reachable(True)
            if self.state.error and self.state.error.startswith("control plane:"):
                self.state.error = None
            await self.apply(desired)
            # A failed apply is tried again on the next round, after a pause rather than at once.
            self.state.generation = generation if self.state.error is None else -1
            if self.state.error is not None:
                await asyncio.sleep(BACKOFF_MAX)
