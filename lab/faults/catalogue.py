"""The fault catalogue: what each scenario breaks, how it is undone, and which target it accepts.

``plan(topo, scenario, target)`` is pure: it checks the request and resolves the target into the servers,
routers and links the fault touches, or raises UsageError (exit 2, nothing touched). ``Injector`` carries a
plan out on a running :class:`~lab.run.lab.Lab` and undoes it, through the scenario's entry in
:data:`FAULTS` (one :class:`Fault` a scenario, looked up by name).

=============== ======================== =============================================================
scenario        target                   fault (and restore)
=============== ======================== =============================================================
service-crash   server or PoP            SIGKILL the edge worker — with ``server_process: folded`` the pop
                                         agent, health agent and KV replica with it (restart it)
drain           server or PoP            create the health agent's drain file (remove it)
speaker-crash   server or PoP            SIGKILL ExaBGP (restart it; it re-announces the saved state)
server-silent   server or PoP            nftables drops everything on the server's links (delete table)
server-crash    server or PoP            SIGKILL every daemon of the server, its links down (links up,
                                         routes back, daemons restarted)
link-down       router link ``a:b``      the link's carrier down (up again)
link-degrade    any link ``a:b``         the link's delay DEGRADE_DELAY_MS longer, jitter at least
                                         DEGRADE_JITTER_MS (:mod:`lab.links`; back to its shape before)
link-lossy      any link ``a:b``         LOSSY_PCT % of the link's packets lost each way, independently
                                         (back to its shape before)
pop-down        PoP                      every server of the PoP silent
region-down     region                   every PoP server, router and KV master of the region silent
region-loss     region                   the region's data centres lost, its network and users not: its
                                         PoP servers, storage and control plane nodes silent, its
                                         routers forwarding (the runbook's "complete region failure")
flap            server, PoP or ``a:b``   N carrier down/up cycles at a period; ends restored
control-down    ``control``              SIGKILL every region's control plane API (restart them; the
                                         state is in etcd, which runs on)
control-cut     ``control``              nftables on every region's control plane node drops all but
                                         the other control plane nodes: PoPs cannot sync, etcd keeps its
                                         quorum, the operator's sockets still work (delete table)
cp-down         control plane node or    SIGKILL the region's control plane API and etcd member (restart
                region                   both: the member catches up from the others)
cp-cut          control plane node or    nftables drops the node's traffic with the other regions'
                region                   control plane nodes: its etcd member is in the minority, its API
                                         refuses writes and syncs; its PoPs still reach it (delete table)
etcd-leader-kill ``control``             SIGKILL the etcd member that leads now (restart it)
artifact-store-wipe control plane node,  delete every artifact the region's store holds; the region
                region or ``global``     repairs it from the others (restore: nothing to undo); ``global``:
                                         every region's at once (only the backups still hold them)
kv-master-crash KV master or region      SIGKILL the region's KV master (restart it: its data is on
                                         disk, it pulls what it missed from the other masters)
do-crash        KV node or region        SIGKILL the region's Durable Object host (restart it: its
                                         copies are on disk; it is fenced for what moved meanwhile)
do-cut          KV node or region        a partition: nftables drops the region's storage node's
                                         traffic with the control node (the DO directory) only; PoPs
                                         and the other regions still reach its DO host (delete table)
storage-partition KV node or region      nftables drops the storage node's traffic with every other
                                         region's storage node: its KV master cannot confirm a write
                                         nor pull, its DO host cannot ship; its PoPs and the control
                                         node still reach it (delete table)
kv-master-wipe  KV node or region        SIGKILL the KV master and delete its disk (restart it empty:
                                         it is rebuilt from the other masters)
do-host-wipe    KV node or region        SIGKILL the DO host and delete its disk (restart it empty)
kv-global-loss  ``global``               every KV master and every PoP server's KV replica killed and
                                         its disk deleted (the design's "global KV failure"; restart
                                         them empty: ``anylab restore-backup kv`` brings the data back)
catastrophic    ``global``               every serving region lost at once (the design's "catastrophic
                                         (multi-region)"): region-loss everywhere — every PoP server,
                                         storage and control plane node — and the DO directory and the
                                         primary backup store with them; routers, users, DNS providers,
                                         origins and the DR region stay (``anylab dr failover`` brings
                                         the platform up there; delete tables)
clock-ahead     KV node or region        the KV master's HLC takes its wall time CLOCK_JUMP_S ahead
                                         (the host's clock is not touched) (back to 0)
clock-behind    KV node or region        the same, CLOCK_JUMP_S behind (back to 0)
origin-down     origin                   SIGKILL the origin server (restart it)
origin-slow     origin                   the origin answers after 2 s (back to normal)
origin-errors   origin                   the origin answers 500 to every request (back to normal)
dns-provider-down DNS provider (``p1``)  every node of the provider silent (nftables; its BGP sessions
                                         time out, so an anycast provider's prefix is withdrawn)
dns-node-down   a provider's node        SIGKILL its DNS server: an anycast node's health agent
                                         withdraws the prefix there, its routers move to another node
                                         of the provider (restart it)
dns-primary-down ``dns-hidden``          SIGKILL the hidden primary and its feeder: the providers serve
                                         on until the zone's expire, changes wait (restart both)
dns-region-withdraw region               the runbook's containment: the region's PoP names pulled from
                                         the platform's zone through the control plane (put back)
resolver-down   a resolver node          SIGKILL the resolver: its clients go to their next (restart)
=============== ======================== =============================================================
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from core.clock import monotonic
from core.daemon import Daemon
from core.errors import AnylabError, UsageError
from core.wait import wait_for
from kv.client import KvClient
from kv.store import KvError
from lab.faults.scenarios import FAULTS_FILE, SCENARIOS
from lab.links.plan import find, links_of
from model.constants import LAB_SUPERNET
from model.topology import Shape, Topology


class FaultTarget(Protocol):
    """What injecting a fault needs of a running lab (:class:`lab.run.lab.Lab` is one): its topology, the
    namespace file and directory of every node, its run directory and every node's daemons."""

    topo: Topology
    netns: dict[str, str]
    run_dir: Path
    daemons: dict[str, list[Daemon]]

    def node_dir(self, node: str) -> Path: ...

    def set_link(self, a: str, b: str, changes: dict[str, Any], calibrate: bool = True) -> dict[str, Any]: ...

    def link_shape(self, a: str, b: str) -> Shape | None: ...

    def etcd_leader(self) -> str | None: ...

    def dns_withdraw(self, region: str, withdrawn: bool) -> dict[str, Any]: ...

