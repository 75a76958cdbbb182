"""What deployed worker code sees: ``async def fetch(request, env, ctx)`` (the Workers handler shape).

``request`` has ``method``, ``url``, ``headers``, ``body``; the handler returns a :class:`Response`, or
as a convenience a ``dict`` (``status``, ``headers``, ``body``) or a ``str`` (200, text/plain). ``env``
holds the deployment's bindings (variables and secrets, as attributes) and ``env.fetch`` for
subrequests, counted against the limit; ``ctx.wait_until(coro)`` keeps work going after the response.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from core.clock import monotonic
from core.http_client import NotConnected, http_request
from protect.guard import Breaker, BreakerOpen, configured
from protect.limits import RetryBudget, delays, deposit, withdraw

#: How worker code's network calls leave the isolate: ``(host, port, method, path, body, headers, connect_s,
#: answer_s) -> (status, headers, body)``, raising as :func:`core.http_client.http_request` does. By default
#: that client; in a sandboxed isolate, which has no network of its own, a call over its channel to the
#: edge, which checks the destination against the deployment and makes it (:func:`set_outbound`).
Outbound = Callable[[str, int, str, str, bytes, "dict[str, str] | None", float, float],
                    Awaitable[tuple[int, dict[str, str], bytes]]]
_outbound: list[Outbound] = [http_request]


def set_outbound(call: Outbound) -> None:
    """Route every later subrequest, KV and Durable Object call of this process through ``call``."""
    _outbound[0] = call


async def outbound(host: str, port: int, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None, connect_s: float = 5.0,
                   answer_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request out of the isolate, the way :func:`set_outbound` chose."""
    return await _outbound[0](host, port, method, path, body, headers, connect_s, answer_s)


class SubrequestRefused(Exception):
    """Raised in the worker when the edge refuses a destination (the lab's internal services, another
    deployment's KV namespace or Durable Object class): not a failure of the destination, so no retry."""


class SubrequestLimitExceeded(Exception):
    """Raised in the worker by the subrequest past the deployment's limit."""


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def host(self) -> str:
        return self.headers.get("host") or urlsplit(self.url).hostname or ""

    def text(self) -> str:
        return self.body.decode(errors="replace")


class Response:
    """An HTTP response from worker code."""

    def __init__(self, body: str | bytes = b"", status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        if not 100 <= int(status) <= 599:
            raise ValueError(f"status {status} is not an HTTP status")
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.status = int(status)
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        if isinstance(body, str):
            self.headers.setdefault("content-type", "text/plain; charset=utf-8")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "headers": self.headers}


def to_response(result: object) -> Response:
    """The handler's result as a Response; raises TypeError naming what was returned otherwise."""
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result)
    if isinstance(result, dict):
        return Response(result.get("body", b""), result.get("status", 200), result.get("headers"))
    raise TypeError(f"fetch() returned {type(result).__name__}; return a Response, a dict or a str")


class Ctx:
    """``ctx.wait_until(coro)``: the isolate finishes these after the response is sent."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[Any]] = []

    def wait_until(self, work: Awaitable[Any]) -> None:
        self.pending.append(asyncio.ensure_future(work))


class Protection:
    """One isolate's circuit breakers (per dependency target) and retry budget: every subrequest to the
    origin and every KV call goes through :meth:`call`."""

    def __init__(self) -> None:
        self.breakers: dict[str, Any] = {}
        self.budget = RetryBudget()
        self.rng = random.Random()

    def breaker(self, name: str, dependency: str, is_failure: Any = None) -> Any:
        """The breaker ``name`` with ``dependency``'s settings (the lab's, else the design's)."""
        if name not in self.breakers:
            self.breakers[name] = Breaker(name, configured(dependency),
                                          is_failure=is_failure or (lambda exc: True))
        return self.breakers[name]

    def report(self) -> dict[str, dict[str, Any]]:
        """Every breaker: mode, its last change, how often it opened (for the edge's metrics)."""
        return {name: {"mode": b.state.mode, "since": b.transitions[-1][0] if b.transitions else None,
                       "opened": sum(1 for _t, kind in b.transitions if kind == "opened")}
                for name, b in self.breakers.items()}

    async def call(self, breaker: Any, operation: str, fn: Any, retry: tuple[type[BaseException], ...]) -> Any:
        """``await fn()`` through ``breaker``, retried on ``retry`` exceptions after the design's delays
        for ``operation`` (with jitter) while the retry budget allows. Raises BreakerOpen at once when the
        breaker refuses, else the last exception."""
        self.budget = deposit(self.budget, monotonic())
        waits = delays(operation, self.rng)
        for attempt in range(len(waits) + 1):
            try:
                return await breaker.call(fn)
            except BreakerOpen:
                raise
            except retry as exc:
                last: BaseException = exc
            if attempt == len(waits):
                break
            self.budget, allowed = withdraw(self.budget, monotonic())
            if not allowed:
                break
            await asyncio.sleep(waits[attempt])  # the design's backoff before the next try
        raise last


