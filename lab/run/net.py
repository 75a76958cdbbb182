"""The only module that imports Mininet: nodes as network namespaces, veth links, addresses, routes.

Mininet runs without a controller, switches or OVS: every node is a plain ``mininet.node.Node`` in its
own namespace and every link a veth pair created directly between two namespaces (nothing in the root
namespace). Each node's namespace is also given a name, ``/run/netns/<prefix><node>``, so other
processes (``anylab exec``, ``anylab down --all``) can find exactly what this lab made.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mininet.link import Link
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Node

from core import netns
from core.errors import AnylabError
from core.proc import ProcessGroup
from model.constants import LAB_SUPERNET
from model.placement import VNI_BASE, Placement
from model.topology import Topology

#: Namespace suffixes of the placement prototype (an underscore: no node can be called that).
HOST, UNDERLAY = "_host", "_underlay"


def underlay_address(host: int) -> str:
    """Host ``host``'s address on the underlay (its "LAN")."""
    return f"10.250.0.{host + 1}"


_COMMON_SYSCTLS = [
    # Anycast and ECMP make paths asymmetric; strict reverse-path filtering would drop answers.
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
]
_ROUTER_SYSCTLS = ["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"]


def ip_batch(topo: Topology, node: str) -> list[str]:
    """The ``ip -batch`` lines that address one node's interfaces and add its static routes."""
    lines = ["link set lo up"]
    for r in topo.routers:
        if r.name == node:
            lines.append(f"address add {r.loopback}/32 dev lo")
            for intf in r.interfaces:
                lines += [f"address add {intf.address} dev {intf.name}", f"link set {intf.name} up"]
    for s in topo.all_servers():
        if s.name == node:
            lines.append(f"address add {s.router_id}/32 dev lo")
            lines += [f"address add {p} dev lo" for p in s.prefixes]
            hops = []
            for intf in s.interfaces:
                lines += [f"address add {intf.address} dev {intf.name}", f"link set {intf.name} up"]
                hops.append(f"nexthop via {intf.peer_address.ip} dev {intf.name}")
            # Answers go back into the lab through every upstream (ECMP); there is no default route.
            lines.append(f"route add {LAB_SUPERNET} {' '.join(hops)}")
    for c in topo.clients:
        if c.name == node:
            intf = c.interface
            lines += [f"address add {intf.address} dev {intf.name}", f"link set {intf.name} up"]
            lines += [f"route add {p} via {intf.peer_address.ip}" for p in topo.anycast]
            if topo.monitoring is not None:  # the status page, on the monitoring node
                lines.append(f"route add {topo.monitoring.address}/32 via {intf.peer_address.ip}")
    for svc in topo.services():
        if svc.name == node:
            intf = svc.interface
            lines += [f"address add {intf.address} dev {intf.name}", f"link set {intf.name} up",
                      f"route add {LAB_SUPERNET} via {intf.peer_address.ip}"]
    if topo.dns is not None:
        lines += _dns_lines(topo, node)
    return lines


def _dns_lines(topo: Topology, node: str) -> list[str]:
    """A DNS node's address (an anycast provider node's service address on lo too) and routes: into the
    lab, and for a resolver to the providers' anycast prefixes; a client's routes to its resolvers."""
    assert topo.dns is not None
    lines = []
    for c in topo.clients:
        if c.name == node:
            # Its resolvers, and the providers (``anylab dig --server p1`` asks one directly).
            via = c.interface.peer_address.ip
            lines += [f"route add {a}/32 via {via}" for a in topo.dns.resolvers_for(node)]
            lines += [f"route add {p.anycast or f'{p.address}/32'} via {via}" for p in topo.dns.providers]
    for d in topo.dns.nodes:
        if d.name == node:
            intf = d.interface
            lines += [f"address add {intf.address} dev {intf.name}", f"link set {intf.name} up",
                      f"route add {LAB_SUPERNET} via {intf.peer_address.ip}"]
            if d.speaker is not None:
                lines.append(f"address add {topo.dns.provider(d.provider or '').address}/32 dev lo")
            if d.role == "resolver":
                lines += [f"route add {p.anycast} via {intf.peer_address.ip}" for p in topo.dns.providers
                          if p.anycast is not None]
    return lines


