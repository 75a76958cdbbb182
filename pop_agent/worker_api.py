"""What deployed worker code sees: ``async def fetch(request, env, ctx)`` (the Workers handler shape).

``request`` has ``method``, ``url``, ``headers``, ``body``; the handler returns a :class:`Response`, or
as a convenience a ``dict`` (``status``, ``headers``, ``body``) or a ``str`` (200, text/plain). ``env``
holds the deployment's bindings (variables and secrets, as attributes) and ``env.fetch`` for
subrequests, counted against the limit; ``ctx.wait_until(coro)`` keeps work going after the response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


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


class Env:
    """The deployment's bindings as attributes, and ``fetch`` for subrequests (counted per request)."""

    def __init__(self, bindings: Mapping[str, Any], subrequest_limit: int) -> None:
        self._bindings = dict(bindings)
        self._limit = subrequest_limit
        self.subrequests = 0

    def __getattr__(self, name: str) -> Any:
        try:
            return self._bindings[name]
        except KeyError:
            raise AttributeError(f"no binding '{name}'; this deployment has: "
                                 f"{', '.join(sorted(self._bindings)) or 'none'}") from None

    def reset(self) -> None:
        self.subrequests = 0

    async def fetch(self, url: str, timeout: float = 10.0) -> Response:
        """GET ``url`` (http:// only). Raises SubrequestLimitExceeded past the limit, OSError/TimeoutError
        when the origin does not answer."""
        self.subrequests += 1
        if self.subrequests > self._limit:
            raise SubrequestLimitExceeded(f"subrequest limit of {self._limit} per request reached")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs can be fetched, not {url!r}")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 80), timeout)
        try:
            writer.write(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 502
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return Response(body, status, headers)
