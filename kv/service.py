"""What a KV master and a PoP replica share: the client API's routes, its list handler and error answers
(they run as services through :mod:`core.service`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from core.clock import wall
from kv.store import KvError, Store, check_namespace

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def now() -> float:
    return wall()


async def body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise KvError(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KvError("the body must be a JSON object")
    return data


def value_of(data: dict[str, Any]) -> bytes:
    raw = data.get("value", "")
    try:
        return base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
    except ValueError:
        raise KvError("'value' must be base64") from None


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except KvError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)




@dataclass
class Cursor:
    """How far a follower has read a master's change stream: per-namespace sequence numbers of one
    incarnation of the master's store (:attr:`kv.store.Store.incarnation`; None: not known yet)."""

    of: str | None = None
    seqs: dict[str, int] = field(default_factory=dict)

    def target(self, wait: float) -> str:
        """The ``/v1/changes`` request for what comes after this cursor, waiting up to ``wait`` s."""
        query = {"since": json.dumps(self.seqs), "wait": str(wait), **({"of": self.of} if self.of else {})}
        return "/v1/changes?" + urlencode(query)

    def take(self, reply: dict[str, Any], pulled: dict[str, int]) -> bool:
        """Move past an answer: its incarnation (another one than ours: what we had counted is void) and
        ``pulled`` (namespace → the last sequence number received); returns whether anything moved."""
        of = reply.get("incarnation")
        of = of if isinstance(of, str) else None
        seqs = dict(self.seqs) if of == self.of else {}
        seqs.update(pulled)
        moved = (of, seqs) != (self.of, self.seqs)
        self.of, self.seqs = of, seqs
        return moved

    def to_json(self) -> dict[str, Any]:
        return {"of": self.of, "seqs": self.seqs}

    @classmethod
    def from_json(cls, data: Any) -> Cursor:
        """A cursor as :meth:`to_json` wrote it; a file from before incarnations (bare sequence numbers)
        or anything else unreadable is the start (everything is read again: LWW makes that harmless)."""
        if isinstance(data, dict) and isinstance(data.get("seqs"), dict):
            of = data.get("of")
            return cls(of if isinstance(of, str) else None,
                       {str(k): int(v) for k, v in data["seqs"].items() if isinstance(v, int)})
        return cls()


def save_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON at once (a reader sees the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class ClientApi(Protocol):
    store: Store

    async def put(self, request: web.Request) -> web.StreamResponse: ...

    async def delete(self, request: web.Request) -> web.StreamResponse: ...

    async def get(self, request: web.Request) -> web.StreamResponse: ...

    async def status(self, request: web.Request) -> web.StreamResponse: ...

    def stale(self) -> bool: ...


def list_response(api: ClientApi, request: web.Request, now: float) -> web.Response:
    """Workers KV's list on ``api``'s store, with its ``stale`` flag; raises KvError for bad arguments."""
    ns = check_namespace(request.match_info["ns"])
    q = request.query
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise KvError("limit must be a whole number") from None
    return web.json_response({**api.store.list_keys(ns, q.get("prefix", ""), limit, q.get("cursor") or None, now),
                              "stale": api.stale()})


def make_app(api: ClientApi, extra: dict[tuple[str, str], Handler], now: Callable[[], float],
             middlewares: tuple[Any, ...] = (), outer: tuple[Any, ...] = ()) -> web.Application:
    """The client API of ``api`` (put, delete, get, list, status) plus ``extra`` routes (``middlewares``
    run inside the error handling, ``outer`` around it: the metrics, which count its answers)."""
    app = web.Application(middlewares=[*outer, errors, *middlewares], client_max_size=64 * 1024 * 1024)

    async def list_keys(request: web.Request) -> web.Response:
        return list_response(api, request, now())

    app.router.add_post("/v1/kv/{ns}/put", api.put)
    app.router.add_post("/v1/kv/{ns}/delete", api.delete)
    app.router.add_post("/v1/kv/{ns}/get", api.get)
    app.router.add_get("/v1/kv/{ns}/list", list_keys)
    app.router.add_get("/v1/status", api.status)
    for (method, path), handler in extra.items():
        app.router.add_route(method, path, handler)
    return app
