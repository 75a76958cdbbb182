"""The ExaBGP API's dead-man's switch: a held connection that closes or goes silent withdraws the agent's
routes; a renewed one keeps them. The API runs as it does inside ExaBGP (a thread behind pipes)."""

from __future__ import annotations

import json
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgp.exabgp_api import Hold, request
from bgp.exabgp_inproc import ThreadProcess
from core.clock import monotonic
from core.wait import wait_for

ROUTES = {"routes": [{"prefix": "198.51.100.0/24", "as_path": [65001]}]}


class Speaker:
    """ExaBGP's side of the pipes: what the API told it, a line at a time."""

    def __init__(self, directory: Path) -> None:
        (directory / "routes.json").write_text(json.dumps(ROUTES))
        self.dir = directory
        self.proc = ThreadProcess(directory)
        self.buffer = b""

    @property
    def sock(self) -> Path:
        return self.dir / "api.sock"

    def next_line(self, timeout: float) -> str | None:
        """The API's next command, or None when none comes within ``timeout``."""
        deadline = monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            self.buffer += self.proc.stdout.read(4096) or b""
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(x) for x in (self.dir / "api-events.jsonl").read_text().splitlines()]


@pytest.fixture
def speaker(tmp_path: Path) -> Iterator[Speaker]:
    s = Speaker(tmp_path)

    def answers() -> bool:
        try:
            return bool(request(s.sock, "status", timeout=1.0)["ok"])
        except (OSError, ValueError):
            return False

    wait_for(answers, timeout=5.0, what="the API process to answer")
    yield s
    s.proc.terminate()
    s.proc.wait(5.0)


def test_a_closed_hold_withdraws(speaker: Speaker) -> None:
    hold = Hold(speaker.sock, lease_s=30.0)
    hold.set("normal")
    assert (speaker.next_line(2.0) or "").startswith("announce route 198.51.100.0/24")
    hold.close()
    assert (speaker.next_line(2.0) or "").startswith("withdraw route 198.51.100.0/24")
    lost = [e for e in speaker.events() if e["event"] == "agent-lost"]
    assert lost and lost[0]["why"] == "connection closed" and lost[0]["announced"] == "withdrawn"
    assert request(speaker.sock, "status")["agent"] == "withdrawn"


def test_a_silent_hold_withdraws_after_its_lease(speaker: Speaker) -> None:
    lease = 0.3
    hold = Hold(speaker.sock, lease_s=lease)
    hold.set("normal")
    t_set = monotonic()
    assert (speaker.next_line(2.0) or "").startswith("announce")
    line = speaker.next_line(lease + 1.0)  # margin: a thread's wake-up on a loaded 2-core box
    assert line is not None and line.startswith("withdraw")
    assert monotonic() - t_set >= lease
    hold.close()


def test_a_renewed_hold_keeps_the_routes(speaker: Speaker) -> None:
    # Renewed every 0.1 s against a 1 s lease: the margin (0.9 s) is this test process's scheduling on a
    # busy 2-core machine.
    lease, renew = 1.0, 0.1
    hold = Hold(speaker.sock, lease_s=lease)
    hold.set("normal")
    assert (speaker.next_line(2.0) or "").startswith("announce")
    end = monotonic() + 3 * lease
    while monotonic() < end:
        hold.alive()
        assert speaker.next_line(renew) is None  # nothing to tell ExaBGP while it is renewed
    assert hold.set("normal")["mode"] == "normal"  # requests still answered on the held connection
    hold.close()


def test_a_new_hold_replaces_the_old_one(speaker: Speaker) -> None:
    first = Hold(speaker.sock, lease_s=30.0)
    first.set("normal")
    assert (speaker.next_line(2.0) or "").startswith("announce")
    second = Hold(speaker.sock, lease_s=30.0)
    with pytest.raises((OSError, ValueError)):
        first.set("normal")  # its connection was closed by the API
    assert speaker.next_line(0.3) is None  # replacing the holder withdraws nothing
    second.set("withdrawn")
    assert (speaker.next_line(2.0) or "").startswith("withdraw")
    first.close()
    second.close()