#: The scenarios that touch only the region's control plane node.
CONTROL_PLANE_ONLY = ("cp-down", "cp-cut", "artifact-store-wipe")
#: The scenarios that touch only the region's storage node (KV master, DO host).
#: DNS scenarios: what they touch is DNS nodes (or the zone), never a region's servers and routers.
DNS_ONLY = ("dns-provider-down", "dns-node-down", "dns-primary-down", "dns-region-withdraw", "resolver-down")
STORAGE_ONLY = ("kv-master-crash", "do-crash", "do-cut", "storage-partition", "kv-master-wipe", "do-host-wipe",
                "clock-ahead", "clock-behind")
#: The target of a fault on the whole platform (``kv-global-loss global``).
GLOBAL = "global"
#: How far clock-ahead and clock-behind move a KV master's HLC input: past the 5 s a peer's timestamp may
#: be ahead (kv.hlc.MAX_AHEAD_MS), so that the bound is crossed, not only approached.
CLOCK_JUMP_S = 30.0
NFT_TABLE = "anylab_fault"
#: link-degrade: a path gone long (a reroute round a fibre cut, a congested transit) — and link-lossy.
DEGRADE_DELAY_MS = 100.0
#: ``etcd-leader-kill`` during an election waits this long for the leader it elects (a few election
#: timeouts of 0.5 s; a control plane just restored was still electing in CI).
LEADER_WAIT_S = 10.0
DEGRADE_JITTER_MS = 10.0
LOSSY_PCT = 5.0
FLAP_MAX_COUNT = 100
FLAP_MIN_PERIOD_S = 0.1


@dataclass(frozen=True)
class Plan:
    """A fault resolved against a topology: everything it touches, by name."""

    scenario: str
    target: str
    servers: tuple[str, ...] = ()
    routers: tuple[str, ...] = ()
    #: (node, interface) ends to take down: one end per link is enough (the peer loses carrier).
    links: tuple[tuple[str, str], ...] = ()
    count: int = 1
    period: float = 1.0
    #: Other nodes the fault touches (the control node).
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Active:
    plan: Plan
    t_fault: float


