"""The Jepsen clients' reading of answers (ok / fail / info) and the operator's object keys."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.errors import AnylabError
from durable.client import key_of
from durable.history import Definite, Recorder, Served
from lab.load import do_load
from tenant.worker_api import DurableObjectNamespace


async def answer_with(status: int, body: bytes, port_box: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_box.append(server.sockets[0].getsockname()[1])
    return server


def outcome(status: int, body: dict[str, Any] | bytes) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def main() -> dict[str, Any]:
        box: list[int] = []
        server = await answer_with(status, raw, box)
        recorder = Recorder()
        try:
            await recorder.run("p", "write", "r0", 1, lambda: do_load.call("127.0.0.1", "reg.example", "r0", "eu",
                                                                             "write", 1, 2.0, box[0]), timeout=3.0)
        finally:
            server.close()
        return recorder.events[-1]

    return asyncio.run(main())


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, {"value": None, "owner": "eu", "epoch": 2}, "ok"),
    (503, {"error": "unavailable", "definite": True}, "fail"),
    (404, {"error": "no_deployment"}, "fail"),
    (503, {"error": "no_answer", "definite": False}, "info"),
    (500, b"internal error", "info"),
])
def test_answers_are_read_as_ok_fail_or_info(status: int, body: Any, kind: str) -> None:
    event = outcome(status, body)
    assert event["type"] == kind
    if kind == "ok":
        assert event["owner"] == "eu" and event["epoch"] == 2


def test_served_facts_go_into_the_ok_event() -> None:
    recorder = Recorder()

    async def call() -> Served:
        return Served(7, owner="na")

    async def failing() -> None:
        raise Definite("refused")

    asyncio.run(recorder.run("p", "read", "r0", None, call, timeout=1))
    asyncio.run(recorder.run("p", "read", "r0", None, failing, timeout=1))
    assert recorder.events[1] == {**recorder.events[1], "type": "ok", "value": 7, "owner": "na"}
    assert recorder.events[3]["type"] == "fail"


def test_object_names_carry_the_run_and_hints_spread_over_regions() -> None:
    objs = do_load.objects(2, 1, ["eu", "na"], "x1")
    assert objs == {"r0-x1": "eu", "r1-x1": "na", "c0-x1": "eu"}


def test_keys_are_what_id_from_name_makes() -> None:
    ns = DurableObjectNamespace("reg", "Register")
    assert key_of("reg/Register", "lobby") == f"reg/Register/{ns.id_from_name('lobby').hex}"
    with pytest.raises(AnylabError, match="SCRIPT/Class"):
        key_of("reg", "lobby")


def test_no_connection_is_a_definite_failure() -> None:
    recorder = Recorder()
    asyncio.run(recorder.run("p", "incr", "c0", 1, lambda: do_load.call("127.0.0.1", "h", "c0", None, "incr", 1, 1.0,
                                                                          port=1), timeout=2))
    assert recorder.events[-1]["type"] == "fail"
