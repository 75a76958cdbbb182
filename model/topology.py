"""The resolved model: every node, interface, address and BGP session of a lab decided, as frozen
dataclasses. What the network (Mininet) and the daemons' configs are built from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Protocol, TypeVar

from core.errors import AnylabError
from model.profiles import Profile
from model.spec import AutoscaleSpec, TopologySpec


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


@dataclass(frozen=True)
class Shape:
    """What a link does to packets, each direction alike (see :class:`model.spec.ShapeFields`)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_distribution: str = "uniform"
    loss_pct: float = 0.0
    loss_burst: float = 1.0
    bandwidth_mbit: float | None = None
    queue: int | None = None
    #: The delay came from the ends' locations (great-circle distance), not from the file.
    from_distance: bool = False

    def bare(self) -> bool:
        """Nothing to do: a plain veth."""
        return (self.delay_ms == 0.0 and self.jitter_ms == 0.0 and self.loss_pct == 0.0
                and self.bandwidth_mbit is None)

    def relayed(self) -> bool:
        """Needs the user-space relay (delay, jitter, bursty loss); else the kernel alone does it."""
        return self.delay_ms > 0.0 or self.jitter_ms > 0.0 or (self.loss_pct > 0.0 and self.loss_burst > 1.0)


@dataclass(frozen=True)
class Interface:
    """One end of a veth pair, inside ``node``'s namespace."""

    node: str
    name: str
    address: IPv4Interface
    peer_node: str
    peer_name: str
    peer_address: IPv4Interface
    #: What the link does to packets (both ends carry the same); None: a bare veth.
    shape: Shape | None = None


@dataclass(frozen=True)
class Neighbor:
    """One eBGP session as seen from the local side."""

    node: str
    asn: int
    address: IPv4Address
    local_address: IPv4Address
    interface: str
    router_id: IPv4Address
    #: The session's profile: the PoP's for a router–server session, else the local router's (BFD only
    #: when both routers' profiles have it: BFD needs both ends).
    profile: Profile
    #: What the neighbour is to the local node (``customer``, ``peer``, ``provider``), None without
    #: relations in the topology. A PoP server is its upstream routers' customer.
    relation: str | None = None


@dataclass(frozen=True)
class Router:
    name: str
    asn: int
    region: str
    kind: str
    loopback: IPv4Address
    interfaces: tuple[Interface, ...]
    neighbors: tuple[Neighbor, ...]
    #: Subnets of attached PoP servers, clients and the control node, originated into BGP so answers
    #: (and the PoPs' requests to the control plane) find their way.
    host_subnets: tuple[IPv4Network, ...]
    profile: Profile


@dataclass(frozen=True)
class Server:
    """One PoP server: ExaBGP towards every upstream router, an edge worker on the anycast addresses."""

    name: str
    pop: str
    index: int
    asn: int
    region: str
    router_id: IPv4Address
    interfaces: tuple[Interface, ...]
    neighbors: tuple[Neighbor, ...]
    prefixes: tuple[IPv4Network, ...]
    prepend: int
    med: int
    profile: Profile
    health_agent: str = "anylab"
    #: Racked but not in service at start (brought up by ``anylab scale``).
    standby: bool = False


@dataclass(frozen=True)
class Client:
    name: str
    region: str
    router: str
    interface: Interface


@dataclass(frozen=True)
class ServiceNode:
    """A service's own node (the control plane, a KV master): one link to a router, reached by the PoPs
    over the lab network."""

    name: str
    region: str
    router: str
    interface: Interface
    port: int

    @property
    def address(self) -> IPv4Address:
        return self.interface.address.ip


@dataclass(frozen=True)
class Pop:
    name: str
    region: str
    asn: int
    upstreams: tuple[str, ...]
    servers: tuple[str, ...]
    prepend: int
    med: int
    prefixes: tuple[IPv4Network, ...]
    profile: Profile
    #: Servers racked and cabled but out of service at start, in the order they are brought up.
    standby: tuple[str, ...] = ()
    autoscale: AutoscaleSpec | None = None


