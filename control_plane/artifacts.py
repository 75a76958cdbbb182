"""A region's artifact store and its replication to the other regions' (the design's "geo-replicated
object storage" for code artifacts).

:class:`ArtifactStore` keeps content-addressed bytes, ``<sha256>`` files in one directory, written only
after their hash checked out and checked again each time they are read (a corrupt copy is dropped and
counts as missing). :class:`Replicas` talks to the other regions' control planes with signed requests
(role ``cp``):

- **Upload rule**: an upload is acknowledged once :func:`copies_needed` regions hold the verified bytes —
  two, or every region when there are fewer (a one-region lab). The uploading region writes its own copy,
  then pushes to every other region at once and waits for enough confirmations (a peer confirms only
  after it checked the hash and wrote the file); the pushes still under way go on after the answer.
- **Repair**: every region compares the versions in etcd with what it holds and fetches what it lacks
  from the others (:meth:`Replicas.fetch`, nearest first), e.g. after ``artifact-store-wipe`` or a push
  that did not reach it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from core.peer_auth import Signer
from core.service import signed_bytes

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def copies_needed(regions: int) -> int:
    """How many regions must hold an artifact before its upload is acknowledged."""
    return min(2, regions)


class ArtifactStore:
    """Content-addressed files under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not SHA_RE.match(sha):
            raise ValueError(f"not a SHA-256: {sha[:80]!r}")
        return self.root / sha

    def put(self, sha: str, data: bytes) -> None:
        """Keep ``data`` as ``sha``; raises ValueError (nothing written) unless it hashes to ``sha``."""
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"the bytes do not hash to {sha[:12]}…")
        path = self.path(sha)
        tmp = path.with_name(f".{sha}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def get(self, sha: str) -> bytes | None:
        """The verified bytes of ``sha``, or None (missing, or corrupt: then deleted)."""
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            self.path(sha).unlink(missing_ok=True)
            return None
        return data

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def held(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if SHA_RE.match(p.name)}


@dataclass(frozen=True)
class Peer:
    """Another region's control plane."""

    region: str
    address: str
    port: int


class ReplicaError(Exception):
    pass


class Replicas:
    """The other regions' artifact stores, nearest first, over ``session`` with this region's signer."""

    def __init__(self, session: aiohttp.ClientSession, signer: Signer | None, peers: Sequence[Peer],
                 timeout: float = 2.0) -> None:
        self.session, self.signer, self.peers, self.timeout = session, signer, list(peers), timeout
        #: Pushes still under way after an upload was acknowledged (kept so they are not collected).
        self.background: set[asyncio.Task[bool]] = set()

    async def _request(self, peer: Peer, method: str, sha: str, data: bytes = b"") -> tuple[int, bytes]:
        if self.signer is None:
            raise ReplicaError("this control plane has no key to sign with")
        return await signed_bytes(self.session, self.signer, method, peer.address, peer.port,
                                  f"/v1/replica/artifacts/{sha}", data, self.timeout, "application/octet-stream")

    async def _push(self, peer: Peer, sha: str, data: bytes) -> bool:
        try:
            status, _ = await self._request(peer, "PUT", sha, data)
        except (aiohttp.ClientError, TimeoutError, OSError, ReplicaError):
            return False
        return status == 200

    async def push(self, sha: str, data: bytes, confirmations: int) -> list[str]:
        """Send ``data`` to every peer at once; returns the regions that confirmed, as soon as
        ``confirmations`` did (the others carry on in the background), or all that did once every push
        ended. Never raises."""
        if confirmations <= 0 or not self.peers:
            for peer in self.peers:  # still copied everywhere, without waiting
                task = asyncio.create_task(self._push(peer, sha, data))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
            return []
        tasks = {asyncio.create_task(self._push(p, sha, data)): p for p in self.peers}
        confirmed: list[str] = []
        pending = set(tasks)
        while pending and len(confirmed) < confirmations:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            confirmed += [tasks[t].region for t in done if t.result()]
        for task in pending:
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        return confirmed

    async def fetch(self, sha: str) -> tuple[bytes, str]:
        """The verified bytes of ``sha`` from the nearest peer that has them, and that peer's region.
        Raises ReplicaError naming what each peer answered."""
        errors = []
        for peer in self.peers:
            try:
                status, data = await self._request(peer, "GET", sha)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors.append(f"{peer.region}: {exc or type(exc).__name__}")
                continue
            if status != 200:
                errors.append(f"{peer.region}: {status}")
            elif hashlib.sha256(data).hexdigest() != sha:
                errors.append(f"{peer.region}: bytes that do not hash to it")
            else:
                return data, peer.region
        raise ReplicaError(f"no other region holds {sha[:12]}…: " + ("; ".join(errors) or "no other region"))
