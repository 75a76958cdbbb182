"""The link relay as one of the lab's daemons (:mod:`lab.links.relay` on a router that owns shaped links)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from lab.links.control import relay_request


class LinkRelay(Daemon):
    """``lab.links.relay`` in a router's namespace; ready when its control socket answers with every
    queue of its config bound."""

    name = "link-relay"

    def __init__(self, env: NodeEnv, config: dict[str, Any]) -> None:
        super().__init__(env)
        self.config = config

    @property
    def control(self) -> Path:
        return self.path(".sock")

    def render_config(self) -> dict[Path, str]:
        return {self.path(".json"): json.dumps(self.config, indent=1)}

    def validate(self) -> None:
        self.run_check([self.env.python, "-m", "lab.links.relay", "--config", str(self.path(".json")),
                        "--control", str(self.control), "--check"], "lab.links.relay --check")

    def argv(self) -> list[str]:
        return [self.env.python, "-m", "lab.links.relay", "--config", str(self.path(".json")),
                "--control", str(self.control)]

    def ready(self) -> bool:
        try:
            got = relay_request(self.control, {"op": "stats"}, timeout=1.0)
        except AnylabError:
            return False
        return len(got.get("queues", [])) >= len(self.config["queues"])

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control request; raises AnylabError."""
        return relay_request(self.control, request)
