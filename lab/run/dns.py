"""The lab's DNS daemons (:mod:`model.dns` says where the nodes are):

- ``dns-root``: Knot DNS serving the root (``.``) and ``test.``, which delegates the platform's zone to
  every provider's name server (glue included);
- ``dns-hidden``: Knot DNS, the hidden primary of the platform's zone (in no NS record), and the zone
  feeder (:mod:`dnsd.feeder`) that follows the control plane and has Knot reload; Knot NOTIFYs every
  provider node, which transfers the change by IXFR;
- each provider node: its provider's server software as a secondary; an anycast provider's node also runs
  ExaBGP and a health agent whose check is an SOA query of the zone on the provider's address (RFC 4786:
  the announcement follows the service);
- each resolver node: its resolver kind, from the lab's root hints.

:func:`wait_dns` is what ``up`` waits for once the routes are up: every provider node answers the zone at
the primary's serial, and every resolver resolves ``www``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.flags as dns_flags
import dns.rcode as dns_rcode

from bgp.bird import BirdBfd
from bgp.exabgp import ExaBgp
from core.clock import monotonic
from core.daemon import Daemon, NodeEnv
from core.errors import UsageError
from core.peer_auth import PeerKeys
from core.wait import wait_for
from dnsd.auth import KINDS as AUTH_KINDS
from dnsd.auth import AuthServer, Knot, Served
from dnsd.platform import Base, platform_zone
from dnsd.probe import ask, nsid_of, soa_serial
from dnsd.resolver import KINDS as RESOLVER_KINDS
from dnsd.zone import Record, Zone
from lab.run.launchers import HEALTH_STATE, HealthAgent, PythonService, weakened
from model.dns import ROOT_NS, TLD, TLD_NS
from model.graph import nearest_first
from model.topology import Dns, Topology

#: The test-only weakening (``ANYLAB_WEAKEN=dns``): a provider node's announcement does not follow its
#: server (its health check always passes): a static anycast announcement, what RFC 4786 §4.3 warns of.
WEAK_STATIC = "static"


class DnsHealthAgent(HealthAgent):
    """A provider node's health agent: its check (an SOA query, :class:`model.profiles.CheckSpec` kind
    ``dns``) fails until the node has the zone, so it waits only for ExaBGP."""

    dependencies = ("exabgp",)

    def config(self) -> dict[str, object]:
        cfg = super().config()
        if weakened("dns", WEAK_STATIC):
            cfg["checks"] = [{"kind": "command", "argv": ["true"]}]
        return cfg


#: What the feeder last loaded, in the hidden primary's directory (read by ``status`` too).
FEEDER_STATE = "feeder-state.json"


class ZoneFeeder(PythonService):
    """:mod:`dnsd.feeder` on the hidden primary's node, signing as ``dns/<node>``."""

    name = "feeder"
    module = "dnsd.feeder"
    dependencies = ("knot",)

    def __init__(self, env: NodeEnv, knot: Knot, base: Base, controls: list[tuple[str, int]], keys: PeerKeys) -> None:
        super().__init__(env)
        self.knot, self.base, self.controls, self.keys = knot, base, controls, keys

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"dns/{self.env.node}")

    @property
    def state_file(self) -> Path:
        return self.env.dir / FEEDER_STATE

    def config(self) -> dict[str, object]:
        zone = self.knot.served[0].zone
        return {"base": self.base.to_json(), "controls": [list(c) for c in self.controls], "auth": self.auth()[0],
                "zone_file": str(self.knot.zone_file(zone)), "reload": self.knot.knotc("zone-reload", zone.origin),
                "state": str(self.state_file)}

    def validate(self) -> None:
        from dnsd.feeder import Feeder

        try:
            Feeder(json.loads(self.path(".json").read_text()))
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise self.error(f"bad zone feeder config: {exc}") from exc

    def before_start(self) -> None:
        self.state_file.unlink(missing_ok=True)

    def ready(self) -> bool:
        """Ready once it has written its state (its first load waits for the control plane, which waits
        for the routes: :func:`wait_dns`)."""
        return self.state_file.exists()

    def state(self) -> dict[str, Any]:
        """What it last loaded (empty: nothing yet)."""
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data


def base_of(topo: Topology) -> Base:
    """The platform zone's fixed part, from the topology."""
    dns = topo.dns
    assert dns is not None
    anycast = str(topo.anycast[0].network_address)
    servers = {s.name: str(s.interfaces[0].address.ip) for s in topo.servers}
    return Base(dns.zone, tuple((p.ns_name, str(p.address)) for p in dns.providers), anycast, servers, dns.ttl,
                dns.negative_ttl, dns.expire_s)


