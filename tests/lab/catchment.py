"""Waiting out a health agent's false alarm before comparing a lab's catchment with its prediction: the
``fast`` profile's 30 ms checks withdraw healthy servers on a loaded 2-core machine, and even the
:data:`model.profiles.LOADED_BOX` checks the routing modules run may meet a slower machine (shared by the
modules that bring global.yaml up)."""

from __future__ import annotations

import json
import warnings
from typing import Any

from core.wait import wait_for
from lab.run.lab import Lab

#: How long a healthy server withdrawn by a false alarm may take to be back in every client's catchment: the
#: fast profile's 30 ms check timeout can pass on a 2-core machine still deleting the previous module's
#: namespaces (CI saw ord withdrawn once, right after up), and it comes back within rise × interval plus BGP's
#: reconvergence — well under a second; the rest is margin for a loaded machine.
SETTLE_S = 10.0


def false_alarms(lab: Lab) -> dict[str, list[dict[str, Any]]]:
    """PoP server → its health agent's decisions that took it out of service after it was first up."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in lab.topo.servers:
        events = [json.loads(x) for x in (lab.node_dir(s.name) / "health-events.jsonl").read_text().splitlines()]
        first_up = next((i for i, e in enumerate(events) if e.get("health") == "up"), len(events))
        down = [e for e in events[first_up:] if e.get("announced") not in ("normal", None)
                and e.get("event") != "stop"]
        if down:
            out[s.name] = down
    return out


def settled(lab: Lab, observe: Any, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """``observe()`` once its ``"catchment"`` equals ``expected`` (the prediction if not given): a false alarm
    is waited out and reported as a warning naming the server's decisions; a catchment that stays different
    raises WaitTimeout with the last catchment and the alarms."""
    predicted = lab.predicted() if expected is None else expected
    last: list[dict[str, Any]] = []

    def probe() -> dict[str, Any] | None:
        data = observe()
        last[:] = [data]
        return data if data["catchment"] == predicted else None

    data = wait_for(probe, timeout=SETTLE_S, interval=0.2, what=f"the observed catchment to equal {predicted}",
                    describe=lambda: f"{last[0]['catchment'] if last else None}; alarms {false_alarms(lab)}")
    if alarms := false_alarms(lab):
        warnings.warn(f"healthy servers withdrawn by their health agents: {alarms}", stacklevel=2)
    return data
