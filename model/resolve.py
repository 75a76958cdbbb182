"""Resolution: a validated spec → the addressed model. Addresses and interfaces are assigned in
declaration order (adding an entry at the end renumbers nothing), and the BGP sessions and their
timer profiles derived."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import NamedTuple

from core.errors import TopologyError
from model.constants import (
    BACKUP_DR_NODE,
    BACKUP_LINKS,
    BACKUP_NODE,
    BACKUP_PORT,
    CLIENT_LINKS,
    CONTROL_LINKS,
    CONTROL_NODE,
    CONTROL_PLANE_PREFIX,
    CONTROL_PORT,
    CORE_LINKS,
    DNS_LINKS,
    DR_CONTROL_NODE,
    DR_POP,
    DR_REGION,
    DR_STORAGE_NODE,
    INVERSE_RELATION,
    KV_LINKS,
    KV_PORT,
    LAB_SUPERNET,
    MON_LINKS,
    MON_NODE,
    ORIGIN_LINKS,
    ORIGIN_PORT,
    POP_LINKS,
    PROMETHEUS_PORT,
    ROUTER_LOOPBACKS,
    SERVER_LOOPBACKS,
)
from model.dns import HIDDEN_NODE, ROOT_NODE, TLD, service_address
from model.geo import propagation_ms, where
from model.profiles import CheckSpec, Profile
from model.spec import DnsProviderSpec, KvMasterSpec, Location, OriginSpec, PopSpec, ShapeFields, TopologySpec
from model.topology import (
    Client,
    Dns,
    DnsNode,
    DnsProvider,
    DrSite,
    Interface,
    Neighbor,
    Pop,
    Router,
    Server,
    ServiceNode,
    Shape,
    Topology,
)


def _host(net: IPv4Network, index: int, source: str, what: str) -> IPv4Address:
    if index + 1 >= net.num_addresses - 1:
        raise TopologyError(source, what, f"too many entries for the address pool {net}",
                            "split the topology or give explicit addresses")
    return net.network_address + index + 1


def _p2p(net: IPv4Network, index: int, source: str, what: str) -> tuple[IPv4Interface, IPv4Interface]:
    base = int(net.network_address) + 2 * index
    if base + 1 > int(net.broadcast_address):
        raise TopologyError(source, what, f"too many links for the address pool {net}",
                            "split the topology or give explicit addresses")
    return (IPv4Interface(f"{IPv4Address(base)}/31"), IPv4Interface(f"{IPv4Address(base + 1)}/31"))


def _cross_refs(spec: TopologySpec, source: str) -> None:
    """Every dangling reference and inconsistency of ``spec``, raised together as one TopologyError."""
    errors: list[TopologyError] = []

    def fail(field: str, problem: str, fix: str) -> None:
        errors.append(TopologyError(source, field, problem, fix))

    regions = {r.name for r in spec.regions}
    routers = {r.name for r in spec.routers}
    pops = {p.name for p in spec.pops}

    def need(value: str, known: set[str], field: str, kind: str) -> bool:
        if value not in known:
            listing = ", ".join(sorted(known)) or "none defined"
            fail(field, f"unknown {kind} '{value}'", f"use one of: {listing}")
            return False
        return True

    for i, r in enumerate(spec.routers):
        need(r.region, regions, f"routers[{i}] ({r.name}).region", "region")
    linked: dict[frozenset[str], int] = {}
    for i, link in enumerate(spec.links):
        need(link.a, routers, f"links[{i}].a", "router")
        need(link.b, routers, f"links[{i}].b", "router")
        if link.a == link.b:
            fail(f"links[{i}]", f"links router '{link.a}' to itself", "connect two different routers")
            continue
        pair = frozenset((link.a, link.b))
        if pair in linked:
            fail(f"links[{i}]", f"links {link.a} and {link.b} again (links[{linked[pair]}] "
                                "already does; one eBGP session per pair)", "remove one of the two links")
        linked[pair] = i
    related = [link.relation is not None for link in spec.links]
    if any(related) and not all(related):
        i = related.index(False)
        fail(f"links[{i}].relation", "is missing while other links have one",
             "give every router link a relation (provider, customer or peer), or none at all")
    for i, p in enumerate(spec.pops):
        need(p.region, regions, f"pops[{i}] ({p.name}).region", "region")
        if not p.upstreams:
            fail(f"pops[{i}] ({p.name}).upstreams", "is empty",
             "name at least one router this PoP peers with")
        for j, up in enumerate(p.upstreams):
            need(up, routers, f"pops[{i}] ({p.name}).upstreams[{j}]", "router")
        if len(set(p.upstreams)) != len(p.upstreams):
            fail(f"pops[{i}] ({p.name}).upstreams", "names a router twice",
             "list each upstream router once")
    for i, c in enumerate(spec.clients):
        need(c.region, regions, f"clients[{i}] ({c.name}).region", "region")
        need(c.router, routers, f"clients[{i}] ({c.name}).router", "router")
    if spec.control.router is not None:
        need(spec.control.router, routers, "control.router", "router")
    region_of = {r.name: r.region for r in spec.routers}
    seen_regions: set[str] = set()
    for i, k in enumerate(spec.kv_masters or ()):
        need(k.region, regions, f"kv_masters[{i}] ({k.name}).region", "region")
        if need(k.router, routers, f"kv_masters[{i}] ({k.name}).router", "router") and \
                region_of[k.router] != k.region:
            fail(f"kv_masters[{i}] ({k.name}).router",
                                f"router '{k.router}' is in region '{region_of[k.router]}', not '{k.region}'",
                                "attach the master to a router of its region")
        if k.region in seen_regions:
            fail(f"kv_masters[{i}] ({k.name}).region", f"region '{k.region}' has a master "
                                "already", "give each region one KV master")
        seen_regions.add(k.region)
    for i, o in enumerate(spec.origins or ()):
        need(o.router, routers, f"origins[{i}] ({o.name}).router", "router")
    origin_names = [o.name for o in spec.origins or ()]
    if len(set(origin_names)) != len(origin_names):
        fail("origins", "two origins have the same name", "give each origin its own name")
    for i, a in enumerate(spec.anycast):
        if a.pops != "all":
            for j, p_name in enumerate(a.pops):
                need(p_name, pops, f"anycast[{i}].pops[{j}]", "PoP")
    if spec.dns is not None:
        _dns_refs(spec, need, fail)
    if spec.monitoring is not None and spec.monitoring.router is not None:
        need(spec.monitoring.router, routers, "monitoring.router", "router")
    if spec.backup is not None and spec.backup.router is not None:
        need(spec.backup.router, routers, "backup.router", "router")
    if spec.backup is not None and spec.backup.dr_router is not None:
        need(spec.backup.dr_router, routers, "backup.dr_router", "router")
        primary = spec.backup.router or spec.control.router or spec.routers[0].name
        if region_of.get(spec.backup.dr_router, "") == region_of.get(primary):
            fail("backup.dr_router", f"router {spec.backup.dr_router} is in the primary backup store's region "
                 f"{region_of[primary]}: the DR copy must survive that region", "give a router of another region")
    if spec.backup is not None and spec.backup.dr_servers:
        _dr_site_refs(spec, fail)
    if errors:
        raise TopologyError.of_all(errors)


def _dr_site_refs(spec: TopologySpec, fail: Callable[[str, str, str], None]) -> None:
    """A standby DR platform's names and AS are its own, and it has a router to stand on."""
    assert spec.backup is not None
    if spec.backup.dr_router is None:
        fail("backup.dr_servers", "needs backup.dr_router", "name the DR region's router, or drop dr_servers")
    if DR_REGION in {r.name for r in spec.regions}:
        fail("regions", f"region '{DR_REGION}' is the DR region's name", "call the region something else")
    if DR_POP in {p.name for p in spec.pops}:
        fail("pops", f"PoP '{DR_POP}' is the DR region's PoP", "call the PoP something else")
    names = {*(r.name for r in spec.routers), *(c.name for c in spec.clients), *(o.name for o in spec.origins or ()),
             *(k.name for k in spec.kv_masters or ())}
    for taken in sorted(names & {DR_CONTROL_NODE, DR_STORAGE_NODE}):
        fail("backup.dr_servers", f"node name '{taken}' is the DR region's", "rename that node")
    asns = {r.asn: f"router {r.name}" for r in spec.routers} | {p.asn: f"PoP {p.name}" for p in spec.pops}
    asns |= {d.asn: f"DNS provider {d.name}" for d in (spec.dns.providers if spec.dns else ()) if d.asn is not None}
    if spec.backup.dr_asn in asns:
        fail("backup.dr_asn", f"AS {spec.backup.dr_asn} is {asns[spec.backup.dr_asn]}'s",
             "give the DR PoP an AS of its own")


