"""A lab service's metrics in Prometheus's exposition format, made by the official client library
(``prometheus_client``), served on ``GET /metrics`` to whoever holds the lab's metrics token.

Why a bearer token and not the lab's signed requests (:mod:`core.peer_auth`): Prometheus cannot sign a
request, but it sends a bearer token from a file (``authorization.credentials_file``). The token is the
lab's, made at ``up``; a scrape without it is refused (401) before anything is computed, and every other
route stays behind the peer check. Metrics are read-only, so the token grants reading them and nothing
else.

Each service has its own registry (no process-global state: a test runs several services in one
process): the process's CPU, memory and open files (the client library's process collector), the HTTP
requests it answered by route and status class, and what the service adds.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)

METRICS_PATH = "/metrics"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """One service's registry: ``anylab_http_requests_total{route, code}`` and what :meth:`gauge` adds."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("anylab_http_requests", "HTTP requests answered, by route and status class",
                                ["route", "code"], registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        """A gauge in this service's registry (``anylab_<name>``)."""
        return Gauge(f"anylab_{name}", documentation, list(labels), registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_middleware(metrics: Metrics, token: str | None) -> Any:
    """Serve ``GET /metrics`` to the holder of ``token`` (none: refused), count every other request's
    answer. Goes before the peer check in the middleware list: a scrape carries no signature."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == METRICS_PATH:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if request.method != "GET" or token is None or not hmac.compare_digest(given, token):
                return web.json_response({"error": "unauthenticated", "reason": "metrics token"}, status=401)
            return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers (404, 405) are raised
            metrics.requests.labels(route, f"{exc.status // 100}xx").inc()
            raise
        metrics.requests.labels(route, f"{response.status // 100}xx").inc()
        return response

    return middleware
