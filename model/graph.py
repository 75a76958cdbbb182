"""The topology as a networkx graph: structural checks and the predicted anycast catchment.

The prediction replays BGP's decision process as the lab configures FRR (every session eBGP,
``bgp deterministic-med``, ``bgp bestpath compare-routerid``, ``maximum-paths``, MED not passed on
across AS boundaries):

1. highest local preference: with link relations (``links[].relation``) a route from a customer
   beats one from a peer, which beats one from a provider (:data:`model.constants.LOCAL_PREF`);
2. shortest AS path;
3. lowest MED, compared only between paths from the same neighbouring AS;
4. lowest neighbour router-id, then lowest neighbour address.

With relations a router passes a route on valley-free: routes from customers (and PoPs) to every
neighbour, routes from peers and providers to customers only.

Paths with the same AS path and MED as the best one are multipath (ECMP) members, so a router
attached to two PoPs sharing an ASN splits flows between them: such a catchment is reported as
``"a|b"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import networkx as nx

from core.errors import TopologyError
from model.constants import CONTROL_PLANE_PREFIX, DEFAULT_LOCAL_PREF, INVERSE_RELATION, LOCAL_PREF
from model.placement import place
from model.topology import ServiceNode, Topology

IFNAMSIZ = 15


def to_graph(topo: Topology) -> nx.Graph:
    """Nodes carry ``kind`` (router/server/client) and ``asn``; edges carry the interface names."""
    g = nx.Graph()
    for r in topo.routers:
        g.add_node(r.name, kind="router", asn=r.asn, region=r.region)
    for s in topo.all_servers():
        g.add_node(s.name, kind="server", asn=s.asn, region=s.region, pop=s.pop)
    for c in topo.clients:
        g.add_node(c.name, kind="client", region=c.region)
    g.add_node(topo.control.name, kind="control", region=topo.control.region)
    for k in topo.kv_masters:
        g.add_node(k.name, kind="kv", region=k.region)
    for o in topo.origins:
        g.add_node(o.name, kind="origin", region=o.region)
    for cp in topo.control_planes:
        g.add_node(cp.name, kind="cp", region=cp.region)
    for d in topo.dns.nodes if topo.dns else ():
        g.add_node(d.name, kind="dns", region=d.region, role=d.role)
    if topo.monitoring is not None:
        g.add_node(topo.monitoring.name, kind="mon", region=topo.monitoring.region)
    for bk in (topo.backup, topo.backup_dr):
        if bk is not None:
            g.add_node(bk.name, kind="backup", region=bk.region)
    if topo.dr_site is not None:
        g.add_node(topo.dr_site.control.name, kind="cp", region=topo.dr_site.control.region)
        g.add_node(topo.dr_site.storage.name, kind="kv", region=topo.dr_site.storage.region)
    for a, b in topo.links():
        g.add_edge(a.node, b.node, intfs=(a.name, b.name))
    return g


def spill_peers(topo: Topology, server: str, pops: int) -> list[dict[str, object]]:
    """The servers of the ``pops`` other PoPs nearest to ``server``'s PoP (hops between their upstream
    routers, over routers only), nearest first: where its spillover router may forward. Ties are broken
    by PoP name, so every run picks the same."""
    by_name = {s.name: s for s in topo.servers}
    me = by_name[server]
    g = to_graph(topo).subgraph(r.name for r in topo.routers)
    mine = {n.node for n in me.neighbors}
    hops = nx.multi_source_dijkstra_path_length(g, mine)
    distance: dict[str, int] = {}
    for p in topo.pops:
        if p.name != me.pop:
            ups = [hops[u] for u in p.upstreams if u in hops]
            if ups:
                distance[p.name] = int(min(ups)) + 2
    nearest = sorted(distance, key=lambda name: (distance[name], name))[:pops]
    return [{"pop": s.pop, "server": s.name, "address": str(s.interfaces[0].address.ip), "distance": distance[s.pop]}
            for name in nearest for s in topo.servers if s.pop == name]


def _field_of(topo: Topology, node: str) -> str:
    spec = topo.spec
    for i, r in enumerate(spec.routers):
        if r.name == node:
            return f"routers[{i}] ({node}).name"
    for i, p in enumerate(spec.pops):
        if node.startswith(p.name + "-s"):
            return f"pops[{i}] ({p.name}).name"
    for i, c in enumerate(spec.clients):
        if c.name == node:
            return f"clients[{i}] ({node}).name"
    if node == topo.control.name:
        return "control.router"
    for i, k in enumerate(topo.kv_masters):
        if k.name == node:
            return f"kv_masters[{i}] ({node}).name"
    for i, o in enumerate(topo.origins):
        if o.name == node:
            return f"origins[{i}] ({node}).name"
    for i, region in enumerate(spec.regions):
        if node == CONTROL_PLANE_PREFIX + region.name:
            return f"regions[{i}] ({region.name}).name"
    if topo.dns is not None and node in {d.name for d in topo.dns.nodes}:
        prov = topo.dns.node(node).provider
        names = [p.name for p in topo.dns.providers]
        return f"dns.providers[{names.index(prov)}] ({prov})" if prov else "dns"
    return node


def check_topology(topo: Topology) -> None:
    """Raise TopologyError unless names, ASNs and addresses are unique, interface names fit the kernel's
    15 characters, and routers, servers and clients form one connected network. Every problem found is
    in the one error raised (see :meth:`TopologyError.of_all`)."""
    spec, src = topo.spec, topo.source
    errors: list[TopologyError] = []

    def fail(field: str, problem: str, fix: str) -> None:
        errors.append(TopologyError(src, field, problem, fix))

    regions: set[str] = set()
    for i, region in enumerate(spec.regions):
        if region.name in regions:
            fail(f"regions[{i}].name", f"region '{region.name}' is defined twice",
                 "define each region once")
        regions.add(region.name)
    owner: dict[str, str] = {}
    sections = (("routers", [r.name for r in spec.routers]), ("pops", [p.name for p in spec.pops]),
                ("clients", [c.name for c in spec.clients]))
    for section, names in sections:
        for i, name in enumerate(names):
            if name in owner:
                fail(f"{section}[{i}] ({name}).name",
                     f"name '{name}' is already used by {owner[name]}",
                     "give every router, PoP and client its own name")
            if name in {svc.name for svc in topo.services()}:
                fail(f"{section}[{i}] ({name}).name",
                     f"name '{name}' is the control plane's, a KV master's or an origin's node",
                     "choose another name")
            if topo.dns is not None and name in {d.name for d in topo.dns.nodes}:
                fail(f"{section}[{i}] ({name}).name", f"name '{name}' is a DNS node's",
                     "choose another name (DNS nodes are dns-root, dns-hidden, <provider>-<router>, r<k>-<region>)")
            owner[name] = f"{section}[{i}]"
    for s in topo.servers:
        if s.name in owner:
            i = [p.name for p in spec.pops].index(s.pop)
            fail(f"pops[{i}] ({s.pop}).name",
                 f"its server node '{s.name}' clashes with {owner[s.name]}",
                 "rename the PoP or the other node")

    asn_owner: dict[int, str] = {}
    for i, r in enumerate(spec.routers):
        if r.asn in asn_owner:
            fail(f"routers[{i}] ({r.name}).asn",
                 f"ASN {r.asn} is already used by {asn_owner[r.asn]}",
                 "give every transit router its own ASN (the lab runs eBGP everywhere)")
        asn_owner[r.asn] = f"router {r.name}"
    for i, p in enumerate(spec.pops):
        used_by = asn_owner.get(p.asn)
        if used_by is not None and used_by.startswith("router"):
            fail(f"pops[{i}] ({p.name}).asn",
                 f"ASN {p.asn} is already used by {used_by}",
                 "use an ASN no router uses (PoPs may share one ASN among themselves)")
        asn_owner.setdefault(p.asn, f"PoP {p.name}")

    addr_owner: dict[IPv4Address, str] = {}

    def claim(addr: IPv4Address, who: str, field: str) -> None:
        if addr in addr_owner:
            fail(field, f"address {addr} is already used by {addr_owner[addr]}",
                 "give a unique address or leave it out to have one assigned")
        addr_owner[addr] = who

    for i, router in enumerate(topo.routers):
        claim(router.loopback, f"{router.name} loopback", f"routers[{i}] ({router.name}).loopback")
    for s in topo.servers:
        claim(s.router_id, f"{s.name} router-id", f"pops ({s.pop})")
    link_field = {}
    for i, link in enumerate(spec.links):
        link_field[frozenset((link.a, link.b))] = f"links[{i}].addresses"
    for intf in topo.interfaces():
        claim(intf.address.ip, f"{intf.node} {intf.name}",
              link_field.get(frozenset((intf.node, intf.peer_node)), _field_of(topo, intf.node)))
    nets: dict[IPv4Network, str] = {}
    for a, b in topo.links():
        net = a.address.network
        if net in nets:
            fail(link_field.get(frozenset((a.node, b.node)), _field_of(topo, a.node)),
                 f"subnet {net} is used by two links ({nets[net]} and {a.node}-{b.node})",
                 "give each link its own subnet")
        nets[net] = f"{a.node}-{b.node}"
    for prefix in topo.anycast:
        for net in nets:
            if prefix.overlaps(net):
                fail("anycast", f"prefix {prefix} overlaps link subnet {net}",
                     "use an anycast prefix outside 10.0.0.0/8, e.g. 203.0.113.1/32")

    too_long: set[str] = set()
    for intf in topo.interfaces():
        if len(intf.name) > IFNAMSIZ and intf.node not in too_long:
            too_long.add(intf.node)  # once per node: its first interface says what to shorten
            budget = IFNAMSIZ - len(intf.name) + len(intf.node)
            field = _field_of(topo, intf.node)
            fail(field, f"interface name '{intf.name}' is longer than {IFNAMSIZ} "
                 "characters (the kernel's limit)",
                 f"shorten the name so that node names are at most {budget} characters")

    g = to_graph(topo)
    if not nx.is_connected(g):
        parts = sorted((sorted(c) for c in nx.connected_components(g)), key=len)
        island = parts[0]
        fail("links", f"the network is not connected: {', '.join(island)} cannot reach "
             f"{parts[-1][0]}", "add a link joining them to the rest")
    if spec.settings.hosts > 1:
        try:
            place(topo, spec.settings.hosts)  # raises for more hosts than routers
        except TopologyError as exc:
            errors.append(exc)
    for i, pop in enumerate(topo.pops):
        if not pop.prefixes:
            fail(f"pops[{i}] ({pop.name})", "announces no anycast prefix",
                 "list it under anycast[].pops or use 'pops: all'")
    if errors:
        raise TopologyError.of_all(errors)


@dataclass(frozen=True)
class Path:
    """A route as one router holds it (compared by :func:`best_path`, not by field order)."""

    as_path: tuple[int, ...]
    med: int
    neighbor_rid: IPv4Address
    neighbor_addr: IPv4Address
    pops: frozenset[str]
    #: What the neighbour it came from is to the router (None without relations).
    learned_from: str | None = None

    @property
    def local_pref(self) -> int:
        return LOCAL_PREF.get(self.learned_from or "", DEFAULT_LOCAL_PREF)

    @property
    def neighbor_as(self) -> int:
        return self.as_path[0]


def _group_best(paths: list[Path]) -> Path:
    return min(paths, key=lambda p: (-p.local_pref, len(p.as_path), p.med, p.neighbor_rid, p.neighbor_addr))


def best_path(paths: list[Path]) -> Path | None:
    """FRR's choice under deterministic-med: best per neighbouring AS (MED counts), then across
    groups without MED. The result's ``pops`` is the union over its multipath members."""
    if not paths:
        return None
    groups: dict[int, list[Path]] = {}
    for p in paths:
        groups.setdefault(p.neighbor_as, []).append(p)
    winners = [_group_best(g) for g in groups.values()]
    best = min(winners, key=lambda p: (-p.local_pref, len(p.as_path), p.neighbor_rid, p.neighbor_addr))
    members = [p for p in paths
               if p.as_path == best.as_path and p.med == best.med and p.local_pref == best.local_pref]
    return Path(best.as_path, best.med, best.neighbor_rid, best.neighbor_addr,
                frozenset().union(*(m.pops for m in members)), best.learned_from)


