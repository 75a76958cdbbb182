"""The Lab: a topology brought up as namespaces, daemons and traffic, and torn down again.

    with Lab.from_file("topologies/two_pops.yaml", name="t") as lab:
        lab.catchment()                      # client → PoP, as observed now
        t = lab.withdraw("sjc")              # CLOCK_MONOTONIC time of the withdrawal
        lab.wait_shifted(["c1"], t)          # what it did to each client (ClientResult)

Everything the lab makes is named after it: run directory ``/run/anylab/<name>``, namespaces
``anylab-<name>-<node>``; every process it starts is recorded there (``pids.jsonl``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from backup.kv import keys_received
from backup.service import kv_root
from bgp.exabgp import ExaBgp
from control_plane.client import Client, ControlPlaneError, Deployed
from core import netns
from core.clock import monotonic
from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError, UsageError
from core.proc import ProcessGroup
from core.records import proc_starttime
from core.wait import wait_for
from durable import client as do_client
from kv.client import KvClient
from lab.faults.catalogue import Injector, plan
from lab.links.daemon import LinkRelay
from lab.links.plan import find
from lab.links.state import Links
from lab.record.analysis import ClientResult, client_result
from lab.record.probes import Probe, read_probes
from lab.run import dr_site
from lab.run.autoscaler import Autoscaler
from lab.run.baseline import wait_baseline, wait_platform_level_zero
from lab.run.cleanup import cleanup
from lab.run.dns import wait_dns
from lab.run.hostlimits import raise_limits
from lab.run.launchers import SERVER_PRELOAD, BackupService, ControlPlane
from lab.run.monitoring import wait_monitoring
from lab.run.observe import SessionState, observed_catchment, router_sessions
from lab.run.rundir import (
    STATE_FILE,
    check_name,
    control_plane_dirs,
    netns_prefix,
    node_index,
    read_state,
    run_dir_of,
    write_in_service,
)
from lab.run.scaling import scale_pop
from lab.run.starts import start_daemons, start_zygote, validate_all
from lab.run.wiring import daemons_of
from model.constants import BACKUP_SOCKET
from model.graph import predict_catchment
from model.load import load_topology
from model.placement import place
from model.topology import Shape, Topology
from protect import api_scale

if TYPE_CHECKING:
    from lab.run.net import Network

#: The most API processes a region's control plane runs (its first and the replicas scaling adds).
MAX_API_REPLICAS = api_scale.Config().max_replicas


class Lab:
    """One running lab. ``up()``/``down()`` or use it as a context manager."""

    def __init__(self, topo: Topology, name: str = "main") -> None:
        check_name(name)  # raises UsageError: the name becomes a path and a namespace prefix
        self.topo = topo
        self.name = name
        self.run_dir = run_dir_of(name)
        self.procs = ProcessGroup(self.run_dir)
        self.daemons: dict[str, list[Daemon]] = {}
        self.network: Network | None = None
        # Known before the namespaces exist, so daemons are made (and validated) once.
        self.netns = {n: netns.netns_path(netns_prefix(name) + n) for n in topo.node_names()}
        self.timings: dict[str, float] = {}
        self.injector = Injector(self)
        self.autoscaler: Autoscaler | None = None
        #: What ``up`` changed on the host for this lab (see lab.run.hostlimits), shown by ``anylab up``.
        self.notes: list[str] = []
        self.scaling = threading.Lock()  # a scale by hand and one by the autoscaler, one after the other
        self.links = Links(topo, self.netns, self.run_dir)

    @classmethod
    def from_file(cls, path: str | Path, name: str = "main", router_kind: str | None = None,
                  profile: Any = None, hosts: int | None = None) -> Lab:
        """A Lab for a topology file (every router made ``router_kind``, the profile ``profile``, over
        ``hosts`` hosts, if given); raises TopologyError (nothing started) on bad input."""
        return cls(load_topology(path, router_kind, profile, hosts), name)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    def node_dir(self, node: str) -> Path:
        return self.run_dir / node

    def _env(self, node: str) -> NodeEnv:
        return NodeEnv(node, self.netns[node], self.node_dir(node), self.procs)

    def all_daemons(self) -> Iterable[Daemon]:
        for ds in self.daemons.values():
            yield from ds

    def write_state(self, phase: str, **extra: Any) -> None:
        state = {"name": self.name, "topology": self.topo.name, "source": self.topo.source,
                 "spec": self.topo.spec.model_dump(mode="json"), "phase": phase, "pid": os.getpid(),
                 "starttime": proc_starttime(os.getpid()), "netns_prefix": netns_prefix(self.name),
                 "timings": self.timings, "notes": self.notes, "nodes": node_index(self.topo),
                 # The prediction is fixed for the topology; kept so that `status` need not import networkx.
                 "predicted": self.predicted(), **extra}
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.run_dir / STATE_FILE)

    def up(self, timeout: float = 90.0) -> None:
        """Validate every daemon, build the network, start everything and wait until BGP has converged
        to the predicted state and every client gets answers. On failure everything is torn down and
        the error (AnylabError) raised."""
        t0 = monotonic()
        existing = read_state(self.name)
        if existing is not None:
            raise AnylabError(f"lab '{self.name}' already exists (phase {existing.get('phase')}); "
                              f"run 'anylab down --name {self.name}' (or 'anylab down --all') first")
        if netns.names(netns_prefix(self.name)):
            raise AnylabError(f"namespaces of lab '{self.name}' are left over; run 'anylab down --name {self.name}'")
        self.run_dir.mkdir(parents=True)
        try:
            write_in_service(self.run_dir, {p.name: list(p.servers) for p in self.topo.pops})
            self.write_state("validating")
            self.daemons = daemons_of(self.topo, self._env)
            errors = validate_all(list(self.all_daemons()))
            if errors:
                raise AnylabError("configuration rejected, nothing started:\n  " + "\n  ".join(errors))
            self.timings["validated"] = monotonic() - t0
            self.notes = raise_limits(self.topo)
            self.write_state("building")
            from lab.run.net import Network  # the only place Mininet comes in

            hosts = self.topo.spec.settings.hosts
            self.network = Network(self.topo, netns_prefix(self.name), self.run_dir, self.procs,
                                   place(self.topo, hosts) if hosts > 1 else None)
            built = self.network.build()
            assert built == self.netns, "namespace paths are derived from the lab name"
            self.links.apply_kernel(relays=False)  # loss and rate limits; delay once converged (below)
            self.timings["network"] = monotonic() - t0
            self.write_state("starting")
            start_zygote(self.procs, self.run_dir, SERVER_PRELOAD)
            # Resolvers once the routes are up: one started before would find the root unreachable and
            # back off (seconds to tens of seconds) before it tries again.
            resolvers = {n.name for n in self.topo.dns.of_role("resolver")} if self.topo.dns else set()
            # Monitoring once converged (with the resolvers): a scrape of a service still starting or a PoP
            # not yet announced would page. Prometheus 2.42 scrapes new targets only after its discovery's
            # 5 s throttle (internal, not configurable): that, not the lab, is what `monitoring_ready` waits.
            monitoring = {self.topo.monitoring.name} if self.topo.monitoring is not None else set()
            start_daemons(self.daemons, set(self.daemons) - resolvers - monitoring
                          - {s.name for s in self.topo.servers if s.standby}
                          - set(self.topo.dr_site.nodes() if self.topo.dr_site is not None else ()))
            self.timings["daemons_ready"] = monotonic() - t0
            wait_baseline(self.topo, self.run_dir, deadline=t0 + timeout)
            self.timings["converged"] = monotonic() - t0
            if resolvers | monitoring:
                start_daemons(self.daemons, resolvers | monitoring)
            # Delay only once converged: every process starting at once is when a 2-core box has the least
            # CPU to spare, and the relays (real-time, ≈ 40–80 µs of CPU a packet) would take it from the
            # routers and daemons starting up. The sessions then carry the delay without flapping (it is
            # far below any hold time).
            relayed = self.links.relay_nodes()
            if relayed:
                self.links.apply_kernel(relayed)
                wait_baseline(self.topo, self.run_dir, deadline=t0 + timeout)
                self.timings["links_delayed"] = monotonic() - t0
            self.wait_control_planes(timeout=max(1.0, t0 + timeout - monotonic()))
            self.timings["control_ready"] = monotonic() - t0
            if self.topo.dns is not None:
                wait_dns(self.topo, self.daemons, self.netns, timeout=max(1.0, t0 + timeout - monotonic()))
                self.timings["dns_ready"] = monotonic() - t0
            self.wait_do_leases(timeout=max(1.0, t0 + timeout - monotonic()))
            wait_platform_level_zero(self.topo, self.run_dir, deadline=t0 + timeout)
            self.timings["platform_ready"] = monotonic() - t0
            if monitoring:
                wait_monitoring(self.topo, self.netns, timeout=max(1.0, t0 + timeout - monotonic()))
                self.timings["monitoring_ready"] = monotonic() - t0
            if self.links.shaped():
                self.links.calibrate()
                self.timings["links_calibrated"] = monotonic() - t0
            self.autoscaler = Autoscaler(self)
            self.autoscaler.start()
            self.write_state("up")
        except BaseException as exc:
            try:
                self.down()
            except AnylabError as teardown:
                exc.add_note(str(teardown))  # keep the reason up failed in front
            raise

    def down(self) -> None:
        """Stop everything in reverse order, remove namespaces and the run directory; keeps going
        past failures and raises one AnylabError listing them all."""
        errors: list[str] = []
        if self.autoscaler is not None:
            self.autoscaler.close()
            self.autoscaler = None
        self.procs.stop_all(errors)
        if self.network is not None:
            self.network.stop(errors)
            self.network = None
        # Namespaces, run files, and anything recorded that the steps above missed.
        errors += cleanup(self.name)
        self.daemons.clear()
        if errors:
            raise AnylabError(f"lab '{self.name}' teardown: " + "; ".join(errors))

    # -- observing ---------------------------------------------------------------------------

    def sessions(self) -> list[SessionState]:
        return router_sessions(self.topo, self.run_dir)

    def catchment(self, after: float | None = None) -> dict[str, str | None]:
        """Client → PoP of its most recent answer (sent after ``after`` if given)."""
        return observed_catchment(self.topo, self.run_dir, after)

    def predicted(self) -> dict[str, str]:
        return predict_catchment(self.topo)

    def probes(self, client: str) -> list[Probe]:
        return read_probes(self.node_dir(client) / "probes.jsonl")

    # -- acting ------------------------------------------------------------------------------

    def exabgp(self, server: str) -> ExaBgp:
        for d in self.daemons.get(server, []):
            if isinstance(d, ExaBgp):
                return d
        raise AnylabError("no such PoP server", node=server)

    def set_announced(self, pop: str, announced: bool) -> float:
        """Announce or withdraw the PoP's anycast routes on all its servers; returns the CLOCK_MONOTONIC
        time just before the first API command was sent. Raises AnylabError."""
        servers = self.topo.pop(pop).servers
        t = monotonic()
        for s in servers:
            self.exabgp(s).api("announce" if announced else "withdraw")
        return t

    def scale(self, pop: str, servers: int, timeout: float = 60.0) -> dict[str, Any]:
        """Bring ``pop`` to ``servers`` servers in service: start the processes of its next standby
        servers (they announce the prefix; ECMP spreads new flows onto them) or stop its last ones (the
        health agent withdraws first). Returns what changed and, on the way up, the seconds from the
        start until the processes were ready, the sessions Established and every upstream router's FIB
        had the new servers as next hops (on the way down: until the FIB had dropped them). Raises
        UsageError outside 1 … max_servers, AnylabError/WaitTimeout when a step fails."""
        with self.scaling:
            return scale_pop(self.topo, self.run_dir, self.netns, self.daemons, self.control_plane_api(), pop,
                             servers, timeout)

    def dr_failover(self, at: float | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Bring the DR region's standby platform up from the DR copy as of ``at`` (None: now):
        :func:`lab.run.dr_site.failover`. Raises UsageError, KvError, AnylabError/WaitTimeout."""
        with self.scaling:
            return dr_site.failover(self.topo, self.run_dir, self.daemons, self.backup_dr_api(timeout=120.0), at,
                                    timeout)

    def dr_standdown(self) -> dict[str, Any]:
        """Take the DR region's standby platform out of service (:func:`lab.run.dr_site.standdown`)."""
        with self.scaling:
            return dr_site.standdown(self.topo, self.run_dir, self.daemons)

    def set_link(self, a: str, b: str, changes: dict[str, Any], calibrate: bool = True) -> dict[str, Any]:
        """Change the link between nodes ``a`` and ``b`` now (:meth:`lab.links.state.Links.change`);
        raises UsageError or AnylabError."""
        return self.links.change(a, b, changes, self.relay_of, calibrate)

    def link_shape(self, a: str, b: str) -> Shape | None:
        """The shape of the link between ``a`` and ``b`` now; raises UsageError if there is none."""
        return self.links.shapes()[find(self.links.all, a, b).key]

    def relay_of(self, router: str) -> LinkRelay:
        """The router's link relay, started now if it has none yet; raises AnylabError."""
        for d in self.daemons.get(router, []):
            if isinstance(d, LinkRelay):
                return d
        relay = LinkRelay(self._env(router), {"seed": len(self.daemons), "queues": []})
        relay.write_config()
        relay.validate()
        relay.start()
        relay.wait_ready()
        self.daemons.setdefault(router, []).insert(0, relay)
        return relay

    def fail(self, scenario: str, target: str, count: int = 3, period: float = 1.0) -> float:
        """Inject a fault from the catalogue (:mod:`lab.faults.catalogue`); returns its CLOCK_MONOTONIC time.
        Raises UsageError for a bad request (nothing touched), AnylabError if injecting fails."""
        return self.injector.fail(plan(self.topo, scenario, target, count, period))

    def restore(self, target: str) -> float:
        """Undo the fault on ``target``; returns when the undo began. Raises UsageError if not failed."""
        return self.injector.restore(target)

    def control_plane_api(self, timeout: float = 30.0) -> Client:
        """The control plane's API, as the operator (admin token)."""
        return Client(control_plane_dirs(self.topo, self.run_dir), timeout=timeout)

    def control_planes(self) -> dict[str, dict[str, Any]]:
        """Every region's control plane status that answers (node → ``/v1/status``)."""
        return self.control_plane_api(timeout=2.0).each("GET", "/v1/status")

    def api_latency(self, region: str) -> api_scale.Sample:
        """The region's control plane API now: its processes, and the worst p99 of their latency windows
        with the answers counted over all of them. Raises AnylabError when none answers."""
        node = self.topo.control_plane_of(region).name
        apis = [d for d in self.daemons.get(node, []) if isinstance(d, ControlPlane)]
        p99s, count, answered = [], 0, 0
        for d in apis:
            try:
                # A loaded API answers slowly: that is what is measured, not a reason to skip it.
                latency = d.client(timeout=10.0).call_one(d.env.dir, "GET", "/v1/status", socket=d.socket)["latency"]
            except ControlPlaneError:
                continue
            answered += 1
            count += int(latency["count"])
            if latency["p99_ms"] is not None:
                p99s.append(float(latency["p99_ms"]))
        if not answered:
            raise AnylabError(f"no control plane API answers in region {region}")
        return api_scale.Sample(monotonic(), len(apis), max(p99s) if p99s else None, count)

    def scale_control_plane(self, region: str, replicas: int, timeout: float = 30.0) -> dict[str, Any]:
        """Run ``replicas`` API processes in the region's control plane (more only: the design names no rule
        to remove them); each new one started and ready. Raises UsageError for a bad count, DaemonError or
        WaitTimeout if one does not start."""
        node = self.topo.control_plane_of(region).name
        apis = [d for d in self.daemons[node] if isinstance(d, ControlPlane)]
        if not len(apis) <= replicas <= MAX_API_REPLICAS:
            raise UsageError(f"region {region} runs {len(apis)} control plane API process(es); give "
                             f"{len(apis)}..{MAX_API_REPLICAS}")
        started = []
        for index in range(len(apis), replicas):
            d = apis[0].replica_of(index)
            d.write_config()
            d.start()
            self.daemons[node].append(d)
            d.wait_ready(timeout)
            started.append(d.name)
        return {"region": region, "replicas": replicas, "started": started}

    def dns_withdraw(self, region: str, withdrawn: bool) -> dict[str, Any]:
        """Pull ``region``'s PoP names from the platform's zone (``withdrawn``) or put them back, through
        the control plane; returns its reply (the generation the feeder loads next). Raises
        ControlPlaneError (an AnylabError) with the API's reason."""
        reply: dict[str, Any] = self.control_plane_api().call("POST", f"/v1/dns/regions/{region}",
                                                              {"withdrawn": withdrawn})
        return reply

    def backup_api(self, timeout: float = 120.0) -> KvClient:
        """The backup service's operator socket; raises AnylabError when the topology has no backups."""
        if self.topo.backup is None:
            raise AnylabError(f"topology {self.topo.name} has no backups (no 'backup' section)")
        return KvClient(self.node_dir(self.topo.backup.name) / BACKUP_SOCKET, timeout=timeout)

    def backup_dr_api(self, timeout: float = 30.0) -> KvClient:
        """The DR region's backup copy's operator socket; raises AnylabError when the topology has none."""
        if self.topo.backup_dr is None:
            raise AnylabError(f"topology {self.topo.name} has no DR copy of its backups (no 'backup.dr_router')")
        return KvClient(self.node_dir(self.topo.backup_dr.name) / BACKUP_SOCKET, timeout=timeout)

    def backup_received(self, ns: str, by: float) -> set[str]:
        """The keys of KV namespace ``ns`` the backup's WAL had received by ``by`` (CLOCK_MONOTONIC): what a
        restore as of ``by`` can bring back. Raises AnylabError when the topology has no backups."""
        self.backup_api()  # the check and its error
        assert self.topo.backup is not None
        service = next(d for d in self.daemons[self.topo.backup.name] if isinstance(d, BackupService))
        return keys_received(kv_root(service.data_dir), ns, by)

    def wait_backup_current(self, timeout: float = 15.0) -> float:
        """Wait until the backup service holds what the platform has now: every DO object its owner serves
        up to the owner's sequence number, and etcd up to every control plane's revision; the time it did.
        Raises AnylabError without backups, WaitTimeout naming what it lacked."""
        api = self.backup_api()
        want_cp = max((s.get("revision", 0) for s in self.control_planes().values()), default=0)
        want_do = {k: int(o["seq"]) for km in self.topo.kv_masters
                   for k, o in self.do_host(km.region)["objects"].items() if o["seq"]}
        last: dict[str, Any] = {}

        def current() -> bool:
            last.update(api.call("GET", "/v1/status"))
            held = last["do"]["objects"]
            behind = {k for k, seq in want_do.items() if k not in held or held[k][1] < seq}
            last["behind"] = sorted(behind)
            return not behind and (last["control"] is None or last["control"]["seen"] >= want_cp)

        wait_for(current, timeout=timeout, what="the backup service holding the platform's current state",
                 interval=0.1, describe=lambda: f"objects behind {last.get('behind')}, etcd seen "
                                                f"{(last.get('control') or {}).get('seen')} of {want_cp}")
        return monotonic()

    def wait_dr_copy_current(self, timeout: float = 15.0) -> float:
        """Wait until the DR copy holds what the platform has now (:meth:`wait_backup_current`, then two
        rounds of copying ending after it: the second began after it); the time it did. Raises
        AnylabError without a DR copy, WaitTimeout."""
        t = self.wait_backup_current(timeout=timeout)
        dr = self.backup_dr_api()
        ends: list[float] = []

        def rounds() -> bool:
            last = dr.call("GET", "/v1/status")["last_sync"] or 0.0
            if last > t and (not ends or last > ends[-1]):
                ends.append(last)
            return len(ends) >= 2

        wait_for(rounds, timeout=timeout, what="two rounds of the DR copy after the backup was current",
                 interval=0.1)
        return monotonic()

    def restore_backup(self, what: str, at: float | None = None) -> dict[str, Any]:
        """Restore ``what`` (``kv``, ``do``, ``control``: :mod:`backup.service`) as the backup knew it at ``at``
        (CLOCK_MONOTONIC; None: now); the service's account of it. Raises KvError (an AnylabError) with the
        service's reason."""
        reply: dict[str, Any] = self.backup_api().call("POST", f"/v1/restore/{what}", {"at": at})
        return reply

    def etcd_leader(self) -> str | None:
        """The control plane node whose etcd member leads now, as the members that answer say (None: none
        says it leads)."""
        for node, status in self.control_planes().items():
            if status.get("member", {}).get("is_leader"):
                return node
        return None

    def wait_control_planes(self, timeout: float = 30.0, nodes: Iterable[str] | None = None) -> dict[str, Any]:
        """Wait until the control planes of ``nodes`` (default: every region's) serve — their state loaded
        from etcd, its quorum in reach; their statuses. Raises WaitTimeout with what each last said."""
        want = set(nodes) if nodes is not None else {cp.name for cp in self.topo.control_planes}
        seen: dict[str, Any] = {}

        def serving() -> bool:
            seen.clear()
            seen.update(self.control_planes())
            return all(seen.get(n, {}).get("serving") for n in want)

        wait_for(serving, timeout=timeout, what="every region's control plane to serve", interval=0.1,
                 describe=lambda: "; ".join(f"{n}: " + (f"serving={seen[n]['serving']} ({seen[n]['last_error']})"
                                                        if n in seen else "no answer") for n in sorted(want)))
        return seen

    def deploy(self, name: str, host: str, code: str, bindings: dict[str, Any] | None = None,
               path_prefix: str = "/", pops: list[str] | None = None, regions: list[str] | None = None,
               timeout: float = 30.0, **options: Any) -> Deployed:
        """Upload a worker to the control plane, deploy it (to ``pops``/``regions``, else everywhere) and
        wait until every PoP server runs it. Raises ControlPlaneError (the API's reason: bad code, bad
        target, control plane down), WaitTimeout naming the servers that did not switch."""
        upload = {"code": code, "host": host, "path_prefix": path_prefix, "bindings": bindings or {}, **options}
        return self.control_plane_api().release(name, upload, pops, regions, timeout)

    def rollback(self, name: str, timeout: float = 30.0) -> Deployed:
        """Roll worker ``name`` back to its previous placement and wait until every server runs it."""
        return self.control_plane_api().roll_back(name, timeout)

    def do_directory(self) -> dict[str, Any]:
        """The Durable Object directory's listing (regions, objects). Raises AnylabError."""
        return do_client.directory(self.node_dir(self.topo.control.name))

    def do_host(self, region: str) -> dict[str, Any]:
        """Region ``region``'s DO host status (lease, owned objects, lag). Raises AnylabError."""
        return do_client.host(self.node_dir(self.topo.kv_master_of(region).name))

    def wait_do_leases(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every region's DO host holds a lease. Raises WaitTimeout."""
        return do_client.wait_leases(self.node_dir(self.topo.control.name), timeout)

    def withdraw(self, pop: str) -> float:
        return self.set_announced(pop, False)

    def announce(self, pop: str) -> float:
        return self.set_announced(pop, True)

    def wait_shifted(self, clients: Iterable[str], t_fault: float, timeout: float = 30.0) -> dict[str, ClientResult]:
        """Wait until each client got an answer from a PoP other than the one it used at ``t_fault``,
        then return what the fault did to each (:func:`lab.record.analysis.client_result` by PoP).
        Raises WaitTimeout naming the clients that did not move."""
        clients = list(clients)
        interval = 1.0 / self.topo.spec.settings.probe_rate_hz
        result: dict[str, ClientResult] = {}

        def probe() -> bool:
            for c in clients:
                result[c] = client_result(self.probes(c), t_fault, interval, by="pop")
            return all(r.shift_s is not None for r in result.values())

        wait_for(probe, timeout=timeout, what="clients to shift", interval=0.05,
                 describe=lambda: ", ".join(f"{c}: still {r.from_pop}" for c, r in result.items()
                                            if r.shift_s is None))
        return result
