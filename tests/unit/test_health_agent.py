"""The health agent's I/O loop against a real local HTTP service and a stand-in for the ExaBGP API
process (a socket speaking its one-line JSON protocol): the modes it asks for, hooks, metrics, exit."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

from core.clock import monotonic
from health.agent import Agent, AgentConfig

TIMEOUT = 0.03
INTERVAL = 0.05
FAST = 0.02
FALL = 2
DETECTION_S = INTERVAL + FAST * (FALL - 1) + TIMEOUT
MARGIN_S = 0.5  # scheduling of a test process on a busy machine


class FakeApi:
    """Records every ``set`` mode with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.modes: list[tuple[float, str]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                req = json.loads(conn.makefile("rb").readline())
                self.modes.append((monotonic(), req["mode"]))
                conn.sendall(b'{"ok": true}\n')

    def last(self) -> str | None:
        return self.modes[-1][1] if self.modes else None


async def service(port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nok\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def until(pred: object, timeout: float) -> float:
    t0 = monotonic()
    while not pred():  # type: ignore[operator]
        if monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)
    return monotonic() - t0


def test_agent_announces_withdraws_demotes_and_withdraws_on_exit(tmp_path: Path) -> None:
    api = FakeApi(tmp_path / "api.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook_out = tmp_path / "hook.txt"
    config = AgentConfig.from_json({
        "server": "sjc-s1", "pop": "sjc",
        "fsm": {"rise": 2, "fall": FALL, "interval": INTERVAL, "fast_interval": FAST, "timeout": TIMEOUT,
                "on_down": "withdrawn", "drain_mode": "demoted", "debounce": 0.0},
        "checks": [{"kind": "http", "url": f"http://127.0.0.1:{port}/healthz", "status": 200, "body": "ok"}],
        "hooks": [["sh", "-c", f'echo "$STATE $SERVER" >> {hook_out}']],
        "api_socket": str(tmp_path / "api.sock"), "drain_file": str(tmp_path / "drain"),
        "events": str(tmp_path / "events.jsonl"), "metrics": str(tmp_path / "health.prom"),
        "state": str(tmp_path / "state.json"),
    })

    async def scenario() -> None:
        srv = await service(port)
        agent = Agent(config)
        task = asyncio.ensure_future(agent.run())
        await until(lambda: api.last() == "normal", 2.0)
        assert api.modes[0][1] == "withdrawn"  # nothing announced before the first verdict
        srv.close()
        await srv.wait_closed()
        took = await until(lambda: api.last() == "withdrawn", 2.0)
        assert took <= DETECTION_S + MARGIN_S
        srv = await service(port)
        await until(lambda: api.last() == "normal", 2.0)
        (tmp_path / "drain").write_text("")
        await until(lambda: api.last() == "demoted", 2.0)
        agent.stopping.set()
        await task
        srv.close()

    asyncio.run(scenario())
    api.stop.set()
    assert [m for _, m in api.modes] == ["withdrawn", "normal", "withdrawn", "normal", "demoted", "withdrawn"]
    hooks = hook_out.read_text().split("\n")
    assert "up sjc-s1" in hooks and "down sjc-s1" in hooks and "exit sjc-s1" in hooks
    metrics = (tmp_path / "health.prom").read_text()
    assert 'anylab_health_announced{server="sjc-s1",pop="sjc",mode="withdrawn"} 1' in metrics
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stop" and all("t" in e for e in events)


def test_a_hung_check_costs_its_timeout_once_checks_keep_their_cadence(tmp_path: Path) -> None:
    """Issue 20: checks run on a cadence from each one's start, so a check that hangs costs its timeout,
    not its timeout plus the fast interval after it; from the first failed check to the down decision it
    is (fall − 1) × max(fast_interval, timeout) — 0.4 s here, where the next check counted from the result
    took (fall − 1) × (fast_interval + timeout) = 0.6 s — and detection stays within the bound."""
    api = FakeApi(tmp_path / "api.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fsm_cfg = {"rise": 1, "fall": 3, "interval": 0.3, "fast_interval": 0.1, "timeout": 0.2,
               "on_down": "withdrawn", "drain_mode": "demoted", "debounce": 0.0}
    config = AgentConfig.from_json({
        "server": "sjc-s1", "pop": "sjc", "fsm": fsm_cfg,
        "checks": [{"kind": "http", "url": f"http://127.0.0.1:{port}/healthz", "status": 200, "body": "ok"}],
        "api_socket": str(tmp_path / "api.sock"), "drain_file": str(tmp_path / "drain"),
        "events": str(tmp_path / "events.jsonl"), "metrics": str(tmp_path / "health.prom"),
        "state": str(tmp_path / "state.json"),
    })
    hung = asyncio.Event()

    async def scenario() -> float:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            if hung.is_set():
                await asyncio.sleep(5)  # accepted, never answered: the check times out
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nok\n")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", port)
        agent = Agent(config)
        task = asyncio.ensure_future(agent.run())
        await until(lambda: api.last() == "normal", 3.0)
        hung.set()
        took = await until(lambda: api.last() == "withdrawn", 5.0)
        agent.stopping.set()
        await task
        srv.close()
        return took

    took = asyncio.run(scenario())
    api.stop.set()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    falling = next(e["t"] for e in events if e["health"] == "falling")
    down = next(e["t"] for e in events if e["health"] == "down")
    assert down - falling <= 2 * 0.2 + 0.08, (down - falling, events)  # 80 ms for a test process's turns
    assert took <= config.fsm.detection_bound() + 0.08