@dataclass(frozen=True)
class DnsNode:
    """One DNS node. ``role``: ``root`` (serves the root and ``test.``), ``hidden`` (the hidden primary of
    the platform's zone), ``provider`` (one of a provider's servers, a secondary), ``resolver``."""

    name: str
    role: str
    #: Its software: ``knot``, ``nsd`` (authoritative), ``unbound``, ``bind`` (resolvers).
    kind: str
    region: str
    router: str
    interface: Interface
    provider: str | None = None
    #: An anycast provider node's BGP side: ExaBGP and a health agent announce the provider's prefix from
    #: it while a real query is answered.
    speaker: Server | None = None

    @property
    def address(self) -> IPv4Address:
        """Its own (unicast) address: transfers, NOTIFY, and a unicast provider's or resolver's service."""
        return self.interface.address.ip


@dataclass(frozen=True)
class DnsProvider:
    name: str
    kind: str
    #: Its anycast prefix (None: unicast).
    anycast: IPv4Network | None
    nodes: tuple[str, ...]
    #: Its name server's name in the delegation (``ns<i>.<zone>``) and the address it answers on.
    ns_name: str
    address: IPv4Address


@dataclass(frozen=True)
class Dns:
    #: The platform's zone (``edge.test.``).
    zone: str
    ttl: int
    negative_ttl: int
    expire_s: int
    nodes: tuple[DnsNode, ...]
    providers: tuple[DnsProvider, ...]
    #: Client → the addresses of the resolvers it asks, in order (its region's; each client of a region
    #: starts with the next kind, so both implementations have clients).
    client_resolvers: tuple[tuple[str, tuple[IPv4Address, ...]], ...]

    def node(self, name: str) -> DnsNode:
        """The DNS node called ``name``; raises KeyError if there is none."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def of_role(self, role: str) -> tuple[DnsNode, ...]:
        return tuple(n for n in self.nodes if n.role == role)

    @property
    def root(self) -> DnsNode:
        return self.of_role("root")[0]

    @property
    def hidden(self) -> DnsNode:
        return self.of_role("hidden")[0]

    def provider(self, name: str) -> DnsProvider:
        """The provider called ``name``; raises KeyError if there is none."""
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolvers_for(self, client: str) -> tuple[IPv4Address, ...]:
        """The resolver addresses ``client`` asks, first first (empty: the client has none)."""
        return dict(self.client_resolvers).get(client, ())

    def speakers(self) -> tuple[Server, ...]:
        return tuple(n.speaker for n in self.nodes if n.speaker is not None)


@dataclass(frozen=True)
class DrSite:
    """The DR region's standby platform (``backup.dr_servers``): out of service until a DR failover brings
    it up from the region's copy of the backups. Neither its PoP nor its servers are in
    :attr:`Topology.pops` and :attr:`Topology.servers` (the platform that serves: nothing is predicted to
    reach it, no fault targets it); :meth:`Topology.all_servers` has them, for what builds the network
    and the processes."""

    pop: Pop
    #: Its control plane node: an etcd cluster of its own and the control plane API.
    control: ServiceNode
    #: Its storage node: a KV master with no peers.
    storage: ServiceNode
    #: Its PoP's servers (standby: started by a failover).
    servers: tuple[Server, ...] = ()

    def nodes(self) -> tuple[str, ...]:
        """Every node of the standby platform, the order it is started in."""
        return (self.control.name, self.storage.name, *self.pop.servers)


@dataclass(frozen=True)
class Topology:
    """A fully resolved lab: the single source every later stage reads."""

    name: str
    source: str
    spec: TopologySpec
    routers: tuple[Router, ...]
    pops: tuple[Pop, ...]
    servers: tuple[Server, ...]
    clients: tuple[Client, ...]
    anycast: tuple[IPv4Network, ...]
    control: ServiceNode
    kv_masters: tuple[ServiceNode, ...] = ()
    origins: tuple[ServiceNode, ...] = ()
    #: One control plane node per region that has a KV master (``cp-<region>``), on the same router.
    control_planes: tuple[ServiceNode, ...] = ()
    #: The lab's DNS (None: the topology has no ``dns`` section).
    dns: Dns | None = None
    #: The monitoring node (``mon``: Prometheus, Alertmanager, the alert receiver); None: no monitoring.
    monitoring: ServiceNode | None = None
    #: The backup node (``bk``: the primary region's backup store); None: no backups.
    backup: ServiceNode | None = None
    #: The DR region's copy of it (``drbk``, with the cold archive); None: none.
    backup_dr: ServiceNode | None = None
    #: The DR region's standby platform; None: none (``backup.dr_servers`` 0).
    dr_site: DrSite | None = None

    def all_servers(self) -> tuple[Server, ...]:
        """Every PoP server, the DR site's too (what the network and the processes are built for)."""
        return (*self.servers, *(self.dr_site.servers if self.dr_site is not None else ()))

    def node_names(self) -> list[str]:
        return [*(r.name for r in self.routers), *(s.name for s in self.all_servers()), *(c.name for c in self.clients),
                *(svc.name for svc in self.services()), *(n.name for n in (self.dns.nodes if self.dns else ()))]

    def services(self) -> tuple[ServiceNode, ...]:
        return (self.control, *self.kv_masters, *self.origins, *self.control_planes,
                *((self.monitoring,) if self.monitoring is not None else ()),
                *((self.backup,) if self.backup is not None else ()),
                *((self.backup_dr,) if self.backup_dr is not None else ()),
                *((self.dr_site.control, self.dr_site.storage) if self.dr_site is not None else ()))

    def control_plane_of(self, region: str) -> ServiceNode:
        """The control plane node of ``region``; raises AnylabError if it has none."""
        for cp in self.control_planes:
            if cp.region == region:
                return cp
        raise AnylabError(f"region '{region}' has no control plane")

    def kv_master_of(self, region: str) -> ServiceNode:
        """The KV master of ``region``; raises AnylabError if it has none."""
        for k in self.kv_masters:
            if k.region == region:
                return k
        raise AnylabError(f"region '{region}' has no KV master")

    def router(self, name: str) -> Router:
        """The router called ``name``; raises AnylabError listing the routers if there is none."""
        return _named(self.routers, name, "router")

    def pop(self, name: str) -> Pop:
        """The PoP called ``name``; raises AnylabError listing the PoPs if there is none."""
        return _named(self.pops, name, "PoP")

    def server(self, name: str) -> Server:
        """The PoP server called ``name``; raises AnylabError listing the servers if there is none."""
        return _named(self.servers, name, "PoP server")

    def interfaces(self) -> Iterator[Interface]:
        for r in self.routers:
            yield from r.interfaces
        for s in self.all_servers():
            yield from s.interfaces
        for c in self.clients:
            yield c.interface
        for svc in self.services():
            yield svc.interface
        for n in self.dns.nodes if self.dns else ():
            yield n.interface

    def links(self) -> list[tuple[Interface, Interface]]:
        """Every veth pair once, as (lower end, higher end) in declaration order."""
        by_key = {(i.node, i.name): i for i in self.interfaces()}
        seen: set[tuple[str, str]] = set()
        pairs = []
        for intf in self.interfaces():
            if (intf.node, intf.name) in seen:
                continue
            peer = by_key[(intf.peer_node, intf.peer_name)]
            seen.update({(intf.node, intf.name), (peer.node, peer.name)})
            pairs.append((intf, peer))
        return pairs


def _named(items: tuple[T, ...], name: str, kind: str) -> T:
    for item in items:
        if item.name == name:
            return item
    raise AnylabError(f"no {kind} named '{name}'; there are: {', '.join(i.name for i in items)}")
