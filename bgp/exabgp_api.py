"""The process ExaBGP runs for its API: announces or withdraws the server's anycast routes on request.

ExaBGP starts it (``process`` in the config), writes neighbour events and ``done``/``error`` acks to
its stdin and reads API commands from its stdout. The lab talks to it over a Unix socket, one JSON
line per request (``{"cmd": "announce"|"withdraw"|"status"}``), one JSON line back. The wanted state
is kept in a file so a respawned process restores it, and every change is logged as a JSON line with
its CLOCK_MONOTONIC time (the lab's one clock for measurements).

Run as ``python -m bgp.exabgp_api --dir D`` where ``D/routes.json`` lists the routes.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any


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

    def command(self, verb: str) -> str:
        path = " ".join(str(a) for a in self.as_path)
        return f"{verb} route {self.prefix} next-hop self med {self.med} as-path [ {path} ]"


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class ApiState:
    routes: tuple[Route, ...]
    announced: bool = True
    neighbors: dict[str, str] = field(default_factory=dict)
    acks: int = 0
    errors: int = 0
    last_change: float = 0.0

    def status(self) -> dict[str, Any]:
        return {"announced": self.announced, "neighbors": self.neighbors, "acks": self.acks,
                "errors": self.errors, "last_change": self.last_change, "pid": os.getpid()}


class ApiProcess:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        routes = json.loads((directory / "routes.json").read_text())
        wanted = directory / "api-state.json"
        announced = json.loads(wanted.read_text())["announced"] if wanted.exists() else True
        self.state = ApiState(tuple(Route.from_json(r) for r in routes), announced)
        self.events = open(directory / "api-events.jsonl", "a", buffering=1)  # noqa: SIM115

    def log(self, event: str, **extra: Any) -> None:
        self.events.write(json.dumps({"t": monotonic(), "event": event, **extra}) + "\n")

    def send(self, verb: str) -> None:
        for route in self.state.routes:
            sys.stdout.write(route.command(verb) + "\n")
        sys.stdout.flush()

    def set_announced(self, announced: bool) -> None:
        verb = "announce" if announced else "withdraw"
        self.send(verb)
        self.state.announced = announced
        self.state.last_change = monotonic()
        self.log(verb)
        tmp = self.dir / "api-state.json.tmp"
        tmp.write_text(json.dumps({"announced": announced}))
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
            cmd = json.loads(raw or b"{}").get("cmd")
        except (json.JSONDecodeError, AttributeError):
            return {"ok": False, "error": "request must be a JSON object with 'cmd'"}
        if cmd in ("announce", "withdraw"):
            self.set_announced(cmd == "announce")
        elif cmd != "status":
            return {"ok": False, "error": f"unknown cmd {cmd!r}; use announce, withdraw or status"}
        return {"ok": True, **self.state.status()}

    def run(self) -> None:
        sock_path = self.dir / "api.sock"
        sock_path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(sock_path))
        server.listen(16)
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
        sel.register(server, selectors.EVENT_READ, "server")
        self.log("start", announced=self.state.announced)
        if self.state.announced:
            self.set_announced(True)
        while True:
            for key, _ in sel.select():
                if key.data == "stdin":
                    line = sys.stdin.readline()
                    if not line:  # ExaBGP went away: so do we
                        self.log("exit")
                        return
                    self.on_exabgp_line(line)
                else:
                    conn, _ = server.accept()
                    with conn:
                        conn.settimeout(2.0)
                        try:
                            reply = self.on_request(conn.makefile("rb").readline())
                            conn.sendall(json.dumps(reply).encode() + b"\n")
                        except OSError:
                            pass


def request(sock_path: Path, cmd: str, timeout: float = 2.0) -> dict[str, Any]:
    """Send one command to a server's API process; raises OSError / ValueError on failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    if not reply.get("ok"):
        raise ValueError(str(reply.get("error")))
    return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    ApiProcess(args.dir).run()


if __name__ == "__main__":
    main()