class KvError(Exception):
    """A KV call the replica refused (a limit, a bad key) or could not serve; the message says which."""


class KvNamespace:
    """A KV namespace bound to the deployment (``{"kv_namespace": NAME}`` in its bindings): Workers KV's
    calls, served by the PoP server's replica on 127.0.0.1. Writes answer ``{"committed": …, "accepted":
    …}`` (Level 1: accepted, queued, not yet committed); ``get_with_metadata`` says whether it was stale."""

    def __init__(self, namespace: str, port: int = 8101, protection: Protection | None = None,
                 account: str = "") -> None:
        self.namespace, self.port, self.account = namespace, port, account
        self.protection = protection or Protection()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    operation: str = "kv_read") -> tuple[int, dict[str, Any]]:
        """Through the KV breaker (the design's: 10 failures open it for 10 s) with the design's retries
        (reads twice at once, writes after 50/100/200 ms): no connection, no answer or a 5xx is a failure;
        a refusal (4xx) is an answer. Raises KvError (a refusal, or the breaker open), OSError/TimeoutError."""
        data = b"" if body is None else json.dumps(body).encode()

        async def once() -> tuple[int, bytes]:
            status, _headers, raw = await outbound("127.0.0.1", self.port, method,
                                                       f"/v1/kv/{self.namespace}/{path}", data,
                                                       {"Content-Type": "application/json",
                                                        "X-Anylab-Account": self.account}, 5.0, 30.0)
            if status >= 500:
                raise _ServerError(Response(raw, status))
            return status, raw

        breaker = self.protection.breaker("kv", "kv")
        try:
            status, raw = await self.protection.call(breaker, operation, once, (OSError, TimeoutError, EOFError,
                                                                                _ServerError))
        except BreakerOpen as exc:
            raise KvError(str(exc)) from None
        except _ServerError as exc:
            status, raw = exc.response.status, exc.response.body
        reply: dict[str, Any] = json.loads(raw) if raw else {}
        if status >= 400 and status != 404:
            raise KvError(str(reply.get("error", f"HTTP {status}")))
        return status, reply

    async def get_with_metadata(self, key: str, type: str = "text") -> dict[str, Any]:
        """``{"value", "metadata", "stale"}``; value None when the key is absent."""
        status, reply = await self._call("POST", "get", {"key": key})
        if status == 404:
            return {"value": None, "metadata": None, "stale": reply.get("stale", False)}
        raw = base64.b64decode(reply["value"])
        value: Any = raw if type in ("bytes", "arrayBuffer") else (json.loads(raw) if type == "json"
                                                                    else raw.decode())
        return {"value": value, "metadata": reply.get("metadata"), "stale": reply.get("stale", False)}

    async def get(self, key: str, type: str = "text", cache_ttl: float | None = None) -> Any:
        """The value as text, ``json`` or ``bytes``; None when absent. ``cache_ttl`` is accepted: the local
        replica is the cache."""
        return (await self.get_with_metadata(key, type))["value"]

    async def put(self, key: str, value: str | bytes, expiration: float | None = None,
                  expiration_ttl: float | None = None, metadata: Any = None) -> dict[str, Any]:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        body: dict[str, Any] = {"key": key, "value": base64.b64encode(raw).decode()}
        for name, v in (("expiration", expiration), ("expiration_ttl", expiration_ttl), ("metadata", metadata)):
            if v is not None:
                body[name] = v
        return (await self._call("POST", "put", body, "kv_write"))[1]

    async def delete(self, key: str) -> dict[str, Any]:
        return (await self._call("POST", "delete", {"key": key}, "kv_write"))[1]

    async def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> dict[str, Any]:
        from urllib.parse import urlencode

        query = urlencode({"prefix": prefix, "limit": limit, **({"cursor": cursor} if cursor else {})})
        return (await self._call("GET", f"list?{query}"))[1]