def first_state(topo: Topology) -> dict[str, Any]:
    """The control plane's state before anything is deployed (what the feeder's first answer says)."""
    return {"generation": 0, "workers": [], "withdrawn": [],
            "pops": {p.name: {"region": p.region, "servers": list(p.servers)} for p in topo.pops}}


def hierarchy(dns: Dns) -> tuple[Zone, Zone]:
    """The root zone and ``test.``, both on ``dns-root``; ``test.`` delegates the platform's zone to every
    provider's name server, with glue."""
    root = str(dns.root.address)
    root_zone = Zone(".", 1, ROOT_NS, (Record("@", "NS", ROOT_NS), Record(ROOT_NS, "A", root),
                                       Record(TLD, "NS", TLD_NS), Record(TLD_NS, "A", root)))
    records = [Record("@", "NS", TLD_NS), Record(TLD_NS, "A", root)]
    records += [Record(dns.zone, "NS", p.ns_name) for p in dns.providers]
    records += [Record(p.ns_name, "A", str(p.address)) for p in dns.providers]
    return root_zone, Zone(TLD, 1, TLD_NS, tuple(records), ttl=3600)


def dns_daemons(topo: Topology, env_of: Callable[[str], NodeEnv], keys: PeerKeys) -> dict[str, list[Daemon]]:
    """Node → its DNS daemons (made, not started); empty without a ``dns`` section."""
    dns = topo.dns
    if dns is None:
        return {}
    daemons: dict[str, list[Daemon]] = {}
    root_zone, tld = hierarchy(dns)
    root = dns.root
    daemons[root.name] = [Knot(env_of(root.name), (str(root.address),), (Served(root_zone), Served(tld)))]
    base = base_of(topo)
    zone = platform_zone(base, first_state(topo))
    hidden = dns.hidden
    secondaries = tuple(str(n.address) for n in dns.of_role("provider"))
    knot = Knot(env_of(hidden.name), (str(hidden.address),), (Served(zone, secondaries=secondaries),))
    controls = [(str(c.address), c.port) for c in nearest_first(topo, hidden.router, topo.control_planes)]
    daemons[hidden.name] = [knot, ZoneFeeder(env_of(hidden.name), knot, base, controls, keys)]
    for n in dns.of_role("provider"):
        env = env_of(n.name)
        provider = dns.provider(n.provider or "")
        listen = (str(n.address), *((str(provider.address),) if n.speaker is not None else ()))
        server: AuthServer = AUTH_KINDS[n.kind](env, listen, (Served(zone, primaries=(str(hidden.address),)),))
        daemons[n.name] = [server]
        if n.speaker is not None:
            daemons[n.name] += [ExaBgp(env, n.speaker), DnsHealthAgent(env, n.speaker)]
            if any(nb.profile.bfd for nb in n.speaker.neighbors):  # as a PoP server's: the router expects it
                daemons[n.name].append(BirdBfd(env, n.speaker))
    hints = {ROOT_NS: str(root.address)}
    for n in dns.of_role("resolver"):
        daemons[n.name] = [RESOLVER_KINDS[n.kind](env_of(n.name), (str(n.address),), hints)]
    return daemons


def wait_dns(topo: Topology, daemons: dict[str, list[Daemon]], netns: dict[str, str], timeout: float) -> dict[str, Any]:
    """Wait until the feeder has loaded the control plane's state, every provider node answers the zone at
    that serial (the primary NOTIFYs them again each second meanwhile: a node that started before its
    routes has no copy yet), and every resolver resolves ``www``. Returns ``{serial, providers: node →
    serial}``; raises WaitTimeout with what each last said."""
    dns = topo.dns
    assert dns is not None
    hidden = daemons[dns.hidden.name]
    knot = next(d for d in hidden if isinstance(d, Knot))
    feeder = next(d for d in hidden if isinstance(d, ZoneFeeder))
    nodes = dns.of_role("provider")
    seen: dict[str, Any] = {}
    last_notify = 0.0

    def served() -> bool:
        nonlocal last_notify
        state = feeder.state()
        serial = state.get("serial")
        seen["feeder"] = state
        if serial is None:
            return False
        for n in nodes:
            seen[n.name] = soa_serial(netns[n.name], str(n.address), dns.zone)
        if any(seen[n.name] != serial for n in nodes):
            if monotonic() - last_notify > 1.0:
                last_notify = monotonic()
                knot.notify(dns.zone)
            return False
        for r in dns.of_role("resolver"):
            reply = ask(netns[r.name], str(r.address), f"www.{dns.zone}", "A", timeout=1.0, recursion=True)
            seen[r.name] = reply is not None and bool(reply.answer)
        return all(seen[r.name] for r in dns.of_role("resolver"))

    wait_for(served, timeout=timeout, what="every DNS provider node to serve the zone and every resolver to "
             "resolve", interval=0.1, describe=lambda: "; ".join(f"{k}: {v}" for k, v in sorted(seen.items())))
    return {"serial": feeder.state().get("serial"), "providers": {n.name: seen[n.name] for n in nodes}}


