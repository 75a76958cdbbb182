"""The lab's own daemons: the PoP server's probe responder and the client's prober."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from lab.daemon import Daemon, NodeEnv
from lab.model import Client, Server
from lab.netns import socket_in


class Responder(Daemon):
    """``pop_agent.responder`` on the server's anycast addresses (UDP probes, HTTP GET /)."""

    name = "responder"

    def __init__(self, env: NodeEnv, server: Server, udp_port: int) -> None:
        super().__init__(env)
        self.server = server
        self.udp_port = udp_port

    def render_config(self) -> dict[Path, str]:
        return {}

    def validate(self) -> None:
        if not self.server.prefixes:
            raise self.error("no anycast prefix to answer on")

    def argv(self) -> list[str]:
        argv = [self.env.python, "-m", "pop_agent.responder", "--pop", self.server.pop,
                "--server", self.server.name, "--udp-port", str(self.udp_port)]
        for prefix in self.server.prefixes:
            argv += ["--address", str(prefix.network_address)]
        return argv

    def ready(self) -> bool:
        """A UDP probe from inside the server's own namespace is answered with this server's name."""
        if self.env.netns is None:
            return False
        with socket_in(self.env.netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(b'{"seq": 0}', (str(self.server.prefixes[0].network_address), self.udp_port))
            try:
                reply = json.loads(sock.recv(2048))
            except (OSError, ValueError):
                return False
        return bool(reply.get("server") == self.server.name)


class Prober(Daemon):
    """``lab.prober`` in a client namespace, probing the first anycast address."""

    name = "prober"

    def __init__(self, env: NodeEnv, client: Client, target: str, rate_hz: float, udp_port: int) -> None:
        super().__init__(env)
        self.client = client
        self.target = target
        self.rate_hz = rate_hz
        self.udp_port = udp_port

    @property
    def out(self) -> Path:
        return self.env.dir / "probes.jsonl"

    def render_config(self) -> dict[Path, str]:
        return {}

    def validate(self) -> None:
        if self.rate_hz <= 0:
            raise self.error(f"probe rate {self.rate_hz} must be positive")

    def argv(self) -> list[str]:
        return [self.env.python, "-m", "lab.prober", "--target", self.target, "--port", str(self.udp_port),
                "--rate", str(self.rate_hz), "--out", str(self.out)]

    def ready(self) -> bool:
        return self.out.exists()
