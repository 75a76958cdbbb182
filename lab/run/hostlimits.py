"""What a stock Debian caps that a lab of hundreds of PoPs needs: the kernel's neighbour table and the
controller's open files. Raised at ``up`` only as far as the topology needs, and said so.

- The IPv4 neighbour (ARP) table is one table for all network namespaces (its entry count is global);
  stock thresholds are 128 / 512 / 1024 entries (``net.ipv4.neigh.default.gc_thresh1/2/3``). Every end
  of every lab link learns its peer, so a lab needs about one entry per interface: past ~1 000 (≈ 380
  PoPs) the kernel starts refusing new entries ("neighbour table overflow") and links go silent.
- The controller holds a few descriptors per node (Mininet's node shells, the recorders' sockets in
  every router, log files): past ~500 nodes the usual soft limit of 1 024 open files runs out.
"""

from __future__ import annotations

import resource
from pathlib import Path

from model.topology import Topology

NEIGH = Path("/proc/sys/net/ipv4/neigh/default")
#: Descriptors the controller may hold per node, and beyond the nodes.
FDS_PER_NODE, FDS_BASE = 8, 1024


def neighbour_entries(topo: Topology) -> int:
    """Neighbour entries the lab makes: one per link end."""
    return sum(1 for _ in topo.interfaces())


def wanted(topo: Topology) -> dict[str, int]:
    """The thresholds the lab wants: no garbage collection below its own entries (gc_thresh1), room for
    twice them before it starts (gc_thresh2) and four times as the hard cap (gc_thresh3)."""
    need = neighbour_entries(topo)
    return {"gc_thresh1": need, "gc_thresh2": 2 * need, "gc_thresh3": 4 * need}


def raise_limits(topo: Topology, neigh: Path = NEIGH) -> list[str]:
    """Raise the neighbour thresholds and this process's open-file limit where they are below what
    ``topo`` needs; never lowers anything. Returns one line per change (or per change it could not
    make, e.g. in a container without write access to /proc/sys)."""
    notes: list[str] = []
    for name, value in wanted(topo).items():
        path = neigh / name
        try:
            current = int(path.read_text())
            if current < value:
                path.write_text(f"{value}\n")
                notes.append(f"raised net.ipv4.neigh.default.{name} {current} → {value} "
                             f"({neighbour_entries(topo)} neighbour entries in this lab)")
        except (OSError, ValueError) as exc:
            notes.append(f"could not raise net.ipv4.neigh.default.{name} to {value}: {exc}")
    need = FDS_PER_NODE * len(topo.node_names()) + FDS_BASE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
            notes.append(f"raised the controller's open files {soft} → {need}")
        except (OSError, ValueError) as exc:
            notes.append(f"could not raise the controller's open files to {need}: {exc}")
    return notes
