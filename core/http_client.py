"""A small HTTP/1.1 client on asyncio streams and httptools' response parser.

Used where aiohttp would be too dear: its import alone costs a PoP server ~15 MB of the lean-PoP budget,
and the lab's load generators send thousands of requests a second from small processes. One request per
connection (:func:`http_request`), a pool of kept-alive connections (:class:`KeepAlivePool`), one signed
JSON call (:func:`http_call`), and the exchange on a connection the caller holds
(:func:`http_exchange`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httptools

from core.peer_auth import Signer


class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        self.status = status


class _Collect:
    def __init__(self) -> None:
        self.body = bytearray()
        self.headers: dict[str, str] = {}
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.1 request and read its whole answer: status, headers (lower-case names), body.
    Raises EOFError if the connection closes before the answer, OSError for what the connection does."""
    writer.write(request)
    await writer.drain()
    sink = _Collect()
    parser = httptools.HttpResponseParser(sink)
    while not sink.done:
        chunk = await reader.read(65536)
        if not chunk:
            raise EOFError("the connection closed before the answer")
        parser.feed_data(chunk)
    return parser.get_status_code(), sink.headers, bytes(sink.body)


class NotConnected(ConnectionError):
    """No TCP connection was made: nothing was sent (so the request certainly did not run)."""


async def http_request(host: str, port: int, method: str, path: str, body: bytes = b"",
                       headers: dict[str, str] | None = None, connect_s: float = 5.0,
                       answer_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection: status, headers (lower-case names), body. Raises
    NotConnected when no connection was made within ``connect_s`` (nothing was sent), and
    TimeoutError/EOFError/OSError when the answer did not come within ``answer_s`` (it may have run).
    ``headers`` may set ``Host`` (default: ``host``)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_s)
    except (OSError, TimeoutError) as exc:
        raise NotConnected(f"{host}:{port}: {exc!r}") from None
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **(headers or {})}.items())
        request = (f"{method} {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + body
        return await asyncio.wait_for(http_exchange(reader, writer, request), answer_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class KeepAlivePool:
    """Idle keep-alive connections per ``(host, port)``, for a stream of requests to a few peers (the
    spillover router's): no TCP handshake per request. ``request`` takes an idle connection or opens
    one and gives it back after a whole answer that does not say ``connection: close``."""

    def __init__(self, max_idle: int = 16) -> None:
        self.max_idle = max_idle
        self.idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def request(self, host: str, port: int, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, connect_s: float = 5.0,
                      answer_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """Like :func:`http_request`. A reused connection that fails before any answer (the peer closed
        it while idle) is replaced by a new one once, and only for GET and HEAD (safe to send twice).
        Raises NotConnected when no connection could be made, TimeoutError/EOFError/OSError otherwise."""
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **(headers or {})}.items())
        request = f"{method} {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        idle = self.idle.setdefault((host, port), [])
        while True:
            reused = bool(idle)
            if reused:
                reader, writer = idle.pop()
            else:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_s)
                except (OSError, TimeoutError) as exc:
                    raise NotConnected(f"{host}:{port}: {exc!r}") from None
            try:
                status, answer_headers, answer = await asyncio.wait_for(http_exchange(reader, writer, request),
                                                                        answer_s)
            except (EOFError, ConnectionResetError, BrokenPipeError):
                writer.close()
                if reused and method in ("GET", "HEAD"):
                    continue
                raise
            except BaseException:
                writer.close()
                raise
            if answer_headers.get("connection", "").lower() == "close" or len(idle) >= self.max_idle:
                writer.close()
            else:
                idle.append((reader, writer))
            return status, answer_headers, answer

    def close(self) -> None:
        for conns in self.idle.values():
            for _reader, writer in conns:
                with contextlib.suppress(RuntimeError):  # the loop already closed: so are its sockets
                    writer.close()
        self.idle.clear()


async def signed_request(signer: Signer, host: str, port: int, method: str, path: str, body: bytes = b"",
                         connect_s: float = 5.0, answer_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """:func:`http_request` of a JSON body, signed by ``signer`` (:mod:`core.peer_auth`) for ``host:port``;
    raises what it raises."""
    headers = {"Content-Type": "application/json", **signer.headers(method, f"{host}:{port}", path, body)}
    return await http_request(host, port, method, path, body, headers, connect_s, answer_s)


async def http_call(host: str, port: int, method: str, path: str, signer: Signer, body: Any = None,
                    timeout: float = 5.0, connect_s: float | None = None) -> bytes:
    """One JSON request signed by ``signer`` (:mod:`core.peer_auth`); returns the body of a 2xx answer
    within ``timeout`` (the connection made within ``connect_s``, default the same). Raises HttpError for
    other statuses, OSError/TimeoutError when the server cannot be reached or does not answer."""

    async def exchange() -> bytes:
        data = b"" if body is None else json.dumps(body).encode()
        try:
            status, _headers, answer = await signed_request(signer, host, port, method, path, data,
                                                            connect_s or timeout, timeout)
        except EOFError as exc:
            raise ConnectionResetError(f"the control plane: {exc}") from None
        if not 200 <= status < 300:
            raise HttpError(status, answer)
        return answer

    return await asyncio.wait_for(exchange(), timeout)