def _dns_refs(spec: TopologySpec, need: Callable[[str, set[str], str, str], bool],
              fail: Callable[[str, str, str], None]) -> None:
    """The ``dns`` section's references: its routers exist, its prefixes and ASNs are its own."""
    assert spec.dns is not None
    dns = spec.dns
    routers = {r.name for r in spec.routers}
    for field in ("root_router", "primary_router"):
        value = getattr(dns, field)
        if value is not None:
            need(value, routers, f"dns.{field}", "router")
    taken = {r.asn: f"router {r.name}" for r in spec.routers} | {p.asn: f"PoP {p.name}" for p in spec.pops}
    for i, prov in enumerate(dns.providers):
        where = f"dns.providers[{i}] ({prov.name})"
        for j, r in enumerate(prov.routers):
            need(r, routers, f"{where}.routers[{j}]", "router")
        if prov.asn is not None and prov.asn in taken:
            fail(f"{where}.asn", f"ASN {prov.asn} is already used by {taken[prov.asn]}",
                 "give the provider an ASN of its own")
        if prov.anycast is not None:
            clash = [str(a.prefix) for a in spec.anycast if a.prefix.overlaps(prov.anycast)]
            if clash or prov.anycast.overlaps(LAB_SUPERNET):
                what = f"the platform anycast prefix {clash[0]}" if clash else f"the lab network {LAB_SUPERNET}"
                fail(f"{where}.anycast", f"prefix {prov.anycast} overlaps {what}",
                     "give the provider a prefix of its own, e.g. 198.51.100.1/32")