class DurableObjectError(Exception):
    """A stub call that got no answer from the object. ``definite``: it certainly did not run; otherwise
    it may have (a timeout after the request left, an owner whose backup did not confirm)."""

    def __init__(self, error: str, definite: bool, detail: str = "") -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error, self.definite = error, definite


@dataclass(frozen=True)
class DurableObjectId:
    """An object's id within its namespace (32 hex digits); ``name`` when made by ``id_from_name``."""

    hex: str
    name: str | None = None

    def __str__(self) -> str:
        return self.hex


class DurableObjectStub:
    """``stub.fetch(request)``: the call goes to the PoP's DO router, which finds the owner."""

    def __init__(self, key: str, hint: str | None, port: int) -> None:
        self.key, self.hint, self.port = key, hint, port

    async def fetch(self, request: Request | str, method: str = "GET", body: str | bytes = b"",
                    headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> Response:
        """The object's answer, with ``x-do-owner``/``x-do-epoch`` saying who served it. Raises
        DurableObjectError when there is none."""
        if isinstance(request, str):
            raw = body.encode() if isinstance(body, str) else bytes(body)
            request = Request(method, request, dict(headers or {}), raw)
        call = json.dumps({"key": self.key, "hint": self.hint, "request": {
            "method": request.method, "url": request.url, "headers": dict(request.headers),
            "body": base64.b64encode(request.body).decode()}}).encode()
        try:
            status, _h, raw_reply = await outbound("127.0.0.1", self.port, "POST", "/v1/do", call,
                                                       {"Content-Type": "application/json"}, 1.0, timeout)
        except NotConnected as exc:
            raise DurableObjectError("no_router", True, str(exc)) from None
        except (OSError, TimeoutError, EOFError) as exc:
            raise DurableObjectError("no_answer", False, repr(exc)) from None
        reply = json.loads(raw_reply)
        if status != 200:
            raise DurableObjectError(str(reply.get("error")), bool(reply.get("definite")), str(reply.get("detail", "")))
        resp = Response(base64.b64decode(reply["body"]), reply["status"], reply.get("headers"))
        resp.headers["x-do-owner"], resp.headers["x-do-epoch"] = str(reply["owner"]), str(reply["epoch"])
        return resp


class DurableObjectNamespace:
    """A Durable Object class bound to the deployment (``{"durable_object": CLASS}`` in its bindings):
    ``id_from_name``, ``new_unique_id``, ``id_from_string``, ``get(id, location_hint=REGION)``."""

    def __init__(self, script: str, cls: str, port: int = 8102) -> None:
        self.script, self.cls, self.port = script, cls, port

    def id_from_name(self, name: str) -> DurableObjectId:
        digest = hashlib.sha256(f"{self.script}/{self.cls}/{name}".encode()).hexdigest()[:32]
        return DurableObjectId(digest, name)

    def new_unique_id(self) -> DurableObjectId:
        return DurableObjectId(secrets.token_hex(16))

    def id_from_string(self, hex_id: str) -> DurableObjectId:
        if len(hex_id) != 32 or any(c not in "0123456789abcdef" for c in hex_id):
            raise ValueError(f"{hex_id!r} is not an object id (32 lower-case hex digits)")
        return DurableObjectId(hex_id)

    def get(self, object_id: DurableObjectId, location_hint: str | None = None) -> DurableObjectStub:
        return DurableObjectStub(f"{self.script}/{self.cls}/{object_id.hex}", location_hint, self.port)


def binding(value: Any, protection: Protection | None = None) -> Any:
    """A binding as the worker sees it: ``{"kv_namespace": NAME}`` becomes a :class:`KvNamespace`,
    ``{"durable_object": CLASS, "script": NAME}`` a :class:`DurableObjectNamespace`."""
    if isinstance(value, dict) and set(value) <= {"kv_namespace", "account"} and "kv_namespace" in value:
        return KvNamespace(str(value["kv_namespace"]), protection=protection, account=str(value.get("account", "")))
    if isinstance(value, dict) and "durable_object" in value:
        return DurableObjectNamespace(str(value.get("script", "")), str(value["durable_object"]))
    return value


class Env:
    """The deployment's bindings as attributes, and ``fetch`` for subrequests (counted per request)."""

    def __init__(self, bindings: Mapping[str, Any], subrequest_limit: int) -> None:
        self.protection = Protection()
        self._bindings = {name: binding(v, self.protection) for name, v in bindings.items()}
        self._limit = subrequest_limit
        self.subrequests = 0
        self._hosts: dict[str, tuple[str, int]] | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return self._bindings[name]
        except KeyError:
            raise AttributeError(f"no binding '{name}'; this deployment has: "
                                 f"{', '.join(sorted(self._bindings)) or 'none'}") from None

    def reset(self) -> None:
        self.subrequests = 0

    def breaker_report(self) -> dict[str, dict[str, Any]]:
        """Every dependency's breaker: mode and its last change (for the edge's metrics)."""
        return self.protection.report()

    async def fetch(self, url: str, timeout: float = 10.0) -> Response:
        """GET ``url`` (http:// only; a lab name such as ``origin`` is resolved through ``ANYLAB_HOSTS``),
        through the origin's circuit breaker (the design's: 5 failures open it for 30 s, 3 probe successes
        close it) and the design's retries (3, after 100/300/1000 ms with jitter, within a retry budget of
        10 % of requests). A 5xx answer or no answer is a failure. Raises SubrequestLimitExceeded past the
        limit, BreakerOpen while the breaker refuses, OSError/TimeoutError when the origin does not
        answer after the retries; returns the last 5xx answer when every try got one."""
        self.subrequests += 1
        if self.subrequests > self._limit:
            raise SubrequestLimitExceeded(f"subrequest limit of {self._limit} per request reached")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs can be fetched, not {url!r}")
        address, port = self._resolve(parts.hostname, parts.port or 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.hostname
        try:
            answer: Response = await self.protection.call(
                self.protection.breaker(host, "origin"), "origin_fetch",
                lambda: _get(address, port, host, path, timeout), (OSError, TimeoutError, _ServerError))
        except _ServerError as exc:
            return exc.response
        return answer

    def _resolve(self, host: str, port: int) -> tuple[str, int]:
        if self._hosts is None:
            self._hosts = {}
            for item in os.environ.get("ANYLAB_HOSTS", "").split(","):
                name, _, where = item.partition("=")
                if name and where:
                    addr, _, p = where.partition(":")
                    self._hosts[name] = (addr, int(p or 80))
        return self._hosts.get(host, (host, port))


class _ServerError(Exception):
    """A 5xx answer: a failure for the breaker and the retries; kept to hand back if nothing better comes."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"HTTP {response.status}")
        self.response = response


async def _get(address: str, port: int, host: str, path: str, timeout: float) -> Response:
    try:
        status, headers, body = await outbound(address, port, "GET", path, b"", {"Host": host}, timeout,
                                                   timeout)
    except EOFError as exc:  # for worker code, an origin that hung up is a connection error like the others
        raise ConnectionResetError(f"{host}: {exc}") from None
    response = Response(body, status, headers)
    if status >= 500:
        raise _ServerError(response)
    return response
