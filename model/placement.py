"""Placement: a topology partitioned over N hosts, as a lab spanning machines would run it.

A lab that outgrows one machine (``docs/scaling.md``) is cut into parts, one per host; a link inside a
part stays a veth, a link between parts becomes a tunnel between the two hosts (Mininet's cluster mode
uses GRE or SSH tunnels; here VXLAN). This module decides the cut; :mod:`lab.run.net` builds it, on one
machine, with each host's part behind its own "host" namespace and the tunnels between those: the
same packets as across machines, so the figures can be compared with and without the cut.

The cut keeps what must stay together together: a PoP server, client or service node goes where its
(first) router goes; routers are placed by region (whole regions to the least loaded host, largest
first) and, when there are more hosts than regions, regions are split along their routers. Pure and
deterministic.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from core.errors import TopologyError
from model.topology import Interface, Topology

#: VXLAN network identifiers of the cut links start here (one per link).
VNI_BASE = 1000


@dataclass(frozen=True)
class Placement:
    """Node → host index (0 … hosts − 1), and the links that cross hosts (in topology order)."""

    hosts: int
    host_of: dict[str, int]
    cut: tuple[tuple[Interface, Interface], ...]

    def nodes_on(self, host: int) -> list[str]:
        return [n for n, h in self.host_of.items() if h == host]


def _attached_router(topo: Topology) -> dict[str, str]:
    """Every non-router node → the router it hangs off (a server's first upstream)."""
    out: dict[str, str] = {}
    for s in topo.all_servers():
        out[s.name] = s.neighbors[0].node
    for c in topo.clients:
        out[c.name] = c.router
    for svc in topo.services():
        out[svc.name] = svc.router
    for d in topo.dns.nodes if topo.dns else ():
        out[d.name] = d.router
    return out


def place(topo: Topology, hosts: int) -> Placement:
    """Partition ``topo`` over ``hosts`` hosts. Raises TopologyError if there are more hosts than
    routers (a host with nothing on it)."""
    routers = [r.name for r in topo.routers]
    if not 1 <= hosts <= len(routers):
        raise TopologyError(topo.source, "settings.hosts", f"{hosts} hosts for {len(routers)} routers",
                            f"use 1..{len(routers)}")
    attached = _attached_router(topo)
    weight: dict[str, int] = defaultdict(lambda: 1)
    for router in attached.values():
        weight[router] += 1
    by_region: dict[str, list[str]] = defaultdict(list)
    for r in topo.routers:
        by_region[r.region].append(r.name)
    # Units placed whole: regions, or (more hosts than regions) each region's routers one by one.
    units: list[list[str]] = (list(by_region.values()) if hosts <= len(by_region)
                              else [[r] for rs in by_region.values() for r in rs])
    units.sort(key=lambda u: (-sum(weight[r] for r in u), u[0]))
    load = [0] * hosts
    host_of: dict[str, int] = {}
    for unit in units:
        target = min(range(hosts), key=lambda h: (load[h], h))
        for name in unit:
            host_of[name] = target
        load[target] += sum(weight[name] for name in unit)
    for node, router in attached.items():
        host_of[node] = host_of[router]
    cut = tuple((a, b) for a, b in topo.links() if host_of[a.node] != host_of[b.node])
    return Placement(hosts, host_of, cut)
