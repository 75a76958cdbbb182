"""Isolates from a warm spawner: the handler shapes, and every hostile worker gets its documented error
while a well-behaved deployment beside it keeps answering."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.clock import monotonic
from tenant.isolate import DeployError, Isolate, IsolateSpawner, Limits
from tenant.worker_api import Request

GOOD = '''
async def fetch(request, env, ctx):
    return f"hello {env.NAME} from {request.url}"
'''
LIMITS = Limits()


@pytest.fixture
def good(spawner: IsolateSpawner) -> Iterator[Isolate]:
    iso = spawner.spawn(GOOD, {"NAME": "sjc"}, LIMITS)
    yield iso
    iso.kill()


def get(iso: Isolate, url: str = "http://a.example/x") -> tuple[int, bytes, str | None]:
    r = iso.call(Request("GET", url, {"host": "a.example"}))
    return r.response.status, r.response.body, r.error


@pytest.mark.parametrize(("body", "status", "content"), [
    ('return "plain"', 200, b"plain"),
    ('return {"status": 201, "body": "made", "headers": {"X-A": "1"}}', 201, b"made"),
    ('return Response(b"raw", status=418)', 418, b"raw"),
    ("return request.method + ' ' + request.headers['host']", 200, b"GET a.example"),
])
def test_handler_shapes(spawner: IsolateSpawner, body: str, status: int, content: bytes) -> None:
    iso = spawner.spawn(f"async def fetch(request, env, ctx):\n    {body}\n", {}, LIMITS)
    try:
        assert get(iso)[:2] == (status, content)
    finally:
        iso.kill()


HOSTILE = {
    "cpu_limit": "async def fetch(request, env, ctx):\n    while True:\n        pass\n",
    "memory_limit": "async def fetch(request, env, ctx):\n    b = bytearray(300 * 1024 * 1024)\n    return 'x'\n",
    "worker_exception": "async def fetch(request, env, ctx):\n    raise RuntimeError('boom')\n",
    "subrequest_limit": (
        "async def fetch(request, env, ctx):\n"
        "    for _ in range(60):\n"
        "        try:\n"
        "            await env.fetch('http://127.0.0.1:1/')\n"
        "        except Exception as exc:\n"  # refused by the edge (no egress here), or unreachable
        "            if type(exc).__name__ == 'SubrequestLimitExceeded':\n"
        "                raise\n"
    ),
}


@pytest.mark.parametrize("code", list(HOSTILE))
def test_hostile_worker_gets_its_error_and_the_neighbour_keeps_serving(spawner: IsolateSpawner, good: Isolate,
                                                                       code: str) -> None:
    bad = spawner.spawn(HOSTILE[code], {}, LIMITS)
    t0 = monotonic()
    status, _, error = get(bad)
    took = monotonic() - t0
    assert error == code and status in (500, 503)
    if code == "cpu_limit":
        # 0.5 s: /proc's 10 ms ticks, and the isolate getting its 50 ms of CPU on a busy 2-core machine
        assert took <= LIMITS.cpu_ms / 1000 + 0.5
    assert get(good)[:2] == (200, b"hello sjc from http://a.example/x")
    bad.kill()


@pytest.mark.parametrize(("code", "words"), [
    ("async def fetch(request, env, ctx)\n    return 1\n", "syntax error at line 1"),
    ("def fetch(request, env, ctx):\n    return 'sync'\n", "no 'async def fetch"),
    ("raise ImportError('nope')\n", "loading raised ImportError: nope"),
    ("x = '" + "a" * (11 * 1024 * 1024) + "'\n", "the limit is 10 MB (code_size)"),
])
def test_bad_code_is_refused_at_spawn(spawner: IsolateSpawner, code: str, words: str) -> None:
    with pytest.raises(DeployError, match=words.replace("(", r"\(").replace(")", r"\)")):
        spawner.spawn(code, {}, LIMITS)


def test_wall_limit(spawner: IsolateSpawner) -> None:
    slow = spawner.spawn("import asyncio\nasync def fetch(request, env, ctx):\n    await asyncio.sleep(5)\n",
                        {}, Limits(wall_s=0.3))
    assert get(slow)[2] == "wall_limit"


def test_cold_start(spawner: IsolateSpawner) -> None:
    """From the request's arrival (spawn asked) to the handler running in the new isolate."""
    t0 = monotonic()
    iso = spawner.spawn(GOOD, {"NAME": "x"}, LIMITS)
    r = iso.call(Request("GET", "http://a/"))
    iso.kill()
    assert r.t_handler is not None
    assert r.t_handler - t0 < 0.1  # goal 5 ms (measured 3.3 ms p50 here); 0.1 s: a loaded CI machine