def dns_status(topo: Topology, run_dir: Path, netns_of: Callable[[str], str]) -> dict[str, Any]:
    """The DNS as it answers now (``anylab status --json``'s ``dns``): the hidden primary's serial and
    feed, each provider → its nodes (the serial each answers with authority, None: none; whether its
    health agent announces the provider's prefix), each resolver's kind and region. Empty without DNS."""
    dns = topo.dns
    if dns is None:
        return {}
    hidden = dns.hidden
    try:
        feed: dict[str, Any] = json.loads((run_dir / hidden.name / FEEDER_STATE).read_text())
    except (OSError, ValueError):
        feed = {}
    providers: dict[str, Any] = {}
    for p in dns.providers:
        nodes: dict[str, Any] = {}
        for name in p.nodes:
            n = dns.node(name)
            # Asked from its router: a node silenced by a fault still answers inside its own namespace.
            info: dict[str, Any] = {"router": n.router, "region": n.region, "address": str(n.address),
                                    "serial": soa_serial(netns_of(n.router), str(n.address), dns.zone, timeout=0.3)}
            if n.speaker is not None:
                try:
                    health = json.loads((run_dir / name / HEALTH_STATE).read_text()).get("health")
                except (OSError, ValueError):
                    health = None
                info["announced"] = health == "up"
            nodes[name] = info
        providers[p.name] = {"kind": p.kind, "ns": p.ns_name, "address": str(p.address),
                             "anycast": str(p.anycast) if p.anycast else None, "nodes": nodes}
    return {"zone": dns.zone,
            "primary": {"node": hidden.name, "serial": soa_serial(netns_of(hidden.router), str(hidden.address),
                                                                   dns.zone, timeout=0.3), "feed": feed},
            "providers": providers,
            "resolvers": {n.name: {"kind": n.kind, "region": n.region, "address": str(n.address)}
                          for n in dns.of_role("resolver")}}


def dig(topo: Topology, netns_of: Callable[[str], str], client: str, name: str, rdtype: str = "A",
        server: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """One query from ``client``'s namespace: to its first resolver (``server`` None), a resolver or DNS
    node by name, or a provider by name (its service address; NSID names the node that answered). Returns
    the answer, the server asked and the node that answered, the rcode and the time (ms). Raises
    UsageError for an unknown client or server."""
    dns = topo.dns
    if dns is None:
        raise UsageError(f"topology {topo.name} has no DNS (no 'dns' section)")
    clients = {c.name for c in topo.clients}
    if client not in clients:
        raise UsageError(f"no client named {client!r}; there are: {', '.join(sorted(clients))}")
    providers = {p.name: p for p in dns.providers}
    if server is None:
        address = str(dns.resolvers_for(client)[0])
        asked = next(n.name for n in dns.of_role("resolver") if str(n.address) == address)
    elif server in providers:
        address, asked = str(providers[server].address), server
    elif server in {n.name for n in dns.nodes}:
        address, asked = str(dns.node(server).address), server
    else:
        choices = sorted([*providers, *(n.name for n in dns.nodes)])
        raise UsageError(f"--server {server!r}: give a provider or DNS node: {', '.join(choices)}")
    recursion = asked not in providers and dns.node(asked).role == "resolver"
    t0 = monotonic()
    reply = ask(netns_of(client), address, name, rdtype, timeout=timeout, recursion=recursion, nsid=not recursion)
    took = monotonic() - t0
    out: dict[str, Any] = {"client": client, "name": name, "type": rdtype, "server": asked, "address": address,
                           "ms": round(took * 1e3, 2)}
    if reply is None:
        return {**out, "rcode": None, "answer": [], "error": f"no answer within {timeout:g} s"}
    return {**out, "rcode": dns_rcode.to_text(reply.rcode()), "authoritative": bool(reply.flags & dns_flags.AA),
            "answered_by": nsid_of(reply) or asked,
            "answer": [line for rrset in reply.answer for line in rrset.to_text().splitlines()]}
