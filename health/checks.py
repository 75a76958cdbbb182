"""Health checks the agent runs: HTTP GET, TCP connect, a command — each bounded by its own timeout.

Timeouts are asyncio deadlines (no SIGALRM, so several checks run at once in one process). HTTP is a
plain HTTP/1.0 GET over asyncio streams rather than aiohttp: the agent runs on every PoP server and
aiohttp's import alone would cost a good part of the per-server memory budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from core.clock import monotonic


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str
    duration: float


@dataclass(frozen=True)
class HttpCheck:
    """GET ``url``; passes on ``status`` and, if given, ``body`` appearing in the answer's body."""

    url: str
    status: int = 200
    body: str | None = None
    timeout: float = 0.03

    async def probe(self) -> str | None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs are checked, not {self.url!r}")
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            path = parts.path or "/"
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(65536)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        got = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else None
        if got != self.status:
            return f"HTTP status {got}, expected {self.status}"
        if self.body is not None and self.body.encode() not in body:
            return f"body lacks {self.body!r}"
        return None


@dataclass(frozen=True)
class TcpCheck:
    """Passes when a TCP connection to ``host:port`` opens."""

    host: str
    port: int
    timeout: float = 0.03

    async def probe(self) -> str | None:
        _, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        return None


@dataclass(frozen=True)
class CommandCheck:
    """Passes when ``argv`` exits 0. It runs in a process group of its own, killed whole at the timeout
    (killing the direct child alone left a shell's children running). The group is killed while its leader
    still lives, so its id cannot have been reused."""

    argv: tuple[str, ...]
    timeout: float = 1.0

    async def probe(self) -> str | None:
        proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its group: the pid is the group's id (a new session)
            await proc.wait()
            raise
        return None if code == 0 else f"exit status {code}"


@dataclass(frozen=True)
class LocalCheck:
    """A call into the process the agent shares with the service (:mod:`pop_agent.agent`): the function
    returns None when healthy, else what is wrong. It proves the event loop turns and the service says it
    serves; the process dying or hanging is the API's dead-man's switch's to catch."""

    health: Callable[[], str | None]
    timeout: float = 0.03

    async def probe(self) -> str | None:
        return self.health()


Check = HttpCheck | TcpCheck | CommandCheck | LocalCheck

def _local(check: LocalCheck) -> Outcome:
    t0 = monotonic()
    problem = check.health()
    return Outcome(problem is None, problem or "ok", monotonic() - t0)


def is_local_healthz(check: Check, port: int) -> bool:
    """Whether ``check`` is the HTTP check of the edge worker's own ``/healthz`` on 127.0.0.1:``port``
    (which answers 200 ``ok``)."""
    if not isinstance(check, HttpCheck):
        return False
    parts = urlsplit(check.url)
    return ((parts.hostname, parts.port or 80, parts.path) == ("127.0.0.1", port, "/healthz")
            and check.status == 200 and check.body in (None, "ok"))


async def run_check(check: Check) -> Outcome:
    """Run one check within its timeout; never raises for a failing service (that is an Outcome)."""
    t0 = monotonic()
    try:
        problem = await asyncio.wait_for(check.probe(), check.timeout)
    except TimeoutError:
        problem = f"timed out after {check.timeout * 1000:.0f} ms"
    except (OSError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    return Outcome(problem is None, problem or "ok", monotonic() - t0)


async def run_checks(checks: list[Check], mode: Literal["all", "any"] = "all") -> Outcome:
    """Run every check at once; ``all`` passes when each passes, ``any`` when one does."""
    t0 = monotonic()
    if all(isinstance(c, LocalCheck) for c in checks):
        # Calls: nothing to wait for, so no tasks and no timeouts (the folded agent's every check).
        outcomes = [_local(c) for c in checks if isinstance(c, LocalCheck)]
    else:
        outcomes = list(await asyncio.gather(*(run_check(c) for c in checks)))
    ok = all(o.ok for o in outcomes) if mode == "all" else any(o.ok for o in outcomes)
    failed = [f"{type(c).__name__}: {o.detail}" for c, o in zip(checks, outcomes, strict=True) if not o.ok]
    return Outcome(ok, "; ".join(failed) or "ok", monotonic() - t0)