class Network:
    """Builds and tears down the namespaces and links of a topology."""

    def __init__(self, topo: Topology, prefix: str, run_dir: Path, procs: ProcessGroup,
                 placement: Placement | None = None) -> None:
        self.topo = topo
        self.prefix = prefix
        self.run_dir = run_dir
        self.procs = procs
        self.placement = placement if placement is not None and placement.hosts > 1 else None
        self.net: Mininet | None = None
        self.netns: dict[str, str] = {}

    def build(self) -> dict[str, str]:
        """Create every node and link; returns node → namespace path. Raises AnylabError."""
        setLogLevel("error")
        net = Mininet(topo=None, controller=None, switch=None, link=Link, build=False,
                      waitConnected=False, autoSetMacs=False)
        self.net = net
        routers = {r.name for r in self.topo.routers}
        for name in self.topo.node_names():
            node = net.addHost(name, cls=Node, ip=None, inNamespace=True)
            self.procs.adopt(name, "mininet-shell", node.pid, stop_signal=signal.SIGHUP)
            self.netns[name] = netns.attach(self.prefix + name, node.pid)
        cut = set(self.placement.cut) if self.placement is not None else set()
        for a, b in self.topo.links():
            if (a, b) in cut:
                continue  # made below as a tunnel between the two ends' hosts
            try:
                net.addLink(a.node, b.node, intfName1=a.name, intfName2=b.name)
            except Exception as exc:  # Mininet raises bare Exception
                raise AnylabError(f"cannot create link {a.name} <-> {b.name}: {exc}", node=a.node) from exc
        if self.placement is not None:
            self._hosts_and_tunnels(self.placement)
        for name in self.topo.node_names():
            node = net.get(name)
            sysctls = _COMMON_SYSCTLS + (_ROUTER_SYSCTLS if name in routers else [])
            out = node.cmd("sysctl -q -w " + " ".join(sysctls))
            if out.strip():
                raise AnylabError(f"sysctl failed: {out.strip()}", node=name)
            batch = self.run_dir / name / "ip.batch"
            batch.parent.mkdir(parents=True, exist_ok=True)
            batch.write_text("\n".join(ip_batch(self.topo, name)) + "\n")
            out = node.cmd(f"ip -batch {batch} && echo ok")
            if not out.strip().endswith("ok"):
                raise AnylabError(f"addressing failed: {out.strip()}", node=name)
        return dict(self.netns)

    def _hosts_and_tunnels(self, placement: Placement) -> None:
        """The placement prototype: one namespace per host (``<prefix>_host<i>``, standing for that
        machine's own network stack), the hosts on one underlay (a bridge in ``<prefix>_underlay``,
        10.250.0.0/24: the machines' LAN), and every cut link a VXLAN tunnel between the hosts of its
        two ends — made in the host's namespace (where its UDP socket stays) and moved into the node's,
        as a multi-host engine would. Raises AnylabError."""
        underlay = self.prefix + UNDERLAY
        netns.add(underlay)
        netns.ip("-n", underlay, "link", "add", "name", "ulbr", "type", "bridge")
        netns.ip("-n", underlay, "link", "set", "ulbr", "up")
        for h in range(placement.hosts):
            host = self.prefix + f"{HOST}{h}"
            netns.add(host)
            netns.ip("-n", host, "link", "add", "ul", "type", "veth", "peer", "name", f"h{h}", "netns", underlay)
            netns.ip("-n", underlay, "link", "set", f"h{h}", "master", "ulbr", "up")
            netns.ip("-n", host, "address", "add", f"{underlay_address(h)}/24", "dev", "ul")
            netns.ip("-n", host, "link", "set", "ul", "up")
        for k, (a, b) in enumerate(placement.cut):
            for end, peer in ((a, b), (b, a)):
                mine, other = placement.host_of[end.node], placement.host_of[peer.node]
                tmp = f"vx{k}"
                netns.ip("-n", self.prefix + f"{HOST}{mine}", "link", "add", tmp, "type", "vxlan",
                         "id", str(VNI_BASE + k), "local", underlay_address(mine), "remote",
                         underlay_address(other), "dstport", "4789", "nolearning")
                netns.ip("-n", self.prefix + f"{HOST}{mine}", "link", "set", tmp, "netns", self.prefix + end.node)
                netns.ip("-n", self.prefix + end.node, "link", "set", tmp, "name", end.name, "mtu", "1450")

    def stop(self, errors: list[str]) -> None:
        """End the node shells and release their ptys; failures go to ``errors``.

        The named namespaces are removed by ``lab.run.lab.cleanup``, the one place that also cleans
        after a crashed lab."""
        if self.net is not None:
            # Not Mininet's stop(): it deletes every link through the node shells, one command at a
            # time. Ending the shells and deleting the namespaces removes the veths all the same.
            for host in self.net.hosts:
                try:
                    host.terminate()
                except Exception as exc:  # keep tearing down
                    errors.append(f"{host.name}: mininet shell: {exc}")
            self.net = None
