"""A lab's run directory and names, readable from any process: the controller's, the CLI's, a test's.

Everything a lab makes is named after it: its run directory ``/run/anylab/<name>`` (``ANYLAB_RUN_ROOT``
to move it), its namespaces ``anylab-<name>-<node>``. The run directory holds ``state.json`` (phase,
topology, the controller's pid), ``in-service.json`` (PoP → servers in service), the process records
(``pids.jsonl``) and one directory per node.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UsageError
from core.records import is_same_process

if TYPE_CHECKING:
    from model.topology import Topology

RUN_ROOT = Path(os.environ.get("ANYLAB_RUN_ROOT", "/run/anylab"))
NETNS_PREFIX = "anylab-"
STATE_FILE = "state.json"
#: PoP → its servers in service now (``anylab scale`` changes it); absent: the topology's ``servers``.
IN_SERVICE_FILE = "in-service.json"
#: A lab name: no dashes (the namespace prefix "anylab-<name>-" must not match another lab's), no dots or
#: slashes (it becomes a path under the run root).
LAB_NAME_RE = re.compile(r"^[a-z0-9]{1,16}$")


def check_name(name: str) -> str:
    """``name`` if it is a lab name; raises UsageError (before anything touches the disk) otherwise."""
    if not isinstance(name, str) or not LAB_NAME_RE.fullmatch(name):
        raise UsageError(f"bad lab name {name!r}: use 1 to 16 lower-case letters and digits (e.g. --name lab1)")
    return name


def run_dir_of(name: str) -> Path:
    """The run directory of lab ``name``; raises UsageError for a name that is not a lab name, so no path
    is ever built from an unchecked one."""
    return RUN_ROOT / check_name(name)


def netns_prefix(name: str) -> str:
    return f"{NETNS_PREFIX}{name}-"


def read_state(name: str) -> dict[str, Any] | None:
    """Lab ``name``'s ``state.json`` (None: no such lab; phase "unknown": its state cannot be read)."""
    run_dir = run_dir_of(name)
    if not run_dir.exists():
        return None
    try:
        data: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
        return data
    except (OSError, ValueError):
        return {"name": name, "phase": "unknown"}


def controller_alive(state: dict[str, Any]) -> bool:
    """Whether the controller that wrote ``state`` still runs (its pid and start time, not the pid alone)."""
    pid, start = state.get("pid"), state.get("starttime")
    return isinstance(pid, int) and isinstance(start, int) and is_same_process(pid, start)


def topology_of(state: dict[str, Any]) -> Topology:
    """The topology a running lab was built from (as it was then, not as the file is now)."""
    from model.load import rebuild_topology  # the model is dear to import; most callers of this module need none

    return rebuild_topology(state["spec"], state.get("source", "<state>"))


def node_index(topo: Topology) -> dict[str, Any]:
    """What the command line looks up often, kept in the lab's state so that it need not rebuild the
    topology (pydantic and the resolver: ~0.15 s a call): PoP → its server slots, the KV masters."""
    return {"servers": {p.name: [*p.servers, *p.standby] for p in topo.pops},
            "kv_masters": [k.name for k in topo.kv_masters]}


def lab_names() -> list[str]:
    """The labs the run root holds (directories with a lab's name; anything else there is not a lab's)."""
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.name for p in RUN_ROOT.iterdir() if p.is_dir() and LAB_NAME_RE.fullmatch(p.name))


def in_service(topo: Topology, run_dir: Path) -> dict[str, list[str]]:
    """PoP → its servers in service now (the rest of its slots are racked but have no processes)."""
    try:
        data: dict[str, list[str]] = json.loads((run_dir / IN_SERVICE_FILE).read_text())
        return data
    except (OSError, ValueError):
        return {p.name: list(p.servers) for p in topo.pops}


def write_in_service(run_dir: Path, serving: dict[str, list[str]]) -> None:
    """Replace ``in-service.json`` at once (a reader sees the old set or the new one)."""
    tmp = run_dir / (IN_SERVICE_FILE + ".tmp")
    tmp.write_text(json.dumps(serving))
    tmp.replace(run_dir / IN_SERVICE_FILE)


def control_plane_dirs(topo: Topology, run_dir: Path) -> list[Path]:
    """The regions' control plane directories (each with ``api.sock`` and the admin token), in the order
    the operator tries them: the topology's regions in the order they are listed."""
    order = [r.name for r in topo.spec.regions]
    return [run_dir / cp.name for cp in sorted(topo.control_planes, key=lambda c: order.index(c.region))]
