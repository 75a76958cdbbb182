"""Health checks against servers on the loopback address, each bounded by its own timeout."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from core.records import proc_starttime
from core.wait import wait_for
from health.checks import CommandCheck, HttpCheck, TcpCheck, run_check, run_checks

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def http_answer(status: int, body: bytes, delay: float = 0.0) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # a TCP check connects and leaves without asking
            writer.close()
            return
        await asyncio.sleep(delay)  # the slow service under test, not a wait of the test's own
        writer.write(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    return handle


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("status", "body", "delay", "check_body", "ok", "detail"),
    [
        (200, b"ok", 0.0, None, True, "ok"),
        (200, b"healthy", 0.0, "healthy", True, "ok"),
        (200, b"sick", 0.0, "healthy", False, "body lacks 'healthy'"),
        (503, b"", 0.0, None, False, "HTTP status 503, expected 200"),
        (200, b"ok", 0.5, None, False, "timed out after 100 ms"),
    ],
)
def test_http(status: int, body: bytes, delay: float, check_body: str | None, ok: bool, detail: str) -> None:
    # Only the slow server's case tests the timeout; the others get a generous one, so that a busy CI
    # machine (a first run took over 100 ms here) cannot turn an answer into a timeout.
    timeout = 0.1 if delay else 2.0

    async def go() -> None:
        server, port = await serve(http_answer(status, body, delay))
        async with server:
            out = await run_check(HttpCheck(f"http://127.0.0.1:{port}/healthz", body=check_body, timeout=timeout))
        assert (out.ok, out.detail) == (ok, detail)
        if delay:
            assert out.duration < 0.4  # the 0.1 s timeout + 0.3 s margin for a loaded 2-core machine

    asyncio.run(go())


def test_tcp_open_and_refused() -> None:
    async def go() -> None:
        server, port = await serve(http_answer(200, b""))
        async with server:
            assert (await run_check(TcpCheck("127.0.0.1", port))).ok
        refused = await run_check(TcpCheck("127.0.0.1", port, timeout=0.5))
        assert not refused.ok and "ConnectionRefusedError" in refused.detail

    asyncio.run(go())


def test_command_exit_status_and_timeout() -> None:
    async def go() -> None:
        assert (await run_check(CommandCheck((sys.executable, "-c", "pass"), timeout=5))).ok
        bad = await run_check(CommandCheck((sys.executable, "-c", "raise SystemExit(3)"), timeout=5))
        assert (bad.ok, bad.detail) == (False, "exit status 3")
        slow = await run_check(CommandCheck((sys.executable, "-c", "import time; time.sleep(30)"), timeout=0.5))
        # 0.5 s timeout; killing and reaping the command fits well inside the 4.5 s margin.
        assert not slow.ok and slow.detail == "timed out after 500 ms" and slow.duration < 5

    asyncio.run(go())


def test_combined_all_and_any() -> None:
    async def go() -> None:
        good, fail = CommandCheck(("true",)), CommandCheck(("false",))
        assert (await run_checks([good, good], "all")).ok
        both = await run_checks([good, fail], "all")
        assert not both.ok and both.detail == "CommandCheck: exit status 1"
        assert (await run_checks([good, fail], "any")).ok

    asyncio.run(go())


def test_rejects_non_http_url() -> None:
    out = asyncio.run(run_check(HttpCheck("ftp://x/")))
    assert not out.ok and "only http://" in out.detail


def test_a_command_check_that_times_out_takes_its_children_with_it(tmp_path: Path) -> None:
    """Issue 20: at the timeout the check's whole process group is killed; killing its direct child alone
    left what a shell had started running (the test fails with proc.kill())."""
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"

    async def go() -> None:
        out = await run_check(CommandCheck(("sh", "-c", script), timeout=0.5))
        assert not out.ok and out.detail == "timed out after 500 ms"

    asyncio.run(go())
    child = int(pidfile.read_text())
    wait_for(lambda: proc_starttime(child) is None, timeout=5.0, what="the check's own child to be gone")
