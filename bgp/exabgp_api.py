"""The process ExaBGP runs for its API: announces or withdraws the server's anycast routes on request.

ExaBGP starts it (``process`` in the config), writes neighbour events and ``done``/``error`` acks to
its stdin and reads API commands from its stdout. The lab talks to it over a Unix socket, one JSON
line per request, one JSON line back:

- ``{"cmd": "set", "mode": "normal"|"demoted"|"withdrawn"}`` — the health agent's decision;
- ``{"cmd": "withdraw"}`` / ``{"cmd": "announce"}`` — the operator's (the lab's) administrative
  shutdown and its end; while shut down nothing is announced whatever the agent says;
- ``{"cmd": "status"}``;
- ``{"cmd": "hold", "lease_s": L}`` — a dead-man's switch for an agent that lives in the same process as
  the service it checks (:mod:`pop_agent.agent`): the connection stays open, further requests come on it
  (``{"cmd": "alive"}`` renews the lease without an answer), and when it closes (the process died) or
  nothing arrives for ``L`` seconds (the process hangs) the agent's mode becomes ``withdrawn``
  (logged ``agent-lost``). One holder at a time; a new hold replaces the old one.

What is sent is the worse of the two. Both inputs are kept in a file, so a respawned process — or a
new ExaBGP after a crash — restores them, and every change is logged as a JSON line with its
CLOCK_MONOTONIC time (the lab's one clock for measurements).

Run as ``python -m bgp.exabgp_api --dir D`` where ``D/routes.json`` holds the routes and the demotion.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import IO, Any, cast

from core.clock import monotonic


@dataclass(frozen=True)
class Route:
    """One route as the server announces it; every field is checked before it reaches an API line."""

    prefix: IPv4Network
    med: int
    as_path: tuple[int, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        """Raises ValueError on anything that is not a prefix, a 32-bit MED or a list of ASNs."""
        prefix = IPv4Network(str(data["prefix"]))
        med = int(data.get("med", 0))
        as_path = tuple(int(a) for a in data["as_path"])
        if not 0 <= med <= 0xFFFFFFFF or not as_path or not all(0 < a < 0xFFFFFFFF for a in as_path):
            raise ValueError(f"bad route {data!r}")
        return cls(prefix, med, as_path)

    def demoted(self, prepend: int, med: int) -> Route:
        """The same route made less preferred: the first ASN prepended, ``med`` added (capped)."""
        return Route(self.prefix, min(self.med + med, 0xFFFFFFFF), (self.as_path[0],) * prepend + self.as_path)

    def command(self, verb: str) -> str:
        path = " ".join(str(a) for a in self.as_path)
        return f"{verb} route {self.prefix} next-hop self med {self.med} as-path [ {path} ]"



MODES = ("normal", "demoted", "withdrawn")
#: How long a client may take to send its request line, and how long that line may be.
CLIENT_S = 2.0
MAX_LINE = 65536
#: What a holder sends to renew its lease (exactly this line: it is not parsed, so a keepalive costs little).
ALIVE = b'{"cmd": "alive"}\n'


@dataclass
class ApiState:
    routes: tuple[Route, ...]
    demoted: tuple[Route, ...]
    #: The health agent's wanted mode; the operator's administrative shutdown.
    agent: str = "withdrawn"
    admin_down: bool = False
    #: What ExaBGP was last told to announce.
    sent: str = "withdrawn"
    neighbors: dict[str, str] = field(default_factory=dict)
    acks: int = 0
    errors: int = 0
    last_change: float = 0.0

    @property
    def effective(self) -> str:
        return "withdrawn" if self.admin_down else self.agent

    def status(self) -> dict[str, Any]:
        return {"announced": self.sent != "withdrawn", "mode": self.sent, "agent": self.agent,
                "admin_down": self.admin_down, "neighbors": self.neighbors, "acks": self.acks,
                "errors": self.errors, "last_change": self.last_change, "pid": os.getpid()}


class ApiProcess:
    """What ExaBGP's API process does, reading ExaBGP's JSON on ``stdin`` and writing commands to
    ``stdout`` (the process's own by default; a pair of pipes when it runs inside ExaBGP, see
    :mod:`bgp.exabgp_inproc`)."""

    def __init__(self, directory: Path, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
        self.dir = directory
        self.stdin: IO[str] = stdin or sys.stdin
        self.stdout: IO[str] = stdout or sys.stdout
        data = json.loads((directory / "routes.json").read_text())
        routes = tuple(Route.from_json(r) for r in data["routes"])
        demote = data.get("demote", {})
        prepend, med = int(demote.get("prepend", 0)), int(demote.get("med", 0))
        if not 0 <= prepend <= 16 or not 0 <= med <= 0xFFFFFFFF:
            raise ValueError(f"bad demotion {demote!r}")
        self.state = ApiState(routes, tuple(r.demoted(prepend, med) for r in routes))
        wanted = directory / "api-state.json"
        if wanted.exists():
            saved = json.loads(wanted.read_text())
            self.state.agent = str(saved.get("agent", "withdrawn"))
            self.state.admin_down = bool(saved.get("admin_down", False))
        self.events = open(directory / "api-events.jsonl", "a", buffering=1)  # noqa: SIM115
        #: The dead-man's switch: the holding connection, its unanswered bytes, lease and deadline.
        self.holder: socket.socket | None = None
        self.held = b""
        self.lease_s = 0.0
        self.deadline = float("inf")
        #: Clients whose request line has not all come yet: what came, and when they are given up.
        self.clients: dict[socket.socket, tuple[bytearray, float]] = {}

    def log(self, event: str, **extra: Any) -> None:
        self.events.write(json.dumps({"t": monotonic(), "event": event, **extra}) + "\n")

    def apply(self, force: bool = False) -> None:
        """Tell ExaBGP what is wanted now, if it differs from what it was last told (or ``force``)."""
        want = self.state.effective
        if want == self.state.sent and not force:
            return
        if want == "withdrawn":
            lines = [r.command("withdraw") for r in self.state.routes]
        else:
            # An announcement of the same prefix replaces the previous one: no withdrawal in between.
            lines = [r.command("announce") for r in (self.state.routes if want == "normal" else self.state.demoted)]
        self.stdout.write("".join(line + "\n" for line in lines))
        self.stdout.flush()
        self.state.sent = want
        self.state.last_change = monotonic()
        self.log("withdraw" if want == "withdrawn" else "announce", mode=want, agent=self.state.agent,
                 admin_down=self.state.admin_down)

    def save(self) -> None:
        tmp = self.dir / "api-state.json.tmp"
        tmp.write_text(json.dumps({"agent": self.state.agent, "admin_down": self.state.admin_down}))
        tmp.replace(self.dir / "api-state.json")

    def on_exabgp_line(self, line: str) -> None:
        line = line.strip()
        if line == "done":
            self.state.acks += 1
        elif line == "error":
            self.state.errors += 1
            self.log("error")
        elif line.startswith("{"):
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                return
            if msg.get("type") == "state":
                nb = msg.get("neighbor", {})
                peer = str(nb.get("address", {}).get("peer", "?"))
                self.state.neighbors[peer] = str(nb.get("state", "?"))
                self.log("neighbor", peer=peer, state=self.state.neighbors[peer])

    def on_request(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw or b"{}")
            cmd = req.get("cmd")
        except (json.JSONDecodeError, AttributeError):
            return {"ok": False, "error": "request must be a JSON object with 'cmd'"}
        if cmd in ("announce", "withdraw"):
            self.state.admin_down = cmd == "withdraw"
        elif cmd == "set":
            mode = req.get("mode")
            if mode not in MODES:  # never splice an unchecked value into an API line
                return {"ok": False, "error": f"unknown mode {mode!r}; use one of {', '.join(MODES)}"}
            self.state.agent = mode
        elif cmd != "status":
            return {"ok": False, "error": f"unknown cmd {cmd!r}; use set, announce, withdraw, status or hold"}
        if cmd != "status":
            self.save()
            self.apply()
        return {"ok": True, **self.state.status()}

    def lost(self, why: str) -> None:
        """The holder is gone or silent: drop it, and stop announcing on its behalf."""
        conn, self.holder, self.held, self.deadline = self.holder, None, b"", float("inf")
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        self.log("agent-lost", why=why, announced="withdrawn", was=self.state.agent)
        if self.state.agent != "withdrawn":
            self.state.agent = "withdrawn"
            self.save()
            self.apply()

    def on_accept(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        """A new client: its request is read as it comes, never blocking the loop — a client that stalled
        mid-line held the loop for seconds, and the holder's lease ran out meanwhile."""
        conn.setblocking(False)
        self.clients[conn] = (bytearray(), monotonic() + CLIENT_S)
        sel.register(conn, selectors.EVENT_READ, "client")

    def drop_client(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        sel.unregister(conn)
        self.clients.pop(conn, None)
        conn.close()

    def on_client(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        """More of a client's request; once its line is whole, :meth:`on_line`."""
        buf, _deadline = self.clients[conn]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or len(buf) + len(data) > MAX_LINE:
            self.drop_client(conn, sel)
            return
        buf += data
        if b"\n" in buf:
            sel.unregister(conn)
            self.clients.pop(conn, None)
            line, rest = bytes(buf).split(b"\n", 1)
            self.on_line(conn, line + b"\n", sel, rest)

    def expire_clients(self, sel: selectors.BaseSelector) -> None:
        now = monotonic()
        for conn in [c for c, (_b, deadline) in self.clients.items() if deadline <= now]:
            self.drop_client(conn, sel)

    def on_line(self, conn: socket.socket, line: bytes, sel: selectors.BaseSelector, rest: bytes = b"") -> None:
        """One request, one answer, closed — unless it is a ``hold``: then the connection is kept (with
        ``rest``, what came after the line, as the start of its next requests)."""
        try:
            try:
                req = json.loads(line or b"{}")
            except json.JSONDecodeError:
                req = {}
            if isinstance(req, dict) and req.get("cmd") == "hold":
                lease = float(req.get("lease_s", 0))
                if not 0.0 < lease <= 600.0:
                    conn.sendall(b'{"ok": false, "error": "hold needs 0 < lease_s <= 600"}\n')
                    conn.close()
                    return
                if self.holder is not None:
                    sel.unregister(self.holder)
                    self.holder.close()
                conn.sendall(json.dumps({"ok": True, **self.state.status()}).encode() + b"\n")
                self.holder, self.held, self.lease_s = conn, rest, lease
                self.deadline = monotonic() + lease
                sel.register(conn, selectors.EVENT_READ, "holder")
                self.log("agent-holds", lease_s=lease)
                return
            conn.sendall(json.dumps(self.on_request(line)).encode() + b"\n")
        except (OSError, ValueError):
            pass
        conn.close()

    def on_holder(self, sel: selectors.BaseSelector) -> None:
        """Requests on the holding connection; each renews the lease, ``alive`` is not answered."""
        assert self.holder is not None
        try:
            data = self.holder.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            sel.unregister(self.holder)
            self.lost("connection closed")
            return
        self.deadline = monotonic() + self.lease_s
        self.held += data
        while b"\n" in self.held:
            line, self.held = self.held.split(b"\n", 1)
            if line.strip() == ALIVE.strip():
                continue
            with contextlib.suppress(OSError):  # seen as closed on the next read
                self.holder.sendall(json.dumps(self.on_request(line)).encode() + b"\n")

    def run(self) -> None:
        sock_path = self.dir / "api.sock"
        sock_path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(sock_path))
        server.listen(16)
        sel = selectors.DefaultSelector()
        sel.register(self.stdin, selectors.EVENT_READ, "stdin")
        sel.register(server, selectors.EVENT_READ, "server")
        self.log("start", agent=self.state.agent, admin_down=self.state.admin_down)
        if self.state.effective != "withdrawn":
            self.apply(force=True)
        try:
            while True:
                due = min([self.deadline if self.holder is not None else float("inf"),
                           *(deadline for _b, deadline in self.clients.values())])
                wait = None if due == float("inf") else max(0.0, due - monotonic())
                for key, _ in sel.select(wait):
                    if key.data == "stdin":
                        line = self.stdin.readline()
                        if not line:  # ExaBGP went away: so do we
                            self.log("exit")
                            return
                        self.on_exabgp_line(line)
                    elif key.data == "holder":
                        self.on_holder(sel)
                    elif key.data == "client":
                        self.on_client(cast(socket.socket, key.fileobj), sel)
                    else:
                        conn, _ = server.accept()
                        self.on_accept(conn, sel)
                self.expire_clients(sel)
                if self.holder is not None and monotonic() >= self.deadline:
                    sel.unregister(self.holder)
                    self.lost(f"silent for {self.lease_s:g} s")
        finally:
            sel.close()
            server.close()
            if self.holder is not None:
                self.holder.close()


def _exchange(sock: socket.socket, reader: IO[bytes], req: dict[str, Any]) -> dict[str, Any]:
    """One request line, one reply line; raises OSError (the connection is gone) or ValueError (refused)."""
    sock.sendall(json.dumps(req).encode() + b"\n")
    line = reader.readline()
    if not line:
        raise ConnectionResetError("the API process closed the connection")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise ValueError(str(reply.get("error")))
    return reply


def request(sock_path: Path, cmd: str, timeout: float = 2.0, **args: str) -> dict[str, Any]:
    """Send one command to a server's API process; raises OSError / ValueError on failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        return _exchange(sock, sock.makefile("rb"), {"cmd": cmd, **args})


class Hold:
    """The agent's end of a ``hold``: one open connection to the API process that withdraws the agent's
    routes when it closes or stays silent for ``lease_s``. Every method raises OSError / ValueError when
    the API process is not there (or went away); the caller then makes a new Hold."""

    def __init__(self, sock_path: Path, lease_s: float, timeout: float = 1.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(sock_path))
            self.reader = self.sock.makefile("rb")
            self._ask({"cmd": "hold", "lease_s": lease_s})
        except BaseException:
            self.sock.close()
            raise

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        return _exchange(self.sock, self.reader, req)

    def set(self, mode: str) -> dict[str, Any]:
        """Ask for ``mode`` (normal, demoted, withdrawn); the API's status after it."""
        return self._ask({"cmd": "set", "mode": mode})

    def alive(self) -> None:
        """Renew the lease (no answer comes back)."""
        self.sock.sendall(ALIVE)

    def close(self) -> None:
        """Let go: the API withdraws on the agent's behalf, as if it had died."""
        self.reader.close()
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--ask", choices=("status", "show neighbor"),
                        help="ask the running API process of --dir (anylab exec SERVER -- exabgpcli …) and exit")
    args = parser.parse_args()
    if args.ask is None:
        ApiProcess(args.dir).run()
        return
    try:
        status = request(args.dir / "api.sock", "status")
    except (OSError, ValueError) as exc:
        print(f"error: the ExaBGP API process of {args.dir.name} does not answer: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(status if args.ask == "status" else status.get("neighbors"), indent=1))


if __name__ == "__main__":
    main()
