"""The PoP's Durable Object router (inside the edge worker, on 127.0.0.1): takes a stub call from an
isolate and forwards it to the object's owner region, wherever anycast brought the request.

It asks the directory where an object lives (``/v1/where``, placing it on its first call) and keeps the
answer; when the owner cannot be reached or refuses with something that certainly did not run (``not_owner``,
``lease_expired``, ``fenced``, no TCP connection), it forgets the answer, asks again and retries until
``deadline_s`` — that is how it follows a failover. Calls that got no answer count against the owner's circuit
breaker (the design's DO breaker: 3 failures open it for 60 s), one per incarnation of the owner's host, so a
host that failed and came back starts closed; an open breaker refuses at once, and the router keeps asking the
directory until the deadline in case the object moves. Once a request was sent it is never retried: no answer
in time is answered 504 with ``definite: false`` (the object may have run it) — and neither is an answer the
directory says cannot come any more (the object moved to a new owner while the old one held the call): the
caller hears so at once instead of after the whole answer timeout.

``POST /v1/do`` ``{key, hint, request}`` → 200 with the owner's answer ``{status, headers, body, owner,
epoch}``, else ``{error, definite, detail}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from core.clock import monotonic
from core.http_client import NotConnected, signed_request
from core.peer_auth import Signer
from protect.breaker import DESIGN, Config
from protect.guard import Breaker, BreakerOpen
from protect.limits import Bucket, take
from tenant.worker_api import Request, Response

DO_ROUTER_PORT = 8102
RETRYABLE = {"not_owner", "lease_expired", "fenced"}


class OwnerChanged(Exception):
    """The object moved to a new owner while the old one held the call: its answer will not come."""


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body).encode(), status, {"content-type": "application/json"})


async def _exchange(signer: Signer, address: str, port: int, method: str, path: str, body: bytes,
                    connect_s: float, answer_s: float) -> tuple[int, bytes]:
    """A signed JSON request: status and body (see :func:`core.http_client.http_request` for what it
    raises)."""
    status, _headers, answer = await signed_request(signer, address, port, method, path, body, connect_s, answer_s)
    return status, answer


class DoRouter:
    """Routes stub calls for the edge; ``version_of(script)`` is the version this PoP runs."""

    def __init__(self, directory: tuple[str, int], version_of: Callable[[str], str | None], signer: Signer,
                 classes_of: Callable[[str], frozenset[str]], deadline_s: float = 3.0, connect_s: float = 0.3,
                 answer_s: float = 2.5, watch_s: float = 0.25,
                 breaker: Config | None = None, account_of: Callable[[str], str] = lambda script: script,
                 account_rps: float = 5000.0) -> None:
        self.directory, self.version_of, self.signer, self.classes_of = directory, version_of, signer, classes_of
        self.deadline_s, self.connect_s, self.answer_s, self.watch_s = deadline_s, connect_s, answer_s, watch_s
        self.cache: dict[str, dict[str, Any]] = {}
        self.breaker_config = breaker or DESIGN["do"]
        #: One circuit breaker per owner incarnation (``region#n``): calls that got no answer count.
        self.breakers: dict[str, Breaker] = {}
        #: The design's per-account DO request limit (this server's share), per account.
        self.account_of, self.account_rps = account_of, account_rps
        self.accounts: dict[str, Bucket] = {}

    def breaker_for(self, place: dict[str, Any]) -> Breaker:
        key = f"{place['owner']}#{place.get('incarnation', 0)}"
        if key not in self.breakers:
            for old in [k for k in self.breakers if k.split("#")[0] == place["owner"]]:
                del self.breakers[old]  # that host is gone; its successor starts closed
            self.breakers[key] = Breaker(f"do:{key}", self.breaker_config)
        return self.breakers[key]

    def breaker_report(self) -> dict[str, dict[str, Any]]:
        """Every owner's breaker (``do:region#incarnation``): mode, last change, times opened."""
        return {b.name: {"mode": b.state.mode, "since": b.transitions[-1][0] if b.transitions else None,
                         "opened": sum(1 for _t, kind in b.transitions if kind == "opened")}
                for b in self.breakers.values()}

    def stamp(self, resp: Response) -> Response:
        return resp

    async def _where(self, key: str, hint: str | None) -> dict[str, Any]:
        query = urlencode({"key": key, **({"hint": hint} if hint else {})})
        try:
            status, body = await _exchange(self.signer, *self.directory, "GET", f"/v1/where?{query}", b"",
                                           self.connect_s, 1.0)
        except (OSError, TimeoutError, EOFError):
            # Cut off from the directory too: it is this PoP that is isolated, and what its calls to the
            # owners saw says nothing about them. Their breakers start closed again, or they would refuse
            # healthy owners for a whole open period after this PoP comes back.
            self.breakers.clear()
            raise
        reply: dict[str, Any] = json.loads(body)
        if status != 200:
            raise LookupError(reply.get("detail") or reply.get("error") or f"HTTP {status}")
        self.cache[key] = reply
        return reply

    async def _call_watched(self, key: str, hint: str | None, place: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        """The call to the owner; while it is out longer than a call takes, the directory is asked every
        ``watch_s`` whether the object moved on — then the old owner's answer cannot come any more (it
        is fenced or gone) and waiting for it would only hold the caller. Raises OwnerChanged then, and
        what :func:`_exchange` raises otherwise."""
        call = asyncio.ensure_future(_exchange(self.signer, place["address"], int(place["port"]), "POST",
                                               "/v1/call", body, self.connect_s, self.answer_s))
        watch = asyncio.ensure_future(self._moved(key, hint, int(place["epoch"])))
        try:
            await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (call, watch):
                if not task.done():
                    task.cancel()
        if call.done() and not call.cancelled():
            return call.result()
        raise OwnerChanged(f"{key} moved past epoch {place['epoch']} while its owner {place['owner']} held the call")

    async def _moved(self, key: str, hint: str | None, epoch: int) -> None:
        """Returns once the directory has the object at a later epoch (never, otherwise)."""
        while True:
            await asyncio.sleep(self.watch_s)  # a call slower than this is worth a look at the directory
            with contextlib.suppress(LookupError, NotConnected, OSError, TimeoutError, EOFError, ValueError):
                if int((await self._where(key, hint))["epoch"]) > epoch:
                    return

    async def handle(self, req: Request) -> Response:
        """Never raises: every outcome is an answer saying whether the call may have run."""
        try:
            data = json.loads(req.body)
            key, hint, request = str(data["key"]), data.get("hint"), data["request"]
            script, cls, oid = key.split("/")
            if not (script and cls.isidentifier() and oid):
                raise ValueError(f"key {key!r} is not script/Class/id")
        except (ValueError, KeyError, TypeError) as exc:
            return _json(400, {"error": "bad_request", "definite": True, "detail": str(exc)})
        version = self.version_of(script)
        if version is None:
            return _json(404, {"error": "no_such_script", "definite": True,
                               "detail": f"this PoP runs no version of {script}"})
        if cls not in self.classes_of(script):
            return _json(404, {"error": "no_such_class", "definite": True,
                               "detail": f"{script} declares no Durable Object class {cls}"})
        account = self.account_of(script)
        bucket = self.accounts.get(account) or Bucket(self.account_rps, max(1.0, self.account_rps))
        self.accounts[account], ok, wait = take(bucket, monotonic())
        if not ok:
            return _json(429, {"error": "rate_limited", "definite": True, "retry_after_s": round(wait, 3),
                               "detail": f"account {account} is over {self.account_rps:g} DO requests/s here"})
        deadline = monotonic() + self.deadline_s
        last = "no attempt"
        while True:
            backoff = 0.05  # while the directory fails the owner over
            try:
                place = self.cache.get(key) or await self._where(key, hint)
                body = json.dumps({"key": key, "epoch": place["epoch"], "version": version,
                                   "request": request}).encode()
                try:
                    status, answer = await self.breaker_for(place).call(
                        lambda: self._call_watched(key, hint, place, body))  # noqa: B023 (awaited at once)
                except BreakerOpen as exc:  # certainly not sent: the object may yet move to a live owner
                    # Ask the directory less often: a refusal comes back at once, and every waiting call
                    # asking 20 times a second would load the directory just as it fails the owner over.
                    backoff = self.watch_s
                    raise LookupError(f"owner {place['owner']}: {exc}") from None
                except OwnerChanged as exc:
                    return _json(504, {"error": "owner_changed", "definite": False, "detail": str(exc)})
                except NotConnected as exc:
                    raise LookupError(f"owner {place['owner']} unreachable: {exc}") from None
                except (TimeoutError, EOFError, OSError) as exc:
                    self.cache.pop(key, None)
                    return _json(504, {"error": "no_answer", "definite": False,
                                       "detail": f"owner {place['owner']}: {exc!r}"})
                try:
                    reply = json.loads(answer)
                except ValueError:
                    return _json(502, {"error": "bad_answer", "definite": False, "detail": answer[:200].decode()})
                if status == 200 or reply.get("error") not in RETRYABLE:
                    return _json(status, reply)
                last = f"owner {place['owner']} epoch {place['epoch']}: {reply.get('error')}"
            except (LookupError, NotConnected, OSError, TimeoutError, EOFError, ValueError) as exc:
                last = str(exc) or type(exc).__name__
            self.cache.pop(key, None)
            if monotonic() > deadline:
                return _json(503, {"error": "unavailable", "definite": True,
                                   "detail": f"no owner answered within {self.deadline_s} s; last: {last}"})
            await asyncio.sleep(backoff)
