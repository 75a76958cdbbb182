"""Metrics (core.metrics): served to the holder of the lab's token only, ahead of the peer check, in the
format Prometheus parses; every other request counted by route and status class."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import Metrics, metrics_middleware
from core.peer_auth import PeerKeys, Verifier
from core.service import peer_middleware

TOKEN = "a-metrics-token"


async def scrape(token: str | None) -> tuple[int, str, dict[tuple[str, str], float]]:
    metrics = Metrics("test")
    up = metrics.gauge("serving", "whether the service serves")
    up.set(1)
    keys = PeerKeys.make()
    verifier = Verifier({"pop": keys.secrets["pop"]}, "127.0.0.1:0")
    app = web.Application(middlewares=[metrics_middleware(metrics, TOKEN),
                                       peer_middleware(verifier, lambda _m, _p: frozenset({"pop"}))])

    async def hello(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/v1/hello/{name}", hello)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/v1/hello/x")).status == 401  # refused by the peer check (unsigned), counted
        await client.get("/nowhere")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await client.get("/metrics", headers=headers)
        text = await resp.text()
    samples = {}
    if resp.status == 200:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, s.labels.get("route", "") + "|" + s.labels.get("code", ""))] = s.value
    return resp.status, text, samples


def test_metrics_go_only_to_the_token_and_parse_as_prometheus_does() -> None:
    assert asyncio.run(scrape(None))[0] == 401
    assert asyncio.run(scrape("wrong"))[0] == 401
    status, _text, samples = asyncio.run(scrape(TOKEN))
    assert status == 200
    assert samples[("anylab_serving", "|")] == 1.0
    assert samples[("anylab_http_requests_total", "/v1/hello/{name}|4xx")] == 1.0  # by route, not by path
    assert sum(v for (name, _key), v in samples.items() if name == "anylab_http_requests_total") == 2.0
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