class _Place(NamedTuple):
    """Where a DNS node goes, before it is addressed; ``provider`` for a provider's node."""

    name: str
    role: str
    kind: str
    region: str
    router: str
    provider: DnsProviderSpec | None = None

    @property
    def anycast(self) -> bool:
        return self.provider is not None and self.provider.anycast is not None


def _dns_places(spec: TopologySpec, control_router: str) -> list[_Place]:
    """The DNS nodes, in address order."""
    assert spec.dns is not None
    dns = spec.dns
    region_of = {r.name: r.region for r in spec.routers}
    root = dns.root_router or spec.routers[0].name
    hidden = dns.primary_router or control_router
    places = [_Place(ROOT_NODE, "root", "knot", region_of[root], root),
              _Place(HIDDEN_NODE, "hidden", "knot", region_of[hidden], hidden)]
    for prov in dns.providers:
        places += [_Place(f"{prov.name}-{r}", "provider", prov.kind, region_of[r], r, prov) for r in prov.routers]
    for reg in spec.regions:
        first = next((c for c in spec.clients if c.region == reg.name), None)
        if first is not None:
            places += [_Place(f"r{k + 1}-{reg.name}", "resolver", kind, reg.name, first.router)
                       for k, kind in enumerate(dns.resolvers)]
    return places


def dns_profile(base: Profile, address: str, zone: str) -> Profile:
    """A provider node's profile: the lab's timers, its health check an SOA query of ``zone`` on the
    address it serves (no overload demotion, no hooks: it has no edge worker)."""
    health = base.health.model_copy(update={
        "checks": (CheckSpec(kind="dns", host=address, port=53, query=zone),), "overload": None, "hooks": ()})
    return base.model_copy(update={"health": health})


def server_name(pop: str, index: int) -> str:
    """PoP server node names: ``sjc-s1``, ``sjc-s2``… (1-based)."""
    return f"{pop}-s{index + 1}"


