"""The control plane's feed into DNS: beside the hidden primary, long-poll the control plane for what the
platform's zone is made of (``POST /v1/dns/changes``, signed as role ``dns``), and when it changes write
the zone (:func:`dnsd.platform.platform_zone`, serial = the control plane's generation) and have Knot
load it (``knotc zone-reload``, blocking). Knot's ``zonefile-load: difference`` turns the new file into
a change in its journal: it NOTIFYs the providers' nodes, which transfer it by IXFR.

Regions are tried in the configured order (home first); one that does not answer within a second, or
answers 503 (no etcd quorum), is passed over for the next. Nothing changes in DNS while no region
answers: the providers keep serving the last zone (until its SOA expire).

``state`` (JSON, replaced atomically) says what was last loaded: ``{generation, serial, region,
t_loaded, error}`` (CLOCK_MONOTONIC).

Run as ``python -m dnsd.feeder --config FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.files import write_atomic
from core.http_client import HttpError, http_call
from core.peer_auth import Signer
from dnsd.platform import Base, check_state, platform_zone
from dnsd.zone import ZoneError, render

POLL_WAIT_S = 20.0
CONNECT_S = 1.0
#: Between rounds when no region answered.
BACKOFF_S = 0.5


class Feeder:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        """Raises KeyError/ValueError/TypeError for a malformed config."""
        self.base = Base.from_json(cfg["base"])
        self.controls: Sequence[tuple[str, int]] = [(str(h), int(p)) for h, p in cfg["controls"]]
        if not self.controls:
            raise ValueError("no control plane to follow")
        self.signer = Signer.load(cfg["auth"])
        self.zone_file = Path(cfg["zone_file"])
        self.reload_argv = [str(a) for a in cfg["reload"]]
        self.state_file = Path(cfg["state"])
        self.generation = -1
        self.loaded: dict[str, Any] = {}

    async def changes(self) -> tuple[dict[str, Any], str]:
        """The next state from the first region that answers, and that region. Raises the last error when
        none does."""
        last: Exception = OSError("no control plane")
        for host, port in self.controls:
            try:
                raw = await http_call(host, port, "POST", "/v1/dns/changes", self.signer,
                                      {"generation": self.generation, "wait": POLL_WAIT_S},
                                      timeout=POLL_WAIT_S + 5.0, connect_s=CONNECT_S)
                # A malformed answer counts as no answer: the next region is asked.
                reply = check_state(json.loads(raw))
                return reply, str(reply.get("region"))
            except (HttpError, OSError, TimeoutError, ValueError) as exc:
                last = exc
        raise last

    def load(self, state: Mapping[str, Any], region: str) -> None:
        """Write the zone for ``state`` (checked: :func:`check_state`) and have Knot load it; raises
        ZoneError or subprocess.SubprocessError."""
        text = render(platform_zone(self.base, state))
        write_atomic(self.zone_file, text)
        subprocess.run(self.reload_argv, check=True, capture_output=True, text=True, timeout=30)
        self.generation = int(state["generation"])
        self.loaded = {"generation": self.generation, "serial": max(1, self.generation), "region": region,
                       "t_loaded": monotonic(), "error": None}
        write_atomic(self.state_file, json.dumps(self.loaded))

    def failed(self, error: str) -> None:
        write_atomic(self.state_file, json.dumps({**self.loaded, "error": error, "t_error": monotonic()}))

    async def run(self) -> None:
        write_atomic(self.state_file, json.dumps({"generation": None, "serial": None, "error": None}))
        while True:
            try:
                state, region = await self.changes()
            except (HttpError, OSError, TimeoutError, ValueError) as exc:
                self.failed(f"no control plane answers: {type(exc).__name__}: {exc}")
                await asyncio.sleep(BACKOFF_S)  # a backoff between rounds, not a wait for a state
                continue
            if state["generation"] == self.generation:
                continue
            try:
                self.load(state, region)
            except (ZoneError, subprocess.SubprocessError) as exc:
                detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
                self.failed(f"zone not loaded: {type(exc).__name__}: {detail}")
                await asyncio.sleep(BACKOFF_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    feeder = Feeder(json.loads(args.config.read_text()))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(feeder.run())


if __name__ == "__main__":
    main()
