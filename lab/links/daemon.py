"""The link relay as one of the lab's daemons (``anylab-relay`` on a router that owns delayed links)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from lab.links.control import RELAY_BIN, config_text, relay_request


class LinkRelay(Daemon):
    """``anylab-relay`` (:file:`lab/links/relay.c`) in a router's namespace; ready when its control socket
    answers with every queue of its config bound."""

    name = "link-relay"

    def __init__(self, env: NodeEnv, config: dict[str, Any]) -> None:
        super().__init__(env)
        self.config = config

    @property
    def control(self) -> Path:
        return self.path(".sock")

    def render_config(self) -> dict[Path, str]:
        return {self.path(".conf"): config_text(self.config)}

    def validate(self) -> None:
        self.run_check([str(RELAY_BIN), "--check", str(self.path(".conf"))], "anylab-relay --check")

    def argv(self) -> list[str]:
        return [str(RELAY_BIN), str(self.path(".conf")), str(self.control)]

    def ready(self) -> bool:
        try:
            got = relay_request(self.control, {"op": "stats"}, timeout=1.0)
        except AnylabError:
            return False
        return len(got.get("queues", [])) >= len(self.config["queues"])

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control request; raises AnylabError."""
        return relay_request(self.control, request)
