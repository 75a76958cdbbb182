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
from typing import Any, Literal
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


def soa_query(zone: str, ident: int) -> bytes:
    """A DNS query (RFC 1035 §4.1) for ``zone``'s SOA, recursion not desired, with id ``ident``."""
    labels = [label for label in zone.rstrip(".").split(".") if label]
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\0"
    return ident.to_bytes(2, "big") + b"\0\0\0\x01\0\0\0\0\0\0" + qname + b"\0\x06\0\x01"


def soa_problem(reply: bytes, ident: int) -> str | None:
    """What is wrong with ``reply`` as an authoritative answer to :func:`soa_query` (None: nothing)."""
    if len(reply) < 12 or int.from_bytes(reply[:2], "big") != ident:
        return "no answer to our query"
    flags, answers = int.from_bytes(reply[2:4], "big"), int.from_bytes(reply[6:8], "big")
    if not flags & 0x8000:
        return "not a response"
    if flags & 0x000F:
        return f"rcode {flags & 0x000F}"
    if not flags & 0x0400:
        return "answer without authority (the zone is not loaded)"
    return None if answers else "no SOA in the answer"


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


@dataclass(frozen=True)
class DnsCheck:
    """Passes when ``host:port`` answers an SOA query for ``zone`` with authority: the server runs and
    serves the zone (a DNS node announces its provider's prefix only then, RFC 4786 §4.3). The query is
    built by hand: dnspython's import would cost the agent several MB for one fixed question."""

    host: str
    port: int
    zone: str
    timeout: float = 0.03

    async def probe(self) -> str | None:
        ident = int.from_bytes(os.urandom(2), "big")
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(_Datagram, remote_addr=(self.host, self.port))
        try:
            transport.sendto(soa_query(self.zone, ident))
            return soa_problem(await proto.reply, ident)
        finally:
            transport.close()


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


Check = HttpCheck | TcpCheck | CommandCheck | DnsCheck | LocalCheck

#: A configured check (its JSON, the agent's ``timeout``) → the check, by ``kind``. Raises KeyError or
#: ValueError for a malformed one.
KINDS: dict[str, Callable[[dict[str, Any], float], Check]] = {
    "http": lambda c, t: HttpCheck(c["url"], int(c["status"]), c.get("body"), t),
    "tcp": lambda c, t: TcpCheck(c["host"], int(c["port"]), t),
    "command": lambda c, t: CommandCheck(tuple(str(a) for a in c["argv"]), t),
    "dns": lambda c, t: DnsCheck(c["host"], int(c["port"]), str(c["query"]), t),
}

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
