"""An asyncio client for etcd's v3 API through its JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``,
``/v3/watch``, ``/v3/maintenance/status``, ``/v3/cluster/member/list``), on the aiohttp session the
control plane already runs.

Why the gateway and not a client library: the control plane is an aiohttp service, and the maintained
Python clients are either synchronous (``etcd3gw``, over ``requests``: every call would block the event
loop or need a thread) or speak gRPC (``etcd3``, unreleased since 2020, or ``aetcd``, alpha), which would
bring grpcio and protobuf into a PoP-adjacent service for five calls. The gateway is part of etcd (on by
default in 3.4, the Debian package's version), its JSON is the gRPC messages' canonical mapping: keys and
values base64, 64-bit integers as strings. In the lab the members want TLS with a client certificate
(:mod:`lab.run.etcd`): the client is given the context.

A client holds the members' client URLs, its own region's first (on 127.0.0.1: a dead local member refuses
the connection at once, a partition never hangs it): each call and each watch goes to the first member
and moves on to the next one on a connection error, a timeout or an error answer, within one deadline
for the whole call; a read may instead ask every member at once (the quorum check: a cut-off region
learns it within its deadline, not one deadline per member). Writes are only ever
compare-and-swap transactions (:meth:`Etcd.txn`), so trying one again on another member after a timeout
cannot apply it twice: the compare fails if the first try was committed. Every method raises
:class:`EtcdError` when no member answers, or the answer is an error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from core.errors import AnylabError


class EtcdError(AnylabError):
    """No member answered, or etcd answered with an error (``unavailable``: no member could be asked or
    none has a quorum — nothing was written)."""

    def __init__(self, message: str, unavailable: bool = True) -> None:
        super().__init__(message)
        self.unavailable = unavailable


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range or watch cover every key starting with ``prefix``."""
    raw = prefix.encode()
    return b64(raw[:-1] + bytes([raw[-1] + 1]))


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int

    @classmethod
    def of(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(unb64(kv["key"]).decode(), unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                   int(kv.get("create_revision", 0)))


@dataclass(frozen=True)
class Event:
    """One change a watch saw: ``value`` None for a deletion."""

    key: str
    value: bytes | None
    mod_revision: int


def put(key: str, value: bytes) -> dict[str, Any]:
    """A transaction's put operation."""
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def mod_is(key: str, revision: int) -> dict[str, Any]:
    """A transaction's compare: ``key`` was last changed at ``revision`` (0: it does not exist)."""
    if revision == 0:
        return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


class Etcd:
    """``Etcd(session, ["http://127.0.0.1:2379", …])``: see the module docstring."""

    def __init__(self, session: aiohttp.ClientSession, endpoints: Sequence[str], timeout: float = 2.0,
                 attempt: float = 1.0, tls: ssl.SSLContext | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd member given")
        self.session = session
        #: The members' CA and this region's client certificate (https endpoints).
        self.ssl: ssl.SSLContext | bool = tls if tls is not None else True
        self.endpoints = list(endpoints)
        #: A call's whole deadline, and one member's share of it: a proposal its member lost in a leader
        #: change is given up after ``attempt`` and sent to the next member (the compare keeps it once).
        self.timeout = timeout
        self.attempt = attempt

    async def _one(self, url: str, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One member's 200 answer; raises EtcdError (unavailable=False for an answer that is not JSON)."""
        try:
            async with self.session.post(url + path, json=body, ssl=self.ssl,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EtcdError(f"{url}: {exc or type(exc).__name__}") from None
        try:
            reply: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise EtcdError(f"{url}{path}: not JSON ({raw[:120]!r})", unavailable=False) from None
        if resp.status != 200:
            # A member without a leader, or a proposal that timed out: another member may do better.
            raise EtcdError(f"{url}: {resp.status} {reply.get('error') or reply.get('message')}")
        return reply

    async def call(self, path: str, body: dict[str, Any], timeout: float | None = None,
                   endpoint: str | None = None, race: bool = False) -> dict[str, Any]:
        """POST ``body`` to ``path``: on ``endpoint`` only, or on the members in order, moving on after a
        connection error, an error answer or a timeout, all within ``timeout`` (default the client's) in
        total — or, with ``race`` (reads), on every member at once, the first answer winning. The decoded
        answer; raises EtcdError."""
        total = timeout or self.timeout
        order = [endpoint] if endpoint else self.endpoints
        errors: list[str] = []
        if race and len(order) > 1:
            tasks = {asyncio.create_task(self._one(url, path, body, total)): url for url in order}
            pending = set(tasks)
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        exc = task.exception()
                        if exc is None:
                            return task.result()
                        errors.append(str(exc))
            finally:
                for task in pending:
                    task.cancel()
            raise EtcdError("no etcd member answered: " + "; ".join(errors))
        deadline = asyncio.get_running_loop().time() + total
        for url in order:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                errors.append(f"{url}: not tried, {total:g} s spent")
                continue
            try:
                reply = await self._one(url, path, body, min(left, self.attempt) if len(order) > 1 else left)
            except EtcdError as exc:
                if not exc.unavailable:
                    raise
                errors.append(str(exc))
                continue
            return reply
        raise EtcdError("no etcd member answered: " + "; ".join(errors))

    async def range(self, key: str, prefix: bool = False, serializable: bool = False,
                    timeout: float | None = None, race: bool = False) -> tuple[list[KeyValue], int]:
        """The keys (``key`` itself, or every key under it) and the store's revision. Linearizable unless
        ``serializable`` (the member's own copy, which may lag); ``race``: asked of every member at once."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        if serializable:
            body["serializable"] = True
        reply = await self.call("/v3/kv/range", body, timeout, race=race)
        return [KeyValue.of(kv) for kv in reply.get("kvs", [])], int(reply["header"]["revision"])

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None) -> tuple[bool, int, list[dict[str, Any]]]:
        """One transaction: (whether the compares held, the revision after it, its responses)."""
        reply = await self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(reply.get("succeeded", False)), int(reply["header"]["revision"]), reply.get("responses", [])

    async def status(self, endpoint: str, timeout: float = 1.0) -> dict[str, Any]:
        """One member's own status (its leader's id, raft term and index, database size)."""
        return await self.call("/v3/maintenance/status", {}, timeout, endpoint)

    async def members(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        reply = await self.call("/v3/cluster/member/list", {}, timeout)
        members: list[dict[str, Any]] = reply.get("members", [])
        return members

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[tuple[int, list[Event]]]:
        """The changes under ``prefix`` from ``start_revision`` on, as (revision, events), from the first
        member that takes the watch, until the stream ends (then EtcdError: the caller starts a new watch
        where it stopped)."""
        body = {"create_request": {"key": b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision)}}
        errors = []
        for url in self.endpoints:
            try:
                resp = await self.session.post(url + "/v3/watch", json=body, ssl=self.ssl,
                                               timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                errors.append(f"{url}: {exc or type(exc).__name__}")
                continue
            break
        else:
            raise EtcdError("no etcd member takes a watch: " + "; ".join(errors))
        try:
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result") or {}
                    if result.get("canceled"):
                        raise EtcdError(f"watch canceled: {result.get('cancel_reason', '')}")
                    events = [Event(unb64(e["kv"]["key"]).decode(),
                                    None if e.get("type") == "DELETE" else unb64(e["kv"].get("value", "")),
                                    int(e["kv"].get("mod_revision", 0))) for e in result.get("events", [])]
                    yield int(result.get("header", {}).get("revision", 0)), events
        except (aiohttp.ClientError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
            raise EtcdError(f"watch on {url}: {exc or type(exc).__name__}") from None
        finally:
            resp.release()
        raise EtcdError(f"watch on {url} ended")