def _kind_of(topo: Topology, target: str) -> str | None:
    if ":" in target:
        return "link"
    if target in {s.name for s in topo.servers}:
        return "server"
    if target in {p.name for p in topo.pops}:
        return "pop"
    if target in {r.name for r in topo.spec.regions}:
        return "region"
    if target in {r.name for r in topo.routers}:
        return "router"
    if target == topo.control.name:
        return "control"
    if target in {cp.name for cp in topo.control_planes}:
        return "cp"
    if target in {k.name for k in topo.kv_masters}:
        return "kv"
    if target in {o.name for o in topo.origins}:
        return "origin"
    if topo.dns is not None:
        if target in {p.name for p in topo.dns.providers}:
            return "dns-provider"
        roles = {n.name: n.role for n in topo.dns.nodes}
        kind = {"provider": "dns-node", "resolver": "resolver", "hidden": "dns-primary"}.get(roles.get(target, ""))
        if kind is not None:
            return kind
    return GLOBAL if target == GLOBAL else None  # last: a region or node may be called "global"


def _link_end(topo: Topology, target: str) -> tuple[str, str]:
    a, _, b = target.partition(":")
    for intf in topo.interfaces():
        if intf.node == a and intf.peer_node == b:
            return (a, intf.name)
    routers = {r.name for r in topo.routers}
    known = sorted(f"{x.node}:{x.peer_node}" for x in topo.interfaces() if x.node in routers and x.peer_node in routers
                   and x.node < x.peer_node)
    raise UsageError(f"no link '{target}'; router links are: {', '.join(known) or 'none'}")


def plan(topo: Topology, scenario: str, target: str, count: int = 3, period: float = 1.0) -> Plan:
    """Resolve ``scenario`` on ``target``; raises UsageError naming what is wrong and what would do."""
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario '{scenario}'; use one of: {', '.join(SCENARIOS)}")
    kind = _kind_of(topo, target)
    allowed = SCENARIOS[scenario]
    if kind is None:
        examples = [topo.servers[0].name, topo.pops[0].name, topo.spec.regions[0].name, topo.control.name,
                    *(cp.name for cp in topo.control_planes[:1])]
        if topo.dns is not None:
            examples += [topo.dns.providers[0].name, topo.dns.providers[0].nodes[0], topo.dns.hidden.name,
                         topo.dns.of_role("resolver")[0].name]
        raise UsageError(f"unknown target '{target}'; give a server, PoP, region, router link a:b, control or a "
                         f"control plane node (e.g. {', '.join(examples)})")
    if kind not in allowed:
        raise UsageError(f"{scenario} does not apply to {kind} '{target}'; it takes a {' or '.join(allowed)}")
    if scenario == "flap" and not (1 <= count <= FLAP_MAX_COUNT and period >= FLAP_MIN_PERIOD_S):
        raise UsageError(f"flap takes 1..{FLAP_MAX_COUNT} cycles and a period ≥ {FLAP_MIN_PERIOD_S} s, "
                         f"not {count} × {period} s")
    servers: tuple[str, ...] = ()
    routers: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    if kind == "server":
        servers = (target,)
    elif kind == "pop":
        servers = topo.pop(target).servers
    elif kind == "region":
        servers = tuple(s.name for s in topo.servers if s.region == target and not s.standby)
        if scenario == "region-down":  # pops-down, region-loss: its routers and users stay
            routers = tuple(r.name for r in topo.routers if r.region == target)
    elif kind == "link" and scenario in ("link-degrade", "link-lossy"):
        a, _, b = target.partition(":")
        find(links_of(topo), a, b)  # any link of the lab, access links too; raises UsageError
    elif kind == "link":
        a, _, b = target.partition(":")
        if {a, b} - {r.name for r in topo.routers}:
            raise UsageError(f"'{target}' is not a link between two routers; use e.g. "
                             f"{topo.routers[0].name}:{topo.routers[0].neighbors[0].node}")
        links = (_link_end(topo, target),)
    if scenario in ("server-crash", "flap") and servers:
        links = tuple((s, i.name) for s in servers for i in topo.server(s).interfaces)
    hosts: tuple[str, ...] = ()
    cps = tuple(cp.name for cp in topo.control_planes if kind == "region" and cp.region == target)
    if kind == "control" and scenario in ("control-down", "control-cut", "etcd-leader-kill"):
        hosts = tuple(cp.name for cp in topo.control_planes)
    elif kind in ("control", "kv", "origin", "cp"):
        hosts = (target,)
    elif kind == "region" and scenario in CONTROL_PLANE_ONLY:
        hosts = cps
    elif kind == GLOBAL and scenario == "artifact-store-wipe":
        hosts = tuple(cp.name for cp in topo.control_planes)
    elif kind == "region" and scenario in ("region-down", "region-loss", *STORAGE_ONLY):
        hosts = tuple(k.name for k in topo.kv_masters if k.region == target)
        if scenario in ("region-down", "region-loss"):
            hosts += cps  # the region's control plane goes with it
    if kind == "dns-provider":
        assert topo.dns is not None
        hosts = topo.dns.provider(target).nodes
    elif kind in ("dns-node", "resolver", "dns-primary"):
        hosts = (target,)
    if scenario == "catastrophic":  # every region's data centres, the platform's central nodes with them
        central = (topo.control.name, *((topo.backup.name,) if topo.backup is not None else ()))
        return Plan(scenario, target, tuple(s.name for s in topo.servers if not s.standby), (), (), count, period,
                    (*(k.name for k in topo.kv_masters), *(cp.name for cp in topo.control_planes), *central))
    if scenario == "kv-global-loss":  # every master, every server's replica; nothing else
        return Plan(scenario, target, tuple(s.name for s in topo.servers if not s.standby), (), (), count, period,
                    tuple(k.name for k in topo.kv_masters))
    if scenario in DNS_ONLY:
        if topo.dns is None:
            raise UsageError(f"{scenario}: topology {topo.name} has no DNS (no 'dns' section)")
        return Plan(scenario, target, (), (), (), count, period, hosts)
    if scenario in STORAGE_ONLY or scenario in CONTROL_PLANE_ONLY:
        servers, routers = (), ()
        if not hosts:
            what = "control plane node" if scenario in CONTROL_PLANE_ONLY else "storage node (KV master, DO host)"
            raise UsageError(f"region '{target}' has no {what}")
    return Plan(scenario, target, servers, routers, links, count, period, hosts)