@pytest.mark.parametrize("lease", [0.0, -1.0, 601.0])
def test_a_hold_without_a_sane_lease_is_refused(speaker: Speaker, lease: float) -> None:
    with pytest.raises(ValueError, match="lease_s"):
        Hold(speaker.sock, lease_s=lease)


def test_a_folded_agent_checks_by_call_and_holds_the_api(speaker: Speaker, tmp_path: Path) -> None:
    """No HTTP service runs on the checked port: only the call can pass the check."""
    import asyncio

    from health.agent import Agent, AgentConfig

    port = 8089
    config = AgentConfig.from_json({
        "server": "s1", "pop": "p",
        "fsm": {"rise": 2, "fall": 2, "interval": 0.05, "fast_interval": 0.02, "timeout": 0.03,
                "on_down": "withdrawn", "drain_mode": "demoted", "debounce": 0.0},
        "checks": [{"kind": "http", "url": f"http://127.0.0.1:{port}/healthz", "status": 200, "body": "ok"}],
        "api_socket": str(speaker.sock), "drain_file": str(tmp_path / "drain"),
        "events": str(tmp_path / "events.jsonl"), "metrics": str(tmp_path / "health.prom"),
        "state": str(tmp_path / "state.json"), "lease_s": 1.0,
    })
    problem: list[str | None] = [None]
    seen: list[str] = []

    async def next_command() -> str:
        line = await asyncio.to_thread(speaker.next_line, 3.0)
        assert line is not None, f"no command from the API after {seen}"
        seen.append(line.split()[0])
        return seen[-1]

    async def scenario() -> None:
        agent = Agent(config, local=(port, lambda: problem[0]))
        task = asyncio.create_task(agent.run())
        assert await next_command() == "announce"
        problem[0] = "the edge is not serving"
        assert await next_command() == "withdraw"
        problem[0] = None
        assert await next_command() == "announce"
        # Held and renewed: a second lease's worth of time passes without a word to ExaBGP.
        assert await asyncio.to_thread(speaker.next_line, 2 * config.lease_s) is None  # type: ignore[operator]
        agent.stopping.set()
        await task
        assert await next_command() == "withdraw"

    asyncio.run(scenario())
    events = speaker.events()
    assert [e["event"] for e in events].count("agent-holds") == 1
    assert events[-1]["event"] == "agent-lost"  # the agent let go after its own withdrawal


@pytest.mark.parametrize(("interval", "lease", "period"), [
    (1.0, 2.3, 1.0),     # profile scale: every check renews
    (0.05, 1.0, 0.5),    # profile fast: every 10th check
    (2.0, 3.0, 1.5),     # checks sparser than half a lease: twice a lease anyway
])
def test_renewals_ride_on_checks_and_come_twice_a_lease(interval: float, lease: float, period: float) -> None:
    from health.agent import renew_period

    assert renew_period(interval, lease) == pytest.approx(period)


def test_a_stalled_client_does_not_stop_the_api_or_cost_the_holder_its_lease(speaker: Speaker) -> None:
    """Issue 20: a client that connects and sends nothing (or half a line) used to hold the API's loop for
    its 2 s timeout; the holder's renewals went unread and its 0.3 s lease ran out, withdrawing a healthy
    server (``agent-lost``). Each client is now read without blocking the loop."""
    import socket
    import time

    hold = Hold(speaker.sock, lease_s=0.3)
    hold.set("normal")
    assert (speaker.next_line(2.0) or "").startswith("announce route 198.51.100.0/24")
    stalled = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for s in stalled:
            s.connect(str(speaker.sock))
        stalled[0].sendall(b'{"cmd": "sta')  # half a request, never finished
        t0 = monotonic()
        while monotonic() - t0 < 1.5:
            hold.alive()
            time.sleep(0.1)  # the holder's own renewal period
        assert request(speaker.sock, "status", timeout=1.0)["ok"]  # others are still answered meanwhile
    finally:
        for s in stalled:
            s.close()
    assert not [e for e in speaker.events() if e["event"] == "agent-lost"], speaker.events()
    hold.close()
