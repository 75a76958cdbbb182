"""The dead-man's switch, checked the same way for a split health agent and a folded pop agent: stop the
process that holds the ExaBGP API (SIGSTOP), the API withdraws when the lease runs out, and resumed, it
holds again and the server is announced."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from core.clock import monotonic
from core.wait import wait_for
from health.agent import renew_period
from lab.run.lab import Lab


def api_events(lab: Lab, server: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (lab.node_dir(server) / "api-events.jsonl").read_text().splitlines()]


def stopped_holder_is_withdrawn(lab: Lab, server: str, pid: int, margin_s: float) -> None:
    """SIGSTOP ``pid`` (the process holding ``server``'s API) and assert the withdrawal comes when its lease
    runs out: no earlier than a renewal period before (the lease runs from the last renewal, at most one
    renewal period before the stop), no later than ``margin_s`` after; then SIGCONT and wait for it to
    announce again."""
    lease = next(float(e["lease_s"]) for e in reversed(api_events(lab, server)) if e["event"] == "agent-holds")
    renew = renew_period(lab.topo.server(server).profile.health.interval, lease)
    t_stop = monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        lost = wait_for(lambda: [e for e in api_events(lab, server)
                                 if e["event"] == "agent-lost" and float(e["t"]) >= t_stop],
                        timeout=lease + 5.0, what="the API to give up on a stopped agent", interval=0.05)
        took = float(lost[0]["t"]) - t_stop
        assert lease - renew <= took <= lease + margin_s and str(lost[0]["why"]).startswith("silent"), lost[0]
        assert lab.exabgp(server).api("status")["mode"] == "withdrawn"
    finally:
        os.kill(pid, signal.SIGCONT)
    # Resumed, it holds again and, its checks passing all along, asks for the route back.
    wait_for(lambda: lab.exabgp(server).api("status")["mode"] == "normal", timeout=10.0,
             what="the resumed agent to announce again", interval=0.05)