def _nft_silence(forwarding: bool) -> str:
    """An nftables table dropping every packet in and out of the node except on lo."""
    chains = [("input", "iifname"), ("output", "oifname")] + ([("forward", "iifname")] if forwarding else [])
    body = "".join(f"  chain {hook} {{ type filter hook {hook} priority -300; policy accept; "
                   f"{match} != \"lo\" drop; }}\n" for hook, match in chains)
    return f"table inet {NFT_TABLE} {{\n{body}}}\n"


def _nft_only(*addresses: str) -> str:
    """An nftables table dropping every packet of the node but those on lo and to or from ``addresses``."""
    if not addresses:
        return _nft_silence(forwarding=False)
    chains = [("input", "iifname", "saddr"), ("output", "oifname", "daddr")]
    body = "".join(f"  chain {hook} {{ type filter hook {hook} priority -300; policy accept; "
                   f"{dev} != \"lo\" ip {match} != {{ {', '.join(addresses)} }} drop; }}\n"
                   for hook, dev, match in chains)
    return f"table inet {NFT_TABLE} {{\n{body}}}\n"


def _nft_cut(*addresses: str) -> str:
    """An nftables table dropping the node's packets to and from the given addresses (a partition)."""
    chains = [("input", "saddr"), ("output", "daddr")]
    body = "".join(f"  chain {hook} {{ type filter hook {hook} priority -300; policy accept; "
                   f"ip {match} {{ {', '.join(addresses)} }} drop; }}\n" for hook, match in chains)
    return f"table inet {NFT_TABLE} {{\n{body}}}\n"


