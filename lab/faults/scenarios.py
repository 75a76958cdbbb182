"""The fault catalogue's names, and what a running lab has failed now: what the command line needs
without loading the catalogue (and with it the topology model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Scenario → the kinds of target it takes.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "service-crash": ("server", "pop"),
    "drain": ("server", "pop"),
    "speaker-crash": ("server", "pop"),
    "server-silent": ("server", "pop"),
    "server-crash": ("server", "pop"),
    "link-down": ("link",),
    "link-degrade": ("link",),
    "link-lossy": ("link",),
    "pop-down": ("pop",),
    "region-down": ("region",),
    "region-loss": ("region",),
    "pops-down": ("region",),
    "flap": ("server", "pop", "link"),
    "control-down": ("control",),
    "control-cut": ("control",),
    "cp-down": ("cp", "region"),
    "cp-cut": ("cp", "region"),
    "etcd-leader-kill": ("control",),
    "artifact-store-wipe": ("cp", "region", "global"),
    "kv-master-crash": ("kv", "region"),
    "do-crash": ("kv", "region"),
    "do-cut": ("kv", "region"),
    "storage-partition": ("kv", "region"),
    "kv-master-wipe": ("kv", "region"),
    "do-host-wipe": ("kv", "region"),
    "kv-global-loss": ("global",),
    "catastrophic": ("global",),
    "clock-ahead": ("kv", "region"),
    "clock-behind": ("kv", "region"),
    "origin-down": ("origin",),
    "origin-slow": ("origin",),
    "origin-errors": ("origin",),
    "dns-provider-down": ("dns-provider",),
    "dns-node-down": ("dns-node",),
    "dns-primary-down": ("dns-primary",),
    "dns-region-withdraw": ("region",),
    "resolver-down": ("resolver",),
}
#: Where a lab's Injector records what is failed now.
FAULTS_FILE = "faults.json"


def active_faults(run_dir: Path) -> dict[str, Any]:
    """What a running lab has failed now (target → plan and time), as recorded by its Injector."""
    try:
        data: dict[str, Any] = json.loads((run_dir / FAULTS_FILE).read_text())
        return data
    except (OSError, ValueError):
        return {}