def exports(path: Path, to: str | None) -> bool:
    """Whether a router passes ``path`` on to a neighbour that is its ``to`` (valley-free: a route
    from a peer or provider goes to customers only; without relations everything goes everywhere)."""
    return to in (None, "customer") or path.learned_from in (None, "customer")


def _inverse(relation: str | None) -> str | None:
    return INVERSE_RELATION[relation] if relation else None


def predict_routes(topo: Topology, prefix: IPv4Network) -> dict[str, Path | None]:
    """Each router's best path to ``prefix`` once BGP has converged (fixed point of the decision
    process). Raises TopologyError if it does not settle (which eBGP without policy cannot do)."""
    originated: dict[str, list[Path]] = {r.name: [] for r in topo.routers}
    # A PoP server's routes carry its PoP; a DNS provider node's its own name (which node answers).
    speakers = [(s, s.pop) for s in topo.servers] + [(s, s.name) for s in (topo.dns.speakers() if topo.dns else ())]
    for s, label in speakers:
        if prefix not in s.prefixes:
            continue
        as_path = (s.asn,) * (1 + s.prepend)
        for n in s.neighbors:
            originated[n.node].append(Path(as_path, s.med, s.router_id, n.local_address, frozenset({label}),
                                           "customer" if n.relation else None))
    best: dict[str, Path | None] = {r.name: None for r in topo.routers}
    routers = {r.name: r for r in topo.routers}
    for _ in range(4 * len(topo.routers) + 4):
        changed = False
        for r in topo.routers:
            cands = list(originated[r.name])
            for n in r.neighbors:
                if n.node not in routers:
                    continue
                nb = best[n.node]
                if nb is None or r.asn in nb.as_path or not exports(nb, _inverse(n.relation)):
                    continue
                # MED is not passed on to another AS.
                cands.append(Path((n.asn, *nb.as_path), 0, n.router_id, n.address, nb.pops, n.relation))
            new = best_path(cands)
            if new != best[r.name]:
                best[r.name] = new
                changed = True
        if not changed:
            return best
    raise TopologyError(topo.source, "routers", "BGP prediction did not converge",
                        "report this topology: eBGP without policy, or valley-free with acyclic "
                        "provider relations, should always converge")