class Injector:
    """Carries out and undoes fault plans on a running lab; remembers what is failed (``faults.json``)."""

    def __init__(self, lab: FaultTarget) -> None:
        self.lab = lab
        self.active: dict[str, Active] = {}
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        #: A reshaped link's shape before the fault (link-degrade, link-lossy), to give it back.
        self.link_before: dict[str, Shape | None] = {}
        #: The control plane node whose etcd member etcd-leader-kill killed, to restart it.
        self.killed_leader: dict[str, str] = {}

    # -- primitives ---------------------------------------------------------------------------

    def _run(self, node: str, argv: list[str], stdin: str | None = None) -> None:
        res = subprocess.run(["nsenter", f"--net={self.lab.netns[node]}", "--", *argv], input=stdin,
                             capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise AnylabError(f"{' '.join(argv)}: {res.stderr.strip()}", node=node)

    def _silence(self, node: str, on: bool, forwarding: bool = False) -> None:
        if on:
            self._run(node, ["nft", "-f", "-"], _nft_silence(forwarding))
        else:
            self._run(node, ["nft", "delete", "table", "inet", NFT_TABLE])

    def _daemon(self, server: str, name: str) -> Any:
        for d in self.lab.daemons.get(server, []):
            if d.name == name:
                return d
        raise AnylabError(f"no daemon {name}", node=server)

    def _edge(self, server: str) -> str:
        """The daemon that serves: the edge worker, or the pop agent it is folded into."""
        names = {d.name for d in self.lab.daemons.get(server, [])}
        return "pop-agent" if "pop-agent" in names else "edge"

    def _kill(self, node: str, name: str) -> None:
        d = self._daemon(node, name)
        if d.proc is not None:
            d.proc.kill()

    def _wipe(self, node: str, name: str) -> None:
        """SIGKILL the storage daemon ``name`` and delete its data directory: the disk is gone."""
        d = self._daemon(node, name)
        self._kill(node, name)
        data = Path(d.data_dir)
        if data.parent != self.lab.node_dir(node):  # never delete outside the node's own run directory
            raise AnylabError(f"{name}'s data directory {data} is not in the node's run directory", node=node)
        shutil.rmtree(data, ignore_errors=True)

    def _clock(self, node: str, offset_s: float) -> None:
        """Move the KV master's HLC input by ``offset_s`` (on its operator socket)."""
        try:
            KvClient(self._daemon(node, "kv-master").socket, timeout=5).call("POST", "/v1/clock",
                                                                          {"offset_s": offset_s})
        except KvError as exc:
            raise AnylabError(f"the KV master's clock: {exc}", node=node) from None

    def _restart(self, server: str, names: list[str]) -> None:
        for d in self.lab.daemons[server]:
            if d.name in names and (d.proc is None or not d.proc.alive()):
                d.start()
                d.wait_ready()

    def _links(self, plan_: Plan, up: bool) -> None:
        for node, intf in plan_.links:
            self._run(node, ["ip", "link", "set", "dev", intf, "up" if up else "down"])
        if up:
            for server in {n for n, _ in plan_.links if n in {s.name for s in self.lab.topo.servers}}:
                # Taking a link down flushed the server's route back into the lab; put it back.
                hops = [arg for i in self.lab.topo.server(server).interfaces
                        for arg in ("nexthop", "via", str(i.peer_address.ip), "dev", i.name)]
                self._run(server, ["ip", "route", "replace", str(LAB_SUPERNET), *hops])

    # -- faults --------------------------------------------------------------------------------

    def fail(self, p: Plan) -> float:
        """Inject; returns the CLOCK_MONOTONIC time just before the first change. Raises UsageError if
        the target is already failed, AnylabError if injecting fails (what was done is undone)."""
        with self.lock:
            if p.target in self.active:
                raise UsageError(f"'{p.target}' is already failed ({self.active[p.target].plan.scenario}); "
                                 f"'anylab restore {p.target}' first")
            self.cancel.clear()
            t = monotonic()
            if p.scenario != "flap":  # a flap ends restored before fail() returns: never active
                self.active[p.target] = Active(p, t)
                self._save()
            try:
                self._inject(p)
            except BaseException:
                self._undo(p, best_effort=True)
                self.active.pop(p.target, None)
                self._save()
                raise
            return t

    def _inject(self, p: Plan) -> None:
        FAULTS[p.scenario].inject(self, p)

    def _flap(self, p: Plan) -> None:
        """``count`` carrier down/up cycles, each half a period; ends with the links up."""
        start = monotonic()
        try:
            for i in range(2 * p.count):
                due = start + i * p.period / 2
                if self.cancel.wait(max(0.0, due - monotonic())):
                    break
                self._links(p, up=i % 2 == 1)
        finally:
            self._links(p, up=True)

    def restore(self, target: str) -> float:
        """Undo the fault on ``target``; returns the CLOCK_MONOTONIC time the undo began.
        Raises UsageError if nothing is failed there, AnylabError if the undo fails."""
        with self.lock:
            active = self.active.get(target)
            if active is None:
                failed = ", ".join(self.active) or "nothing is failed"
                raise UsageError(f"'{target}' is not failed ({failed})")
            t = monotonic()
            self._undo(active.plan)
            del self.active[target]
            self._save()
            return t

    def restore_all(self) -> list[str]:
        """Undo every active fault; returns the targets restored. Raises AnylabError listing failures."""
        errors, done = [], []
        for target in list(self.active):
            try:
                self.restore(target)
                done.append(target)
            except AnylabError as exc:
                errors.append(str(exc))
        if errors:
            raise AnylabError("restore: " + "; ".join(errors))
        return done

    def _undo(self, p: Plan, best_effort: bool = False) -> None:
        """Undo ``p``, every step tried even when one before failed; raises AnylabError naming every
        failure (unless ``best_effort``: undoing a fault that failed half-way)."""
        errors: list[str] = []

        def attempt(fn: Callable[..., None], *args: Any, **kw: Any) -> None:
            try:
                fn(*args, **kw)
            except AnylabError as exc:
                errors.append(str(exc))

        FAULTS[p.scenario].undo(self, p, attempt)
        if errors and not best_effort:
            raise AnylabError(f"restore of {p.scenario} on {p.target}: " + "; ".join(errors))

    def _save(self) -> None:
        data = {t: {"plan": asdict(a.plan), "t_fault": a.t_fault} for t, a in self.active.items()}
        path: Path = self.lab.run_dir / FAULTS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


# -- the catalogue: one entry a scenario -------------------------------------------------------------

#: Runs one step of an undo and keeps its error for the report (an undo goes on past a failed step).
Attempt = Callable[..., None]


@dataclass(frozen=True)
class Fault:
    """One scenario of the catalogue: how it is carried out on its plan, and how it is undone."""

    inject: Callable[[Injector, Plan], None]
    undo: Callable[[Injector, Plan, Attempt], None]


Step = Callable[["Injector", str], None]


def _each(nodes: Callable[[Plan], tuple[str, ...]], step: Step) -> Callable[[Injector, Plan], None]:
    """Do ``step`` on each of the plan's ``nodes`` (its hosts or its servers)."""
    def run(inj: Injector, p: Plan) -> None:
        for node in nodes(p):
            step(inj, node)
    return run


def _each_undo(nodes: Callable[[Plan], tuple[str, ...]], step: Step) -> Callable[[Injector, Plan, Attempt], None]:
    """Undo ``step`` on each of the plan's ``nodes``, going on past a node that fails."""
    def run(inj: Injector, p: Plan, attempt: Attempt) -> None:
        for node in nodes(p):
            attempt(step, inj, node)
    return run


def _hosts(p: Plan) -> tuple[str, ...]:
    return p.hosts


def _servers(p: Plan) -> tuple[str, ...]:
    return p.servers


def _on_hosts(inject: Step, undo: Step) -> Fault:
    return Fault(_each(_hosts, inject), _each_undo(_hosts, undo))


def _nothing(_inj: Injector, _p: Plan, _attempt: Attempt) -> None:
    """The undo of a fault that ends restored (a flap)."""


def _restart(name: str) -> Step:
    return lambda inj, node: inj._restart(node, [name])


def _kill_daemon(name: str) -> Fault:
    """SIGKILL daemon ``name`` on the plan's hosts; restore restarts it."""
    return _on_hosts(lambda inj, h: inj._kill(h, name), _restart(name))


def _wipe_daemon(name: str) -> Fault:
    """SIGKILL daemon ``name`` on the plan's hosts and delete its disk; restore starts it empty."""
    return _on_hosts(lambda inj, h: inj._wipe(h, name), _restart(name))


def _kill_on_servers(name_of: Callable[[Injector, str], str]) -> Fault:
    """SIGKILL one daemon of each of the plan's servers; restore restarts it."""
    return Fault(_each(_servers, lambda inj, s: inj._kill(s, name_of(inj, s))),
                 _each_undo(_servers, lambda inj, s: inj._restart(s, [name_of(inj, s)])))


def _kv_global_loss(inj: Injector, p: Plan) -> None:
    """Every master's disk, then every replica's (a folded server's pop agent holds its replica: it goes
    down with it until the restore)."""
    for h in p.hosts:
        inj._wipe(h, "kv-master")
    for s in p.servers:
        inj._wipe(s, _replica(inj, s))


def _kv_back(inj: Injector, p: Plan, attempt: Attempt) -> None:
    """Masters first (empty), then the replicas, which follow them from the start."""
    for h in p.hosts:
        attempt(inj._restart, h, ["kv-master"])
    for s in p.servers:
        attempt(inj._restart, s, [_replica(inj, s)])


def _replica(inj: Injector, server: str) -> str:
    """The daemon holding ``server``'s KV replica: the replica, or the pop agent it is folded into."""
    names = {d.name for d in inj.lab.daemons.get(server, [])}
    return "kv-replica" if "kv-replica" in names else "pop-agent"


def _silence_all(inj: Injector, p: Plan) -> None:
    for s in (*p.hosts, *p.servers):  # the storage node first: its DO host's failover clock starts
        inj._silence(s, True)
    for r in p.routers:
        inj._silence(r, True, forwarding=True)


def _unsilence_all(inj: Injector, p: Plan, attempt: Attempt) -> None:
    for node in (*p.servers, *p.routers, *p.hosts):
        attempt(inj._silence, node, False)


def _unsilence(inj: Injector, node: str) -> None:
    """Delete the fault's table on ``node`` (a silence or a cut)."""
    inj._silence(node, False)


def _cut_hosts(addresses: Callable[[Injector, str], list[str]]) -> Fault:
    """On each host, drop what goes to or comes from ``addresses(inj, host)``; restore deletes the table."""
    return _on_hosts(lambda inj, h: inj._run(h, ["nft", "-f", "-"], _nft_cut(*addresses(inj, h))), _unsilence)


def _drain(inj: Injector, server: str) -> None:
    (inj.lab.node_dir(server) / "drain").write_text("anylab drain\n")


def _undrain(inj: Injector, server: str) -> None:
    (inj.lab.node_dir(server) / "drain").unlink(missing_ok=True)


def _crash_servers(inj: Injector, p: Plan) -> None:
    for s in p.servers:
        for d in reversed(inj.lab.daemons[s]):
            inj._kill(s, d.name)
    inj._links(p, up=False)


def _links_back(inj: Injector, p: Plan, attempt: Attempt) -> None:
    """Links up, routes back, and (for a server crash) every daemon of the plan's servers restarted."""
    attempt(inj._links, p, up=True)
    for s in p.servers:
        attempt(inj._restart, s, [d.name for d in inj.lab.daemons[s]])


def _clock(sign: float) -> Fault:
    """The KV master's HLC input ``sign`` × CLOCK_JUMP_S away from its wall clock; restore sets it back."""
    return _on_hosts(lambda inj, h: inj._clock(h, sign * CLOCK_JUMP_S), lambda inj, h: inj._clock(h, 0.0))


def _reshape(changes: Callable[[Shape | None], dict[str, Any]]) -> Fault:
    """Change the target link's shape (:mod:`lab.links`) by ``changes(shape before)``; restore gives it
    back the shape it had (kept by the injector). Not calibrated: the shape is known, and 2 s of
    calibration would hold the fault's caller (a soak's next fault)."""
    def inject(inj: Injector, p: Plan) -> None:
        a, _, b = p.target.partition(":")
        before = inj.lab.link_shape(a, b)
        inj.link_before[p.target] = before
        inj.lab.set_link(a, b, changes(before), calibrate=False)

    def undo(inj: Injector, p: Plan, attempt: Attempt) -> None:
        a, _, b = p.target.partition(":")
        before = inj.link_before.pop(p.target, None)
        fields = {k: v for k, v in asdict(before or Shape()).items() if k != "from_distance"}
        attempt(inj.lab.set_link, a, b, fields, False)

    return Fault(inject, undo)


def _others(inj: Injector, node: str) -> list[str]:
    """The addresses of the other regions' control plane nodes."""
    return [str(cp.address) for cp in inj.lab.topo.control_planes if cp.name != node]


def _kill_node(inj: Injector, node: str) -> None:
    """SIGKILL every daemon of ``node``, last started first (a region's control plane: its API processes
    and its etcd member; the hidden primary: its feeder and Knot)."""
    for d in reversed(inj.lab.daemons[node]):
        inj._kill(node, d.name)


def _restart_node(inj: Injector, node: str) -> None:
    """Start every daemon of ``node`` again in order (an etcd member catches up from the others)."""
    inj._restart(node, [d.name for d in inj.lab.daemons[node]])


def _dns_server(inj: Injector, node: str) -> str:
    """The name of the DNS server daemon on a provider's node (``knot`` or ``nsd``)."""
    return next(d.name for d in inj.lab.daemons[node] if d.name in ("knot", "nsd"))


def _kill_leader(inj: Injector, p: Plan) -> None:
    """SIGKILL the etcd member that leads now (asked of the members themselves); during an election,
    the one it elects (waited for up to LEADER_WAIT_S). Raises WaitTimeout if none leads by then."""
    leader = wait_for(inj.lab.etcd_leader, timeout=LEADER_WAIT_S, what="an etcd member to lead (nothing to kill)")
    inj.killed_leader[p.target] = leader
    inj._kill(leader, "etcd")


def _restart_leader(inj: Injector, p: Plan, attempt: Attempt) -> None:
    node = inj.killed_leader.pop(p.target, None)
    if node is not None:
        attempt(inj._restart, node, ["etcd"])


def _wipe_artifacts(inj: Injector, node: str) -> None:
    """Delete every artifact of the region's store; its API runs on and repairs it from the others."""
    store = Path(inj._daemon(node, "control-plane").artifacts)
    if store.parent.parent != inj.lab.node_dir(node):  # never delete outside the node's own run directory
        raise AnylabError(f"the artifact store {store} is not in the node's run directory", node=node)
    for path in store.iterdir():
        path.unlink(missing_ok=True)


def _origin_mode(mode: str) -> Fault:
    """The origin answers in ``mode`` (slow, errors); restore puts it back to normal."""
    return _on_hosts(lambda inj, h: inj._daemon(h, "origin").set_mode(mode),
                     lambda inj, h: inj._daemon(h, "origin").set_mode("normal"))


def _withdraw_region(inj: Injector, p: Plan) -> None:
    inj.lab.dns_withdraw(p.target, True)


def _put_region_back(inj: Injector, p: Plan, attempt: Attempt) -> None:
    attempt(inj.lab.dns_withdraw, p.target, False)


_SILENCE = Fault(_silence_all, _unsilence_all)

#: Scenario → how it is done and undone; its names are :data:`lab.faults.scenarios.SCENARIOS`' (a test
#: keeps the two equal: the command line reads those without loading this module).
FAULTS: dict[str, Fault] = {
    "service-crash": _kill_on_servers(lambda inj, s: inj._edge(s)),
    "drain": Fault(_each(_servers, _drain), _each_undo(_servers, _undrain)),
    "speaker-crash": _kill_on_servers(lambda _inj, _s: "exabgp"),
    "server-silent": _SILENCE,
    "server-crash": Fault(_crash_servers, _links_back),
    "link-down": Fault(lambda inj, p: inj._links(p, up=False), _links_back),
    "link-degrade": _reshape(lambda s: {"delay_ms": (s.delay_ms if s else 0.0) + DEGRADE_DELAY_MS,
                                        "jitter_ms": max(s.jitter_ms if s else 0.0, DEGRADE_JITTER_MS)}),
    "link-lossy": _reshape(lambda _s: {"loss_pct": LOSSY_PCT, "loss_burst": 1.0}),
    "pop-down": _SILENCE,
    "region-down": _SILENCE,
    "region-loss": _SILENCE,
    "pops-down": _SILENCE,
    "flap": Fault(lambda inj, p: inj._flap(p), _nothing),
    "control-down": _kill_daemon("control-plane"),
    "control-cut": _on_hosts(lambda inj, h: inj._run(h, ["nft", "-f", "-"], _nft_only(*_others(inj, h))),
                             _unsilence),
    "cp-down": _on_hosts(_kill_node, _restart_node),
    "cp-cut": _cut_hosts(_others),
    "etcd-leader-kill": Fault(_kill_leader, _restart_leader),
    "artifact-store-wipe": _on_hosts(_wipe_artifacts, lambda _inj, _h: None),
    "kv-master-crash": _kill_daemon("kv-master"),
    "do-crash": _kill_daemon("do-host"),
    "do-cut": _cut_hosts(lambda inj, _h: [str(inj.lab.topo.control.address)]),
    "storage-partition": _cut_hosts(lambda inj, h: [str(k.address) for k in inj.lab.topo.kv_masters if k.name != h]),
    "kv-master-wipe": _wipe_daemon("kv-master"),
    "do-host-wipe": _wipe_daemon("do-host"),
    "kv-global-loss": Fault(_kv_global_loss, _kv_back),
    "catastrophic": _SILENCE,
    "clock-ahead": _clock(+1.0),
    "clock-behind": _clock(-1.0),
    "origin-down": _kill_daemon("origin"),
    "origin-slow": _origin_mode("slow"),
    "origin-errors": _origin_mode("errors"),
    "dns-provider-down": _on_hosts(lambda inj, h: inj._silence(h, True), _unsilence),
    "dns-node-down": _on_hosts(lambda inj, h: inj._kill(h, _dns_server(inj, h)),
                               lambda inj, h: inj._restart(h, [_dns_server(inj, h)])),
    "dns-primary-down": _on_hosts(_kill_node, _restart_node),
    "dns-region-withdraw": Fault(_withdraw_region, _put_region_back),
    "resolver-down": _on_hosts(_kill_node, _restart_node),
}