def shape_of(fields: ShapeFields | None, a: Location | None, b: Location | None, route_factor: float) -> Shape | None:
    """A link's shape: what ``fields`` say, its delay (if not given) from the ends' locations when both
    have one; None if the link does nothing (a bare veth)."""
    f = fields or ShapeFields()
    delay, derived = f.delay, False
    if delay is None and a is not None and b is not None:
        delay = propagation_ms(where(a), where(b), route_factor)
        derived = True
    shape = Shape(delay or 0.0, f.jitter, f.jitter_distribution, f.loss, f.loss_burst, f.bandwidth, f.queue,
                  from_distance=derived and bool(delay))
    return None if shape.bare() else shape


def resolve(spec: TopologySpec, source: str) -> Topology:
    """Assign addresses and interfaces deterministically (declaration order) and derive the sessions.

    Raises TopologyError for dangling references or exhausted address pools.
    """
    _cross_refs(spec, source)
    intfs: dict[str, list[Interface]] = {}

    def add_pair(a: str, b: str, addr_a: IPv4Interface, addr_b: IPv4Interface, shape: Shape | None = None) -> None:
        la, lb = intfs.setdefault(a, []), intfs.setdefault(b, [])
        name_a, name_b = f"{a}-eth{len(la)}", f"{b}-eth{len(lb)}"
        la.append(Interface(a, name_a, addr_a, b, name_b, addr_b, shape))
        lb.append(Interface(b, name_b, addr_b, a, name_a, addr_a, shape))

    located = {r.name: r.location for r in spec.routers}
    factor = spec.settings.route_factor
    for r in spec.routers:
        intfs.setdefault(r.name, [])
    for i, link in enumerate(spec.links):
        pair = link.addresses or _p2p(CORE_LINKS, i, source, f"links[{i}]")
        add_pair(link.a, link.b, pair[0], pair[1], shape_of(link, located[link.a], located[link.b], factor))

    prefixes_of: dict[str, list[IPv4Network]] = {p.name: [] for p in spec.pops}
    for a in spec.anycast:
        for p_name in (prefixes_of if a.pops == "all" else a.pops):
            prefixes_of[p_name].append(a.prefix)

    host_subnets: dict[str, list[IPv4Network]] = {}
    pop_link = 0
    pops: list[Pop] = []
    server_specs: list[tuple[PopSpec, int, str, IPv4Address]] = []
    names_of: dict[str, list[str]] = {p.name: [] for p in spec.pops}
    standby_of: dict[str, list[str]] = {p.name: [] for p in spec.pops}
    # Servers in service first, then the standby ones of every PoP: giving a PoP room to scale into
    # renumbers nothing that was there before.
    slots = [(p, k) for p in spec.pops for k in range(p.servers)]
    slots += [(p, k) for p in spec.pops for k in range(p.servers, p.max_servers or p.servers)]
    for server_index, (p, k) in enumerate(slots):
        s_name = server_name(p.name, k)
        (names_of if k < p.servers else standby_of)[p.name].append(s_name)
        router_id = _host(SERVER_LOOPBACKS, server_index, source, f"pops ({p.name}).servers")
        server_specs.append((p, k, s_name, router_id))
        for up in p.upstreams:
            # Router end first so the router side takes the even (lower) address.
            r_addr, s_addr = _p2p(POP_LINKS, pop_link, source, f"pops ({p.name})")
            pop_link += 1
            add_pair(up, s_name, r_addr, s_addr, shape_of(p.access, located[up], p.location, factor))
            # The server's own traffic (syncing with the control plane) comes from this address.
            host_subnets.setdefault(up, []).append(r_addr.network)
    for p in spec.pops:
        pops.append(Pop(p.name, p.region, p.asn, p.upstreams, tuple(names_of[p.name]), p.prepend, p.med,
                        tuple(prefixes_of[p.name]), p.profile or spec.settings.profile,
                        tuple(standby_of[p.name]), p.autoscale))

    # The control node before the clients: adding a client at the end renumbers nothing.
    control_router = spec.control.router or spec.routers[0].name
    r_addr, c_addr = _p2p(CONTROL_LINKS, 0, source, "control")
    add_pair(control_router, CONTROL_NODE, r_addr, c_addr)
    host_subnets.setdefault(control_router, []).append(r_addr.network)
    kv_specs = spec.kv_masters if spec.kv_masters is not None else tuple(
        KvMasterSpec(name=f"kv-{reg.name}", region=reg.name, router=next(r.name for r in spec.routers
                                                                          if r.region == reg.name))
        for reg in spec.regions if any(r.region == reg.name for r in spec.routers))
    for i, km in enumerate(kv_specs):
        r_addr, k_addr = _p2p(KV_LINKS, i, source, f"kv_masters[{i}]")
        add_pair(km.router, km.name, r_addr, k_addr)
        host_subnets.setdefault(km.router, []).append(r_addr.network)
    origin_specs = spec.origins if spec.origins is not None else (OriginSpec(name="origin", router=control_router),)
    for i, o in enumerate(origin_specs):
        r_addr, o_addr = _p2p(ORIGIN_LINKS, i, source, f"origins[{i}]")
        add_pair(o.router, o.name, r_addr, o_addr)
        host_subnets.setdefault(o.router, []).append(r_addr.network)
    # Each region's control plane on its KV master's router (before the clients: adding a client at the
    # end still renumbers nothing).
    for i, km in enumerate(kv_specs):
        r_addr, cp_addr = _p2p(CONTROL_LINKS, 1 + i, source, f"control plane of region {km.region}")
        add_pair(km.router, CONTROL_PLANE_PREFIX + km.region, r_addr, cp_addr)
        host_subnets.setdefault(km.router, []).append(r_addr.network)
    # The DNS nodes too (root, hidden primary, providers' nodes, resolvers), before the clients.
    dns_places = _dns_places(spec, control_router) if spec.dns is not None else []
    for i, place in enumerate(dns_places):
        r_addr, d_addr = _p2p(DNS_LINKS, i, source, f"dns node {place.name}")
        add_pair(place.router, place.name, r_addr, d_addr)
        host_subnets.setdefault(place.router, []).append(r_addr.network)
    mon_router = (spec.monitoring.router or control_router) if spec.monitoring is not None else None
    if mon_router is not None:  # the monitoring node as well
        r_addr, m_addr = _p2p(MON_LINKS, 0, source, "monitoring")
        add_pair(mon_router, MON_NODE, r_addr, m_addr)
        host_subnets.setdefault(mon_router, []).append(r_addr.network)
    bk_router = (spec.backup.router or control_router) if spec.backup is not None else None
    if bk_router is not None:  # and the backup node
        r_addr, b_addr = _p2p(BACKUP_LINKS, 0, source, "backup")
        add_pair(bk_router, BACKUP_NODE, r_addr, b_addr)
        host_subnets.setdefault(bk_router, []).append(r_addr.network)
    dr_router = spec.backup.dr_router if spec.backup is not None else None
    if dr_router is not None:  # and the DR region's copy
        r_addr, b_addr = _p2p(BACKUP_LINKS, 1, source, "backup-dr")
        add_pair(dr_router, BACKUP_DR_NODE, r_addr, b_addr)
        host_subnets.setdefault(dr_router, []).append(r_addr.network)
    for i, c in enumerate(spec.clients):
        r_addr, c_addr = _p2p(CLIENT_LINKS, i, source, f"clients[{i}]")
        add_pair(c.router, c.name, r_addr, c_addr, shape_of(c.access, located[c.router], c.location, factor))
        host_subnets.setdefault(c.router, []).append(r_addr.network)
    # The DR region's standby platform last: a topology without one numbers and names everything as before.
    dr_names = [server_name(DR_POP, k) for k in range(spec.backup.dr_servers)] \
        if spec.backup is not None and dr_router is not None else []
    if dr_router is not None and dr_names:
        for i, name in enumerate((DR_CONTROL_NODE, DR_STORAGE_NODE, *dr_names)):
            r_addr, n_addr = _p2p(BACKUP_LINKS, 2 + i, source, f"DR node {name}")
            add_pair(dr_router, name, r_addr, n_addr)
            host_subnets.setdefault(dr_router, []).append(r_addr.network)

    asn_of: dict[str, int] = {r.name: r.asn for r in spec.routers}
    rid_of: dict[str, IPv4Address] = {}
    for i, r in enumerate(spec.routers):
        rid_of[r.name] = r.loopback or _host(ROUTER_LOOPBACKS, i, source, f"routers[{i}]")
    for p, _k, s_name, router_id in server_specs:
        asn_of[s_name] = p.asn
        rid_of[s_name] = router_id
    for k, name in enumerate(dr_names):
        assert spec.backup is not None
        asn_of[name] = spec.backup.dr_asn
        rid_of[name] = _host(SERVER_LOOPBACKS, len(server_specs) + k, source, "backup.dr_servers")

    profile_of: dict[str, Profile] = {r.name: r.profile or spec.settings.profile for r in spec.routers}
    for p, _k, s_name, _rid in server_specs:
        profile_of[s_name] = p.profile or spec.settings.profile
    servers_set = {s_name for _p, _k, s_name, _rid in server_specs}
    for name in dr_names:
        profile_of[name] = spec.settings.profile
        servers_set.add(name)
    # An anycast DNS provider's nodes speak BGP like PoP servers: customers of their router.
    dns_zone = f"{spec.dns.zone}.{TLD}" if spec.dns is not None else ""
    speakers = [place for place in dns_places if place.anycast]
    for place in speakers:
        assert place.provider is not None and place.provider.asn is not None and place.provider.anycast is not None
        asn_of[place.name] = place.provider.asn
        rid_of[place.name] = intfs[place.name][0].address.ip
        profile_of[place.name] = dns_profile(spec.settings.profile, str(service_address(place.provider.anycast)),
                                             dns_zone)
        servers_set.add(place.name)

    def session_profile(node: str, peer: str) -> Profile:
        if node in servers_set or peer in servers_set:
            return profile_of[node if node in servers_set else peer]
        own, other = profile_of[node], profile_of[peer]
        return own if other.bfd is not None else own.model_copy(update={"bfd": None})

    relation_of: dict[tuple[str, str], str] = {}
    if any(link.relation for link in spec.links):
        for link in spec.links:
            assert link.relation is not None  # all or none: checked by _cross_refs
            relation_of[(link.b, link.a)] = link.relation
            relation_of[(link.a, link.b)] = INVERSE_RELATION[link.relation]
        for p, _k, s_name, _rid in server_specs:
            for up in p.upstreams:
                relation_of[(up, s_name)] = "customer"
                relation_of[(s_name, up)] = "provider"
        for place in speakers:
            relation_of[(place.router, place.name)] = "customer"
            relation_of[(place.name, place.router)] = "provider"
        for name in dr_names:
            assert dr_router is not None
            relation_of[(dr_router, name)] = "customer"
            relation_of[(name, dr_router)] = "provider"

    def neighbors(node: str) -> tuple[Neighbor, ...]:
        out = []
        for intf in intfs.get(node, []):
            if intf.peer_node in asn_of:  # clients do not speak BGP
                out.append(Neighbor(intf.peer_node, asn_of[intf.peer_node], intf.peer_address.ip,
                                    intf.address.ip, intf.name, rid_of[intf.peer_node],
                                    session_profile(node, intf.peer_node),
                                    relation_of.get((node, intf.peer_node))))
        return tuple(out)

    routers = tuple(
        Router(r.name, r.asn, r.region, r.kind, rid_of[r.name], tuple(intfs[r.name]), neighbors(r.name),
               tuple(host_subnets.get(r.name, [])), profile_of[r.name])
        for r in spec.routers
    )
    servers = tuple(
        Server(s_name, p.name, k, p.asn, p.region, router_id, tuple(intfs[s_name]), neighbors(s_name),
               tuple(prefixes_of[p.name]), p.prepend, p.med, profile_of[s_name], p.health_agent, k >= p.servers)
        for p, k, s_name, router_id in server_specs
    )
    clients = tuple(Client(c.name, c.region, c.router, intfs[c.name][0]) for c in spec.clients)
    anycast = tuple(dict.fromkeys(a.prefix for a in spec.anycast))
    dr_site = None
    if dr_router is not None and dr_names:
        assert spec.backup is not None
        dr_asn = spec.backup.dr_asn
        dr_site = DrSite(
            Pop(DR_POP, DR_REGION, dr_asn, (dr_router,), tuple(dr_names), 0, 0, anycast, spec.settings.profile),
            ServiceNode(DR_CONTROL_NODE, DR_REGION, dr_router, intfs[DR_CONTROL_NODE][0], CONTROL_PORT),
            ServiceNode(DR_STORAGE_NODE, DR_REGION, dr_router, intfs[DR_STORAGE_NODE][0], KV_PORT),
            tuple(Server(name, DR_POP, k, dr_asn, DR_REGION, rid_of[name], tuple(intfs[name]), neighbors(name),
                         anycast, 0, 0, profile_of[name], "anylab", True) for k, name in enumerate(dr_names)))
    region_of = {r.name: r.region for r in spec.routers}
    control = ServiceNode(CONTROL_NODE, region_of[control_router], control_router, intfs[CONTROL_NODE][0],
                          CONTROL_PORT)
    kv_masters = tuple(ServiceNode(km.name, km.region, km.router, intfs[km.name][0], KV_PORT) for km in kv_specs)
    origins = tuple(ServiceNode(o.name, region_of[o.router], o.router, intfs[o.name][0], ORIGIN_PORT)
                    for o in origin_specs)
    control_planes = tuple(ServiceNode(CONTROL_PLANE_PREFIX + km.region, km.region, km.router,
                                       intfs[CONTROL_PLANE_PREFIX + km.region][0], CONTROL_PORT) for km in kv_specs)
    dns = None
    if spec.dns is not None:
        dns = _dns_of(spec, dns_places, dns_zone, intfs, neighbors, profile_of)
    monitoring = None
    if mon_router is not None:
        monitoring = ServiceNode(MON_NODE, region_of[mon_router], mon_router, intfs[MON_NODE][0], PROMETHEUS_PORT)
    backup = None
    if bk_router is not None:
        backup = ServiceNode(BACKUP_NODE, region_of[bk_router], bk_router, intfs[BACKUP_NODE][0], BACKUP_PORT)
    backup_dr = None
    if dr_router is not None:
        backup_dr = ServiceNode(BACKUP_DR_NODE, DR_REGION, dr_router, intfs[BACKUP_DR_NODE][0], BACKUP_PORT)
    return Topology(spec.name, source, spec, routers, tuple(pops), servers, clients, anycast, control, kv_masters,
                    origins, control_planes, dns, monitoring, backup, backup_dr, dr_site)


