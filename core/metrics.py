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
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
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
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

METRICS_PATH = "/metrics"
#: Where a service without an HTTP server of its own on the lab network (a PoP server's edge worker)
#: serves its metrics, on its unicast address: node_exporter's port.
METRICS_PORT = 9100
#: The token's file name in a node's directory, and the key of its path in a service's JSON config.
TOKEN_FILE = "metrics.token"
TOKEN_KEY = "metrics_token"
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

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter in this service's registry (``anylab_<name>_total``)."""
        return Counter(f"anylab_{name}", documentation, list(labels), registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class TextfileCollector(Collector):
    """What other processes of the node write as Prometheus text files (node_exporter's textfile
    collector): a PoP server's health agent and KV replica, read at each scrape. A file missing or not
    parsing is left out (its writer replaces it atomically, so a half-written file is never seen)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)

    def collect(self) -> Iterator[Metric]:
        for path in self.paths:
            try:
                families = list(text_string_to_metric_families(path.read_text()))
            except (OSError, ValueError):
                continue
            yield from families


def read_token(path: str | Path | None) -> str | None:
    """The metrics token in ``path`` (None: no path given). Raises OSError if it cannot be read and
    ValueError if it is empty: a service told to serve metrics must not serve them to anyone."""
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"metrics token file {path} is empty")
    return token


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` as a bearer token (never, without a token);
    compared in constant time."""
    if token is None or header is None or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())


def service_metrics(cfg: Mapping[str, Any], metrics: Metrics) -> Any:
    """An aiohttp service's metrics middleware for ``metrics``, with the token its config names (the
    path under :data:`TOKEN_KEY`; absent: requests counted, ``/metrics`` refused). Raises as
    :func:`read_token`."""
    return metrics_middleware(metrics, read_token(cfg.get(TOKEN_KEY)))


def metrics_middleware(metrics: Metrics, token: str | None) -> Any:
    """Serve ``GET /metrics`` to the holder of ``token`` (none: refused), count every other request's
    answer. Goes before the peer check in the middleware list: a scrape carries no signature."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == METRICS_PATH:
            if request.method != "GET" or not authorized(request.headers.get("Authorization"), token):
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
