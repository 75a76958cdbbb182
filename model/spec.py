"""The topology file's schema (pydantic): what a YAML topology may say, checked field by field. Each class
is one section of the file; :mod:`model.load` turns what they reject into one line naming the field."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from model.constants import DEFAULT_ANYCAST, NAME_RE, RESERVED_ASNS
from model.geo import where
from model.profiles import DEFAULT_PROFILE, Profile, expand, named


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false would pass as 1/0 where a number is wanted (``asn: true`` became AS 1)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            options = set(get_args(annotation)) or {annotation}
            if bool not in options and options & {int, float}:
                raise ValueError(f"{str(value).lower()} is not a number; give a number")
        return value


def _check_loopback(value: IPv4Address | None) -> IPv4Address | None:
    if value is not None and (value.is_loopback or value.is_unspecified or value.is_multicast
                              or value.is_link_local or value.is_reserved or value == IPv4Address("255.255.255.255")):
        raise ValueError(f"{value} is not an address a router can use as its loopback; "
                         "give a unicast address such as 10.255.0.9")
    return value


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


def _check_location(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple) and (len(value) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise ValueError("a location is a city code or [latitude, longitude]")
    return where(value if isinstance(value, str) else tuple(value)) and value


#: A place: a city code of :data:`model.geo.CITIES` or [latitude, longitude].
Location = str | tuple[float, float]


class ShapeFields(_Spec):
    """What a link does to packets, each direction alike (:mod:`lab.links`). Nothing set: a bare veth."""

    #: One-way delay (ms); unset: derived from the ends' locations if both have one, else none.
    delay: float | None = Field(None, ge=0.0, le=5000.0)
    #: Jitter (ms) added to each packet's delay, drawn ``uniform`` on ±jitter or ``normal`` with σ =
    #: jitter; a link never reorders (a packet waits for the one ahead of it).
    jitter: float = Field(0.0, ge=0.0, le=1000.0)
    jitter_distribution: Literal["uniform", "normal"] = "uniform"
    #: Packets lost (%); with ``loss_burst`` > 1 in runs of that mean length (Gilbert model).
    loss: float = Field(0.0, ge=0.0, lt=100.0)
    loss_burst: float = Field(1.0, ge=1.0, le=1000.0)
    #: Rate limit (Mbit/s, HTB) and its queue (packets; default 1000, Linux's txqueuelen).
    bandwidth: float | None = Field(None, gt=0.0, le=100_000.0)
    queue: int | None = Field(None, ge=1, le=100_000)

    @model_validator(mode="after")
    def _consistent(self) -> ShapeFields:
        if self.loss_burst > 1.0 and self.loss == 0.0:
            raise ValueError("loss_burst needs a loss: set loss (%) or drop loss_burst")
        if self.queue is not None and self.bandwidth is None:
            raise ValueError("queue is the rate limit's queue: set bandwidth (Mbit/s) or drop queue")
        return self


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
    #: Where it is (a city code or [lat, lon]): links between located ends get their delay from distance.
    location: Location | None = None

    _profile = field_validator("profile", mode="before")(lambda cls, v: None if v is None else expand(v))
    _location = field_validator("location", mode="before")(lambda cls, v: _check_location(v))

    _name = field_validator("name")(lambda cls, v: _check_name(v))
    _asn = field_validator("asn")(lambda cls, v: _check_asn(v))
    _loopback = field_validator("loopback")(lambda cls, v: _check_loopback(v))


class LinkSpec(ShapeFields):
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
    #: Where the PoP is, and what each server's links to its upstreams do (delay from distance if unset).
    location: Location | None = None
    access: ShapeFields | None = None

    _location = field_validator("location", mode="before")(lambda cls, v: _check_location(v))
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
    #: Where the client is, and what its link to its router does (delay from distance if unset).
    location: Location | None = None
    access: ShapeFields | None = None

    _location = field_validator("location", mode="before")(lambda cls, v: _check_location(v))
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


class DnsProviderSpec(_Spec):
    """One DNS provider of the platform's zone: its server software and one node per router it names. With
    ``anycast`` (its service prefix) and ``asn`` every node announces the prefix by BGP while its health
    check's query is answered; without, it is one unicast node."""

    name: str
    kind: Literal["knot", "nsd"]
    routers: tuple[str, ...] = Field(min_length=1, max_length=16)
    anycast: IPv4Network | None = None
    asn: int | None = None

    _name = field_validator("name")(lambda cls, v: _check_name(v))
    _asn = field_validator("asn")(lambda cls, v: v if v is None else _check_asn(v))

    @model_validator(mode="after")
    def _anycast_or_unicast(self) -> DnsProviderSpec:
        if (self.anycast is None) != (self.asn is None):
            raise ValueError("an anycast provider needs both 'anycast' (its prefix) and 'asn'; a unicast one "
                             "neither")
        if self.anycast is None and len(self.routers) != 1:
            raise ValueError("a unicast provider has one node: name one router (or give 'anycast' and 'asn')")
        if len(set(self.routers)) != len(self.routers):
            raise ValueError("names a router twice; one node per router")
        return self