def predict_catchment(topo: Topology, prefix: IPv4Network | None = None) -> dict[str, str]:
    """Client → PoP (``"a|b"`` for ECMP across PoPs; ``""`` if unreachable) for ``prefix``
    (default: the first anycast prefix)."""
    prefix = prefix or topo.anycast[0]
    routes = predict_routes(topo, prefix)
    out = {}
    for c in topo.clients:
        path = routes[c.router]
        out[c.name] = "|".join(sorted(path.pops)) if path else ""
    return out


def busiest_pop(catchment: dict[str, str]) -> str:
    """The PoP serving most clients (ties: alphabetical), ignoring ECMP and unreachable entries."""
    counts = Counter(p for p in catchment.values() if p and "|" not in p)
    if not counts:
        raise TopologyError("<catchment>", "clients", "no client is served by a single PoP",
                            "check the topology's anycast announcements")
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def mermaid(topo: Topology) -> str:
    """The topology as a Mermaid flowchart, grouped by region."""
    lines = ["flowchart LR"]
    for region in topo.spec.regions:
        lines.append(f"  subgraph {region.name}")
        for r in topo.routers:
            if r.region == region.name:
                lines.append(f"    {r.name}[\"{r.name}<br/>AS{r.asn}\"]")
        for p in topo.pops:
            if p.region == region.name:
                for s in p.servers:
                    lines.append(f"    {s}((\"{s}<br/>AS{p.asn}\"))")
        for c in topo.clients:
            if c.region == region.name:
                lines.append(f"    {c.name}>\"{c.name}\"]")
        lines.append("  end")
    for a, b in topo.links():
        lines.append(f"  {a.node} --- {b.node}")
    return "\n".join(lines) + "\n"


def nearest_first(topo: Topology, router: str, nodes: Iterable[ServiceNode]) -> list[ServiceNode]:
    """``nodes`` by the hops between ``router`` and each one's router (over routers only), nearest first,
    ties by name: the order a node tries the regions' services in."""
    g = to_graph(topo).subgraph(r.name for r in topo.routers)
    hops = nx.single_source_shortest_path_length(g, router)
    return sorted(nodes, key=lambda n: (hops.get(n.router, len(topo.routers) + 1), n.name))