def _dns_of(spec: TopologySpec, places: list[_Place], zone: str,
            intfs: dict[str, list[Interface]], neighbors: Callable[[str], tuple[Neighbor, ...]],
            profile_of: dict[str, Profile]) -> Dns:
    assert spec.dns is not None
    nodes: list[DnsNode] = []
    for place in places:
        name, prov, intf = place.name, place.provider, intfs[place.name][0]
        speaker = None
        if prov is not None and prov.anycast is not None and prov.asn is not None:
            speaker = Server(name, prov.name, prov.routers.index(place.router), prov.asn, place.region,
                             intf.address.ip, (intf,), neighbors(name), (prov.anycast,), 0, 0, profile_of[name])
        nodes.append(DnsNode(name, place.role, place.kind, place.region, place.router, intf,
                             prov.name if prov is not None else None, speaker))
    providers = []
    for i, p in enumerate(spec.dns.providers):
        mine = tuple(n.name for n in nodes if n.provider == p.name)
        address = service_address(p.anycast) if p.anycast is not None else intfs[mine[0]][0].address.ip
        providers.append(DnsProvider(p.name, p.kind, p.anycast, mine, f"ns{i + 1}.{zone}", address))
    per_client = []
    for c in spec.clients:
        mine_r = [n.address for n in nodes if n.role == "resolver" and n.region == c.region]
        k = [x.name for x in spec.clients if x.region == c.region].index(c.name) % max(1, len(mine_r))
        per_client.append((c.name, tuple(mine_r[k:] + mine_r[:k])))
    return Dns(zone, spec.dns.ttl, spec.dns.negative_ttl, spec.dns.expire_s, tuple(nodes), tuple(providers),
               tuple(per_client))
