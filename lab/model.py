"""Topology as data: YAML (or a Python dict) → validated spec → resolved, addressed model.

``load_topology(path)`` and ``build_topology(data, source)`` promise either a fully resolved
:class:`Topology` (every node, interface, address and BGP session decided) or one
:class:`~core.errors.TopologyError` naming the file, the path to the field, the problem and the fix.
Graph-level checks (connectivity, uniqueness, interface names) live in :mod:`lab.graph` and are run
by ``load_topology`` too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import AnylabError, TopologyError
from lab.profiles import DEFAULT_PROFILE, Profile, expand, named


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
DEFAULT_ANYCAST = "203.0.113.1/32"
#: ASNs BGP reserves (RFC 7607 zero, AS_TRANS 23456, 65535, 4294967295). Private ranges are not required:
#: a lab may mimic public ASNs.
RESERVED_ASNS = {0, 23456, 65535, 4294967295}

# Deterministic address pools. Each /31 pool is indexed by the declaration order of what it numbers.
ROUTER_LOOPBACKS = IPv4Network("10.255.0.0/16")
SERVER_LOOPBACKS = IPv4Network("10.254.0.0/16")
CORE_LINKS = IPv4Network("10.0.0.0/16")
POP_LINKS = IPv4Network("10.1.0.0/16")
CLIENT_LINKS = IPv4Network("10.2.0.0/16")
CONTROL_LINKS = IPv4Network("10.3.0.0/16")
KV_LINKS = IPv4Network("10.4.0.0/16")
ORIGIN_LINKS = IPv4Network("10.5.0.0/16")
#: An origin's HTTP port on the lab network (workers reach it with ``env.fetch("http://NAME/…")``).
ORIGIN_PORT = 80
#: The KV masters' HTTP API on the lab network, and each PoP server's local KV replica (127.0.0.1).
KV_PORT = 8100
KV_REPLICA_PORT = 8101
#: The Durable Object host on each region's storage node (beside the KV master), and the directory on
#: the control node.
DO_HOST_PORT = 8200
DO_DIRECTORY_PORT = 8300
#: The control plane's node name, and the port of its HTTP API on the lab network.
CONTROL_NODE = "control"
CONTROL_PORT = 8000
#: Everything inside the lab is numbered from here; servers route it back towards their upstreams.
LAB_SUPERNET = IPv4Network("10.0.0.0/8")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"'{value}' is not a valid node name; use lower-case letters, digits and single dashes, "
            "starting with a letter (e.g. 'sjc' or 'na-r1')"
        )
    return value


def _check_asn(value: int) -> int:
    if not 1 <= value <= 4294967294 or value in RESERVED_ASNS:
        raise ValueError(f"ASN {value} is reserved or out of range; use 1..4294967294, e.g. 64512..65534")
    return value


class RegionSpec(_Spec):
    name: str

    _name = field_validator("name")(lambda cls, v: _check_name(v))


class RouterSpec(_Spec):
    name: str
    asn: int
    region: str
    kind: Literal["frr", "bird"] = "frr"
    loopback: IPv4Address | None = None
    #: This router's profile (timers, BFD, MRAI) if not the topology's.
    profile: Profile | None = None

    _profile = field_validator("profile", mode="before")(lambda cls, v: None if v is None else expand(v))

    _name = field_validator("name")(lambda cls, v: _check_name(v))
    _asn = field_validator("asn")(lambda cls, v: _check_asn(v))


class LinkSpec(_Spec):
    a: str
    b: str
    addresses: tuple[IPv4Interface, IPv4Interface] | None = None
    #: The business relationship, read "a is b's <relation>": ``provider`` (a sells b transit),
    #: ``customer`` (a buys transit from b) or ``peer`` (settlement-free). With relations the routers
    #: prefer customer over peer over provider routes and export valley-free (Gao–Rexford); without
    #: any (the default) every router exports every route to every neighbour.
    relation: Literal["provider", "customer", "peer"] | None = None

    @field_validator("addresses")
    @classmethod
    def _same_subnet(
        cls, value: tuple[IPv4Interface, IPv4Interface] | None
    ) -> tuple[IPv4Interface, IPv4Interface] | None:
        if value is not None and value[0].network != value[1].network:
            raise ValueError(
                f"{value[0]} and {value[1]} are not in one subnet; give both ends of one /31 or /30"
            )
        if value is not None and value[0].ip == value[1].ip:
            raise ValueError(f"both ends have address {value[0].ip}; give two different addresses")
        return value


class AutoscaleSpec(_Spec):
    """The design's per-PoP autoscaling triggers, lab-scaled (see :mod:`protect.autoscale`)."""

    up_utilisation: float = Field(0.7, gt=0.0, le=10.0)
    up_for_s: float = Field(10.0, ge=0.0, le=3600.0)
    up_queue: float = Field(1000.0, gt=0.0)
    queue_for_s: float = Field(5.0, ge=0.0, le=3600.0)
    down_utilisation: float = Field(0.3, ge=0.0, le=10.0)
    down_for_s: float = Field(30.0, ge=0.0, le=3600.0)
    cooldown_s: float = Field(15.0, ge=0.0, le=3600.0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleSpec:
        if self.down_utilisation >= self.up_utilisation:
            raise ValueError(f"down_utilisation ({self.down_utilisation}) must be below up_utilisation "
                             f"({self.up_utilisation})")
        return self


class PopSpec(_Spec):
    name: str
    region: str
    asn: int
    servers: int = Field(1, ge=1, le=64)
    #: Servers racked and cabled but not in service (no processes) until scaled up; default ``servers``.
    max_servers: int | None = Field(None, ge=1, le=64)
    #: Scale between ``servers`` and ``max_servers`` on the design's triggers (off unless set).
    autoscale: AutoscaleSpec | None = None
    upstreams: tuple[str, ...]
    prepend: int = Field(0, ge=0, le=16)
    med: int = Field(0, ge=0, le=4294967295)
    #: The profile of this PoP's servers and of their sessions with the upstreams.
    profile: Profile | None = None
    #: Who decides what a server announces: anylab's health agent, or ExaBGP's bundled healthcheck
    #: (for comparison; it has no demotion on drain beyond its metrics and no sub-second timeout).
    health_agent: Literal["anylab", "exabgp"] = "anylab"

    _name = field_validator("name")(lambda cls, v: _check_name(v))
    _asn = field_validator("asn")(lambda cls, v: _check_asn(v))
    _profile = field_validator("profile", mode="before")(lambda cls, v: None if v is None else expand(v))

    @model_validator(mode="after")
    def _room(self) -> PopSpec:
        if self.max_servers is not None and self.max_servers < self.servers:
            raise ValueError(f"max_servers ({self.max_servers}) is below servers ({self.servers}); "
                             f"set max_servers ≥ servers or drop it")
        if self.autoscale is not None and (self.max_servers or self.servers) == self.servers:
            raise ValueError("autoscale needs room: set max_servers above servers")
        return self


class ClientSpec(_Spec):
    name: str
    region: str
    router: str

    _name = field_validator("name")(lambda cls, v: _check_name(v))


class ControlSpec(_Spec):
    """Where the control plane's node attaches: a router (default: the first one listed)."""

    router: str | None = None


class OriginSpec(_Spec):
    """An origin server (what workers fetch from as a subrequest): its node's name and its router."""

    name: str
    router: str

    _name = field_validator("name")(lambda cls, v: _check_name(v))


class KvMasterSpec(_Spec):
    """A region's KV master: its node's name and the router it hangs off (in its region)."""

    name: str
    region: str
    router: str

    _name = field_validator("name")(lambda cls, v: _check_name(v))


class AnycastSpec(_Spec):
    prefix: IPv4Network
    pops: tuple[str, ...] | Literal["all"] = "all"

    @field_validator("prefix", mode="before")
    @classmethod
    def _strict_prefix(cls, value: Any) -> Any:
        if isinstance(value, str) and "/" not in value:
            raise ValueError(f"'{value}' has no prefix length; write it as '{value}/32'")
        return value


class BreakerSpec(_Spec):
    """One dependency's circuit breaker (the design's "Circuit Breaker Configuration")."""

    failure_threshold: int = Field(5, ge=1, le=1000)
    success_threshold: int = Field(3, ge=1, le=1000)
    open_s: float = Field(30.0, gt=0.0, le=3600.0)
    half_open_probes: int = Field(1, ge=1, le=100)


def _design_breakers() -> dict[str, BreakerSpec]:
    return {"origin": BreakerSpec(), "kv": BreakerSpec(failure_threshold=10, success_threshold=1, open_s=10.0),
            "do": BreakerSpec(failure_threshold=3, success_threshold=1, open_s=60.0)}


class AccountLimitsSpec(_Spec):
    """The design's per-account rate limits (per PoP; each of its servers enforces its share)."""

    requests_per_s: float = Field(100_000.0, gt=0.0)
    kv_reads_per_s: float = Field(50_000.0, gt=0.0)
    kv_writes_per_s: float = Field(1_000.0, gt=0.0)
    do_requests_per_s: float = Field(5_000.0, gt=0.0)

    def share(self, servers: int) -> dict[str, float]:
        """One server's share of each limit when its PoP has ``servers`` servers."""
        return {k: v / max(1, servers) for k, v in self.model_dump().items()}


class LabSpec(_Spec):
    """Lab-wide settings: the timer profile (see :mod:`lab.profiles`) and the client probe rate."""

    profile: Profile = named(DEFAULT_PROFILE)
    probe_rate_hz: float = Field(500.0, ge=1.0, le=2000.0)
    #: Probe rate outside measurements (``anylab measure`` raises it to ``probe_rate_hz`` for its runs);
    #: None: always ``probe_rate_hz``. For labs of hundreds of PoPs, where constant 1 kHz probing from
    #: every client would take most of the machine.
    probe_idle_hz: float | None = Field(None, ge=0.1, le=2000.0)
    #: Hosts the lab is partitioned over (lab.placement): 1 = one network; N = each host's part behind its
    #: own namespace, the links between parts VXLAN tunnels over an underlay (the multi-host prototype).
    hosts: int = Field(1, ge=1, le=64)
    probe_port: int = Field(7, ge=1, le=65535)
    #: A PoP server's edge worker, health agent and KV replica as three processes (``split``) or one
    #: (``folded``, :mod:`pop_agent.agent`: one event loop, the health check a call, a dead-man's switch
    #: in the ExaBGP API withdrawing a dead or hung process). Folded is what hundreds of PoPs on one box
    #: need; split keeps the agent outside what it checks, as ExaBGP's healthcheck is.
    server_process: Literal["split", "folded"] = "split"
    #: A PoP's KV replica serves reads flagged stale beyond this lag (the design: 5 min).
    kv_stale_after_s: float = Field(300.0, gt=0.0)
    #: How long a replica's long poll of its master waits for news: an idle replica asks this often and
    #: notices a silent master this long (+ 1 s) after it fell silent (a crashed one at once).
    kv_poll_s: float = Field(2.0, ge=0.5, le=25.0)  # the master holds a poll at most 25 s
    #: Durable Objects: ``sync`` (an answer waits for the backup region: RPO 0) or ``async``.
    do_mode: Literal["sync", "async"] = "sync"
    #: A DO host serves only while its lease runs; the directory fails a region over this long (plus
    #: ``do_margin_s``) after its last renewal, which comes every ``do_renew_s``.
    do_lease_s: float = Field(1.0, gt=0.0, le=60.0)
    do_renew_s: float = Field(0.1, gt=0.0, le=10.0)
    do_margin_s: float = Field(0.25, ge=0.0, le=10.0)
    #: How often an owner ships a fresh snapshot of each object to its backup (the design: hourly).
    do_snapshot_s: float = Field(3600.0, gt=0.0)
    #: Circuit breakers per dependency (``origin``, ``kv``, ``do``); the design's values by default.
    breakers: dict[str, BreakerSpec] = Field(default_factory=_design_breakers)
    #: Requests per second one PoP server takes on at 100 % utilisation (the design's per-PoP capacity of
    #: 100 000 QPS over its servers; by default about what one edge worker serves on one core here,
    #: bench/worker.py), and the utilisation from which it spills requests to the nearest of
    #: ``spillover_pops`` other PoPs with headroom. Overload runs set it lower.
    server_capacity_rps: float = Field(5000.0, gt=0.0, le=1_000_000.0)
    spillover_threshold: float = Field(0.8, gt=0.0, le=1.0)
    spillover_pops: int = Field(3, ge=0, le=64)
    #: Per-account limits (a deployment's ``account``, by default its own name).
    account_limits: AccountLimitsSpec = AccountLimitsSpec()

    _profile = field_validator("profile", mode="before")(lambda cls, v: expand(v))

    @model_validator(mode="after")
    def _renew_within_lease(self) -> LabSpec:
        if self.do_renew_s * 3 > self.do_lease_s:
            raise ValueError(f"do_renew_s ({self.do_renew_s}) must be at most a third of do_lease_s "
                             f"({self.do_lease_s}) so that one lost renewal does not lose the lease")
        return self


class TopologySpec(_Spec):
    """The YAML file, field for field."""

    name: str
    description: str = ""
    settings: LabSpec = LabSpec()
    regions: tuple[RegionSpec, ...] = Field(min_length=1)
    routers: tuple[RouterSpec, ...] = Field(min_length=1)
    links: tuple[LinkSpec, ...] = ()
    pops: tuple[PopSpec, ...] = Field(min_length=1)
    clients: tuple[ClientSpec, ...] = Field(min_length=1)
    anycast: tuple[AnycastSpec, ...] = (AnycastSpec(prefix=IPv4Network(DEFAULT_ANYCAST)),)
    control: ControlSpec = ControlSpec()
    #: One KV master per region; default: ``kv-<region>`` on the region's first router.
    kv_masters: tuple[KvMasterSpec, ...] | None = None
    #: Origin servers; default one, ``origin``, on the control node's router.
    origins: tuple[OriginSpec, ...] | None = None

    _name = field_validator("name")(lambda cls, v: _check_name(v))

    @model_validator(mode="before")
    @classmethod
    def _profile_bases(cls, data: Any) -> Any:
        """A router's or PoP's profile override without ``base`` builds on the topology's profile."""
        if not isinstance(data, dict):
            return data
        settings = data.get("settings")
        top = settings.get("profile") if isinstance(settings, dict) else None
        base = top if isinstance(top, str) else (top.get("base") if isinstance(top, dict) else None)
        if not isinstance(base, str):
            return data
        data = dict(data)
        for key in ("routers", "pops"):
            items = data.get(key)
            if isinstance(items, list):
                data[key] = [{**it, "profile": {"base": base, **it["profile"]}}
                             if isinstance(it, dict) and isinstance(it.get("profile"), dict)
                             and "base" not in it["profile"] else it for it in items]
        return data


# ---------------------------------------------------------------------------------------------
# The resolved model: what the network and the daemons are built from.


@dataclass(frozen=True)
class Interface:
    """One end of a veth pair, inside ``node``'s namespace."""

    node: str
    name: str
    address: IPv4Interface
    peer_node: str
    peer_name: str
    peer_address: IPv4Interface


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

    def node_names(self) -> list[str]:
        return [*(r.name for r in self.routers), *(s.name for s in self.servers), *(c.name for c in self.clients),
                *(svc.name for svc in self.services())]

    def services(self) -> tuple[ServiceNode, ...]:
        return (self.control, *self.kv_masters, *self.origins)

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
        for s in self.servers:
            yield from s.interfaces
        for c in self.clients:
            yield c.interface
        for svc in self.services():
            yield svc.interface

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


# ---------------------------------------------------------------------------------------------
# Loading and resolving.

_FIXES: Mapping[str, str] = {
    "missing": "add this field",
    "extra_forbidden": "remove it or correct its spelling",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "string_type": "give a text value",
    "literal_error": "use one of the allowed values",
    "greater_than_equal": "raise the value",
    "less_than_equal": "lower the value",
    "too_short": "give at least one entry",
    "tuple_type": "give a list",
    "ip_v4_address": "give a dotted IPv4 address such as 10.255.0.1",
    "ip_v4_network": "give an IPv4 prefix such as 203.0.113.1/32 (host bits zero)",
    "ip_v4_interface": "give an address with its prefix length, such as 10.0.9.0/31",
    "model_type": "give a mapping of fields",
    "float_parsing": "give a number",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(spec_data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str:
    """Add the entry's name to a field path, e.g. ``pops[2] (sjc).asn``, so the reader finds it."""
    if len(loc) >= 2 and isinstance(loc[1], int):
        items = spec_data.get(str(loc[0]))
        if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
            name = items[loc[1]].get("name")
            if isinstance(name, str):
                head = f"{loc[0]}[{loc[1]}] ({name})"
                rest = _field_path(loc[2:])
                return head + ("." + rest if rest != "(top level)" else "")
    return _field_path(loc)


def _from_validation_error(source: str, data: Mapping[str, Any], exc: ValidationError) -> TopologyError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic tags union members (e.g. 'tuple[...]', 'literal[...]') into loc; they are noise here.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int"})))
    # pydantic's wording, in the file's terms: YAML has lists, not tuples.
    msg = str(err["msg"]).removeprefix("Value error, ").replace("Tuple should", "List should")
    msg = msg.replace(" after validation", "")
    etype = str(err["type"])
    if etype == "value_error":
        # Our validators phrase "problem; fix" themselves.
        problem, _, fix = msg.partition("; ")
        return TopologyError(source, _describe(data, loc), problem, fix or "correct the value")
    if etype == "extra_forbidden":
        return TopologyError(source, _describe(data, loc), "unknown field", _FIXES[etype])
    return TopologyError(source, _describe(data, loc), msg, _FIXES.get(etype, "correct the value"))


def load_topology(path: str | Path, router_kind: str | None = None, profile: Any = None,
                  hosts: int | None = None) -> Topology:
    """Read, validate, resolve and graph-check a topology file; with ``router_kind`` every router is of
    that kind (``frr`` or ``bird``), with ``profile`` (a name or ``{base: …, field: …}``) that is the
    topology's profile, with ``hosts`` the number of hosts it is partitioned over, whatever the file says.

    Raises TopologyError naming the file and field for any bad input; nothing is started.
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(source, "(file)", f"cannot be read ({exc.strerror})",
                            "give the path of an existing topology file, e.g. topologies/global.yaml") from exc
    if path.suffix == ".py":
        from lab.topo_script import run_topology_script

        data = run_topology_script(path)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise TopologyError(source, where, f"YAML syntax error: {problem}",
                                "fix the indentation or quoting there") from exc
    if router_kind is not None and isinstance(data, dict) and isinstance(data.get("routers"), list):
        data = {**data, "routers": [{**r, "kind": router_kind} if isinstance(r, dict) else r
                                    for r in data["routers"]]}
    for key, value in (("profile", profile), ("hosts", hosts)):
        if value is not None and isinstance(data, dict):
            settings = data.get("settings")
            data = {**data, "settings": {**(settings if isinstance(settings, dict) else {}), key: value}}
    return build_topology(data, source)


def build_topology(data: Any, source: str = "<dict>") -> Topology:
    """Validate ``data`` (the parsed YAML) and resolve it; see :func:`load_topology` for errors."""
    from lab.graph import check_topology

    if not isinstance(data, dict):
        raise TopologyError(source, "(top level)", "is not a mapping of fields",
                            "start the file with 'name:', 'regions:', 'routers:', 'pops:', 'clients:'")
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(source, data, exc) from None
    topo = resolve(spec, source)
    check_topology(topo)
    return topo


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
    regions = {r.name for r in spec.regions}
    routers = {r.name for r in spec.routers}
    pops = {p.name for p in spec.pops}

    def need(value: str, known: set[str], field: str, kind: str) -> None:
        if value not in known:
            listing = ", ".join(sorted(known)) or "none defined"
            raise TopologyError(source, field, f"unknown {kind} '{value}'", f"use one of: {listing}")

    for i, r in enumerate(spec.routers):
        need(r.region, regions, f"routers[{i}] ({r.name}).region", "region")
    for i, link in enumerate(spec.links):
        need(link.a, routers, f"links[{i}].a", "router")
        need(link.b, routers, f"links[{i}].b", "router")
        if link.a == link.b:
            raise TopologyError(source, f"links[{i}]", f"links router '{link.a}' to itself",
                                "connect two different routers")
    related = [link.relation is not None for link in spec.links]
    if any(related) and not all(related):
        i = related.index(False)
        raise TopologyError(source, f"links[{i}].relation", "is missing while other links have one",
                            "give every router link a relation (provider, customer or peer), or none at all")
    for i, p in enumerate(spec.pops):
        need(p.region, regions, f"pops[{i}] ({p.name}).region", "region")
        if not p.upstreams:
            raise TopologyError(source, f"pops[{i}] ({p.name}).upstreams", "is empty",
                                "name at least one router this PoP peers with")
        for j, up in enumerate(p.upstreams):
            need(up, routers, f"pops[{i}] ({p.name}).upstreams[{j}]", "router")
        if len(set(p.upstreams)) != len(p.upstreams):
            raise TopologyError(source, f"pops[{i}] ({p.name}).upstreams", "names a router twice",
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
        need(k.router, routers, f"kv_masters[{i}] ({k.name}).router", "router")
        if region_of[k.router] != k.region:
            raise TopologyError(source, f"kv_masters[{i}] ({k.name}).router",
                                f"router '{k.router}' is in region '{region_of[k.router]}', not '{k.region}'",
                                "attach the master to a router of its region")
        if k.region in seen_regions:
            raise TopologyError(source, f"kv_masters[{i}] ({k.name}).region", f"region '{k.region}' has a master "
                                "already", "give each region one KV master")
        seen_regions.add(k.region)
    for i, o in enumerate(spec.origins or ()):
        need(o.router, routers, f"origins[{i}] ({o.name}).router", "router")
    origin_names = [o.name for o in spec.origins or ()]
    if len(set(origin_names)) != len(origin_names):
        raise TopologyError(source, "origins", "two origins have the same name", "give each origin its own name")
    for i, a in enumerate(spec.anycast):
        if a.pops != "all":
            for j, p_name in enumerate(a.pops):
                need(p_name, pops, f"anycast[{i}].pops[{j}]", "PoP")


#: A link's relation seen from its other end.
INVERSE_RELATION: Mapping[str, str] = {"provider": "customer", "customer": "provider", "peer": "peer"}
#: Local preference by what the neighbour a route came from is (customer routes earn money, provider
#: routes cost it): the same numbers in the FRR and BIRD configs and in the catchment prediction.
LOCAL_PREF: Mapping[str, int] = {"customer": 200, "peer": 100, "provider": 50}
DEFAULT_LOCAL_PREF = 100
#: The community a router tags a learned route with, by relation (private ASN 64512's).
RELATION_COMMUNITY: Mapping[str, str] = {"customer": "64512:1", "peer": "64512:2", "provider": "64512:3"}


def server_name(pop: str, index: int) -> str:
    """PoP server node names: ``sjc-s1``, ``sjc-s2``… (1-based)."""
    return f"{pop}-s{index + 1}"


def resolve(spec: TopologySpec, source: str) -> Topology:
    """Assign addresses and interfaces deterministically (declaration order) and derive the sessions.

    Raises TopologyError for dangling references or exhausted address pools.
    """
    _cross_refs(spec, source)
    intfs: dict[str, list[Interface]] = {}

    def add_pair(a: str, b: str, addr_a: IPv4Interface, addr_b: IPv4Interface) -> None:
        la, lb = intfs.setdefault(a, []), intfs.setdefault(b, [])
        name_a, name_b = f"{a}-eth{len(la)}", f"{b}-eth{len(lb)}"
        la.append(Interface(a, name_a, addr_a, b, name_b, addr_b))
        lb.append(Interface(b, name_b, addr_b, a, name_a, addr_a))

    for r in spec.routers:
        intfs.setdefault(r.name, [])
    for i, link in enumerate(spec.links):
        pair = link.addresses or _p2p(CORE_LINKS, i, source, f"links[{i}]")
        add_pair(link.a, link.b, pair[0], pair[1])

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
            add_pair(up, s_name, r_addr, s_addr)
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
    for i, c in enumerate(spec.clients):
        r_addr, c_addr = _p2p(CLIENT_LINKS, i, source, f"clients[{i}]")
        add_pair(c.router, c.name, r_addr, c_addr)
        host_subnets.setdefault(c.router, []).append(r_addr.network)

    asn_of: dict[str, int] = {r.name: r.asn for r in spec.routers}
    rid_of: dict[str, IPv4Address] = {}
    for i, r in enumerate(spec.routers):
        rid_of[r.name] = r.loopback or _host(ROUTER_LOOPBACKS, i, source, f"routers[{i}]")
    for p, _k, s_name, router_id in server_specs:
        asn_of[s_name] = p.asn
        rid_of[s_name] = router_id

    profile_of: dict[str, Profile] = {r.name: r.profile or spec.settings.profile for r in spec.routers}
    for p, _k, s_name, _rid in server_specs:
        profile_of[s_name] = p.profile or spec.settings.profile
    servers_set = {s_name for _p, _k, s_name, _rid in server_specs}

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
    region_of = {r.name: r.region for r in spec.routers}
    control = ServiceNode(CONTROL_NODE, region_of[control_router], control_router, intfs[CONTROL_NODE][0],
                          CONTROL_PORT)
    kv_masters = tuple(ServiceNode(km.name, km.region, km.router, intfs[km.name][0], KV_PORT) for km in kv_specs)
    origins = tuple(ServiceNode(o.name, region_of[o.router], o.router, intfs[o.name][0], ORIGIN_PORT)
                    for o in origin_specs)
    return Topology(spec.name, source, spec, routers, tuple(pops), servers, clients, anycast, control, kv_masters,
                    origins)
