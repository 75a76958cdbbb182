"""What runs where: every node's daemons for a topology, in the order they are started on the node (each
waits only for what it names as a dependency). Routers get their kind's daemons (:mod:`bgp.routers`)
and, if they own delayed links, a link relay first (:mod:`lab.links`); the control node the DO directory,
each region's control plane node its etcd member and control plane API, each region's storage node its
KV master and DO host, an origin node the origin, the backup node the backup service, the DR backup node its copy,
a PoP server its edge worker, ExaBGP, KV replica, BFD and health agent
(or, ``server_process: folded``, ExaBGP and one pop agent), a DNS node its DNS daemons (:mod:`lab.run.dns`),
a client its prober, the monitoring node Prometheus, Alertmanager and the alert receiver
(:mod:`lab.run.monitoring`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from bgp import routers as router_kinds
from bgp.bird import BirdBfd
from bgp.exabgp import ExaBgp
from core.daemon import Daemon, NodeEnv
from core.peer_auth import PeerKeys
from lab.links.daemon import LinkRelay
from lab.links.plan import links_of, relay_config
from lab.run.dns import dns_daemons
from lab.run.etcd import EtcdMember, make_tls
from lab.run.launchers import (
    BackupDr,
    BackupService,
    ControlPlane,
    DoDirectory,
    DoHost,
    EdgeWorker,
    HealthAgent,
    KvMaster,
    KvReplica,
    Origin,
    PopAgent,
    Prober,
)
from lab.run.monitoring import monitoring_daemons
from model.graph import nearest_first, spill_peers
from model.topology import ServiceNode, Topology


def daemons_of(topo: Topology, env_of: Callable[[str], NodeEnv]) -> dict[str, list[Daemon]]:
    """Node → its daemons (made, not started; their node directories are created). ``env_of`` gives a
    node's environment (namespace, directory, process group)."""
    daemons: dict[str, list[Daemon]] = {}
    t = topo.spec.settings
    links = links_of(topo)
    shapes = {lk.key: lk.shape for lk in links}
    for i, r in enumerate(topo.routers):
        daemons[r.name] = router_kinds.daemons_of(env_of(r.name), r)
        config = relay_config(r.name, links, shapes, seed=i)
        if config["queues"]:  # first: its queues are bound before the router's sessions start
            env_of(r.name).dir.mkdir(parents=True, exist_ok=True)
            daemons[r.name].insert(0, LinkRelay(env_of(r.name), config))
    control = topo.control
    env_of(control.name).dir.mkdir(parents=True, exist_ok=True)
    keys = PeerKeys.make()  # this lab's: its internal services take only each other's signed requests
    daemons[control.name] = [DoDirectory(env_of(control.name), control, topo.kv_masters, t, keys)]
    admin_token = secrets.token_urlsafe(24)  # the operator's, the same in every region
    cluster_token = f"anylab-{secrets.token_hex(8)}"  # members of another lab's cluster never join this one
    cps = topo.control_planes
    bk = topo.backup
    # The backup service follows etcd as a client: a certificate of its own from the lab's CA.
    site = topo.dr_site
    # The DR copy restores into the standby control plane's etcd: a certificate of its own too.
    dr_tls = ([(site.control.name, str(site.control.address))] + ([(topo.backup_dr.name, str(topo.backup_dr.address))]
              if topo.backup_dr is not None else [])) if site is not None else []
    tls = make_tls([*((cp.name, str(cp.address)) for cp in cps),
                    *(((bk.name, str(bk.address)),) if bk is not None else ()), *dr_tls]) if cps else {}
    for cp in cps:
        env_of(cp.name).dir.mkdir(parents=True, exist_ok=True)
        peers = tuple(nearest_first(topo, cp.router, [p for p in cps if p.name != cp.name]))
        daemons[cp.name] = [EtcdMember(env_of(cp.name), cp, cps, cluster_token, tls[cp.name]),
                            ControlPlane(env_of(cp.name), cp, topo.pops, keys, peers, len(cps), admin_token)]

    def controls_of(region: str, router: str) -> tuple[ServiceNode, ...]:
        """The regions' control planes for a node of ``region`` on ``router``: its region's first."""
        return tuple(sorted(nearest_first(topo, router, cps), key=lambda c: c.region != region))

    if site is not None:  # the DR region's standby platform: a cluster, a master of its own (started by failover)
        for node in (site.control, site.storage):
            env_of(node.name).dir.mkdir(parents=True, exist_ok=True)
        daemons[site.control.name] = [
            EtcdMember(env_of(site.control.name), site.control, (site.control,), f"{cluster_token}-dr",
                       tls[site.control.name]),
            ControlPlane(env_of(site.control.name), site.control, (site.pop,), keys, (), 1, admin_token)]
        daemons[site.storage.name] = [KvMaster(env_of(site.storage.name), site.storage, (), keys)]

    for km in topo.kv_masters:
        env_of(km.name).dir.mkdir(parents=True, exist_ok=True)
        peers = tuple(p for p in topo.kv_masters if p.name != km.name)
        daemons[km.name] = [KvMaster(env_of(km.name), km, peers, keys),
                            DoHost(env_of(km.name), km, control, keys, t, controls_of(km.region, km.router))]
    for o in topo.origins:
        env_of(o.name).dir.mkdir(parents=True, exist_ok=True)
        daemons[o.name] = [Origin(env_of(o.name), o)]
    for s in topo.all_servers():
        env = env_of(s.name)
        env.dir.mkdir(parents=True, exist_ok=True)
        share = t.account_limits.share(sum(1 for x in topo.all_servers() if x.pop == s.pop))
        # A DR server knows only its region's control plane and master (the others are what it stands in for).
        at_dr = site is not None and s.name in site.pop.servers
        edge = EdgeWorker(env, s, t.probe_port, control,
                          (site.control,) if site is not None and at_dr else controls_of(s.region, s.neighbors[0].node),
                          keys, topo.origins,
                          {k: b.model_dump() for k, b in t.breakers.items()},
                          [] if at_dr else spill_peers(topo, s.name, t.spillover_pops),
                          t.server_capacity_rps, t.spillover_threshold, share)
        kv = KvReplica(env, s, (site.storage,) if site is not None and at_dr else topo.kv_masters,
                       t.kv_stale_after_s, keys, share, t.kv_poll_s)
        if t.server_process == "folded":
            daemons[s.name] = [ExaBgp(env, s), PopAgent(env, edge, kv, s.health_agent == "anylab")]
        else:
            daemons[s.name] = [edge, ExaBgp(env, s), kv]
        if any(n.profile.bfd for n in s.neighbors):
            daemons[s.name].append(BirdBfd(env, s))
        if s.health_agent == "anylab" and t.server_process == "split":
            daemons[s.name].append(HealthAgent(env, s))
    for d in topo.dns.nodes if topo.dns else ():
        env_of(d.name).dir.mkdir(parents=True, exist_ok=True)
    daemons.update(dns_daemons(topo, env_of, keys))
    if bk is not None:
        env_of(bk.name).dir.mkdir(parents=True, exist_ok=True)
        assert topo.spec.backup is not None
        daemons[bk.name] = [BackupService(env_of(bk.name), bk, topo.kv_masters, keys, topo.spec.backup, cps,
                                          tls.get(bk.name))]
        if topo.backup_dr is not None:
            dr = topo.backup_dr
            env_of(dr.name).dir.mkdir(parents=True, exist_ok=True)
            daemons[dr.name] = [BackupDr(env_of(dr.name), dr, bk, keys, topo.spec.backup, site, tls.get(dr.name))]
    if topo.monitoring is not None:  # the token Prometheus scrapes with, given to every service it scrapes
        token = secrets.token_urlsafe(24)
        scraped = (ControlPlane, KvMaster, DoHost, DoDirectory, EdgeWorker, BackupService, BackupDr)
        for node_daemons in daemons.values():
            for daemon in node_daemons:
                for part in (daemon.edge,) if isinstance(daemon, PopAgent) else (daemon,):
                    if isinstance(part, scraped):
                        part.metrics_token = token
        daemons.update(monitoring_daemons(topo, env_of, token))
    target = str(topo.anycast[0].network_address)
    for c in topo.clients:
        env_of(c.name).dir.mkdir(parents=True, exist_ok=True)
        daemons[c.name] = [Prober(env_of(c.name), c, target, t.probe_rate_hz, t.probe_port, t.probe_idle_hz)]
    return daemons