class DnsSpec(_Spec):
    """The lab's DNS (absent: none): a root and ``test.`` on ``root_router``, the platform's zone
    ``<zone>.test.`` on a hidden primary fed by the control plane (on ``primary_router``; default: the
    control node's), transferred to every provider's nodes; recursive resolvers of each ``resolvers``
    kind in every client region, used by that region's clients."""

    zone: str = "edge"
    #: The TTL of the platform's records (what a resolver may cache an answer for), and of negative
    #: answers (a name not deployed yet).
    ttl: int = Field(30, ge=1, le=86400)
    negative_ttl: int = Field(5, ge=0, le=86400)
    #: How long a provider keeps answering without reaching the primary (the SOA's expire).
    expire_s: int = Field(600, ge=60, le=2419200)
    root_router: str | None = None
    primary_router: str | None = None
    providers: tuple[DnsProviderSpec, ...] = Field(min_length=1, max_length=8)
    resolvers: tuple[Literal["unbound", "bind"], ...] = Field(("unbound",), min_length=1, max_length=4)

    _zone = field_validator("zone")(lambda cls, v: _check_name(v))

    @model_validator(mode="after")
    def _distinct(self) -> DnsSpec:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError("two providers have the same name; give each its own")
        if len(set(self.resolvers)) != len(self.resolvers):
            raise ValueError("names a resolver kind twice; each kind runs once per region")
        prefixes = [p.anycast for p in self.providers if p.anycast is not None]
        for i, a in enumerate(prefixes):
            if any(a.overlaps(b) for b in prefixes[i + 1:]):
                raise ValueError(f"anycast prefix {a} overlaps another provider's; give each its own")
        return self


class MonitoringSpec(_Spec):
    """The lab's monitoring (absent: none): Prometheus scraping every service, Alertmanager and the lab's
    alert receiver on one node, ``mon``, on ``router`` (default: the control node's)."""

    router: str | None = None
    #: The availability objective the error budget burns against (the design: 99.99 %).
    slo: float = Field(0.9999, gt=0.5, lt=1.0)


class BackupSpec(_Spec):
    """The platform's backups (absent: none): the primary region's backup store on node ``bk``, on
    ``router`` (default: the control node's), following every KV master's change stream (the design's
    continuous WAL) and snapshotting it every ``kv_snapshot_s`` (the design's daily, lab-scaled), every
    DO host's objects (their logs) snapshotted every ``do_snapshot_s`` (the design's hourly), and the
    control plane's etcd (its watch) with the code artifacts, snapshotted with the KV data.

    The store keeps snapshots ``keep_days`` "days" (of ``kv_snapshot_s`` each: the lab's scale); with
    ``dr_router``, node ``drbk`` on that router (another region's) copies the whole store continuously (the
    design's DR region) and keeps every snapshot in its cold archive for ``archive_days`` "days" (the
    design's 30).

    ``dr_servers`` > 0 racks a standby platform in the DR region beside the copy, out of service until a
    DR failover (the design's "Catastrophic (multi-region) → failover to DR site"): a PoP ``dr`` of that
    many servers (AS ``dr_asn``) on ``dr_router``, a control plane node ``cp-dr`` (an etcd cluster of its
    own) and a storage node ``kv-dr`` (a KV master), brought up from the copy."""

    router: str | None = None
    kv_snapshot_s: float = Field(86400.0, ge=1.0, le=7 * 86400.0)
    do_snapshot_s: float = Field(3600.0, ge=0.5, le=7 * 86400.0)
    keep_days: float = Field(7.0, gt=0.0, le=366.0)
    dr_router: str | None = None
    archive_days: float = Field(30.0, gt=0.0, le=3660.0)
    dr_servers: int = Field(0, ge=0, le=8)
    dr_asn: int = 64690

    _dr_asn = field_validator("dr_asn")(lambda cls, v: _check_asn(v))


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
    """Lab-wide settings: the timer profile (see :mod:`model.profiles`) and the client probe rate."""

    profile: Profile = named(DEFAULT_PROFILE)
    probe_rate_hz: float = Field(500.0, ge=1.0, le=2000.0)
    #: Probe rate outside measurements (``anylab measure`` raises it to ``probe_rate_hz`` for its runs);
    #: None: always ``probe_rate_hz``. For labs of hundreds of PoPs, where constant 1 kHz probing from
    #: every client would take most of the machine.
    probe_idle_hz: float | None = Field(None, ge=0.1, le=2000.0)
    #: Hosts the lab is partitioned over (model.placement): 1 = one network; N = each host's part behind its
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
    #: How much longer than the great circle a fibre route is, for delays derived from locations.
    route_factor: float = Field(1.0, ge=1.0, le=5.0)
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
    #: DNS: a root, the platform's zone from several providers, resolvers per client region (absent: none).
    dns: DnsSpec | None = None
    #: Prometheus, Alertmanager and the lab's alert receiver (absent: none).
    monitoring: MonitoringSpec | None = None
    #: The backup store and its service (absent: none).
    backup: BackupSpec | None = None

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
