"""The Lab: a topology brought up as namespaces, daemons and traffic, and torn down again.

    with Lab.from_file("topologies/two_pops.yaml", name="t") as lab:
        lab.catchment()                      # client → PoP, as observed now
        t = lab.withdraw("sjc")              # CLOCK_MONOTONIC time of the withdrawal
        lab.wait_shifted(["c1"], t)          # per-client Shift

Everything the lab makes is named after it: run directory ``/run/anylab/<name>``, namespaces
``anylab-<name>-<node>``; every process it starts is recorded there (``pids.jsonl``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from bgp import routers as router_kinds
from bgp.bird import BirdBfd
from bgp.exabgp import ExaBgp
from control_plane.client import Client, Deployed
from core import netns
from core.clock import monotonic
from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError, WaitTimeout
from core.proc import ProcessGroup, recorded_procs, stop_many
from core.records import is_same_process, proc_starttime
from core.wait import socket_accepts, wait_for
from durable import client as durable_ops
from lab.faults.catalogue import Injector, plan
from lab.record.probes import Probe, Shift, last_answer, read_probes, shift_after
from lab.run.autoscaler import Autoscaler
from lab.run.hostlimits import raise_limits
from lab.run.launchers import (
    SERVER_PRELOAD,
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
from model.graph import predict_catchment, predict_routes, spill_peers
from model.load import build_topology, load_topology
from model.placement import place
from model.topology import Router, Topology

if TYPE_CHECKING:
    from lab.run.net import Network

RUN_ROOT = Path(os.environ.get("ANYLAB_RUN_ROOT", "/run/anylab"))
NETNS_PREFIX = "anylab-"
STATE_FILE = "state.json"
#: PoP → its servers in service now (``anylab scale`` changes it); absent: the topology's ``servers``.
IN_SERVICE_FILE = "in-service.json"
LAB_NAME_RE = re.compile(r"^[a-z0-9]{1,16}$")



def run_dir_of(name: str) -> Path:
    return RUN_ROOT / name


def netns_prefix(name: str) -> str:
    return f"{NETNS_PREFIX}{name}-"


@dataclass(frozen=True)
class SessionState:
    router: str
    up: int
    total: int
    down: tuple[str, ...]


def validate_all(daemons: list[Daemon]) -> list[str]:
    """Write every daemon's config, then dry-run them: a class with a batch check (ExaBGP's) checks all
    of its daemons in one run, the others each on its own, in parallel (each is a subprocess). Returns
    the errors, every one of them."""
    errors: list[str] = []
    by_class: dict[type[Daemon], list[Daemon]] = {}
    for d in daemons:
        try:
            d.write_config()
        except AnylabError as exc:
            errors.append(str(exc))
            continue
        by_class.setdefault(type(d), []).append(d)
    single: list[Daemon] = []
    for cls, group in by_class.items():
        batch = cls.validate_batch(group) if len(group) > 1 else None
        if batch is None:
            single += group
        else:
            errors += batch

    def one(d: Daemon) -> str | None:
        try:
            d.validate()
        except AnylabError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return errors + [e for e in pool.map(one, single) if e]


class Lab:
    """One running lab. ``up()``/``down()`` or use it as a context manager."""

    def __init__(self, topo: Topology, name: str = "main") -> None:
        if not LAB_NAME_RE.match(name):
            # No dashes: the namespace prefix "anylab-<name>-" must not match another lab's.
            raise AnylabError(f"bad lab name {name!r}: use 1 to 16 lower-case letters and digits")
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
        self.control_plane: ControlPlane | None = None
        self.autoscaler: Autoscaler | None = None
        #: What ``up`` changed on the host for this lab (see lab.run.hostlimits), shown by ``anylab up``.
        self.notes: list[str] = []
        self.scaling = threading.Lock()  # a scale by hand and one by the autoscaler, one after the other

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

    def _make_daemons(self) -> None:
        t = self.topo.spec.settings
        for r in self.topo.routers:
            self.daemons[r.name] = router_kinds.daemons_of(self._env(r.name), r)
        control = self.topo.control
        self.node_dir(control.name).mkdir(parents=True, exist_ok=True)
        self.control_plane = ControlPlane(self._env(control.name), control, self.topo.pops)
        self.daemons[control.name] = [self.control_plane,
                                      DoDirectory(self._env(control.name), control, self.topo.kv_masters, t)]
        pop_token = self.control_plane.token_files["pop"]
        for km in self.topo.kv_masters:
            self.node_dir(km.name).mkdir(parents=True, exist_ok=True)
            peers = tuple(p for p in self.topo.kv_masters if p.name != km.name)
            self.daemons[km.name] = [KvMaster(self._env(km.name), km, peers),
                                     DoHost(self._env(km.name), km, control, pop_token, t)]
        for o in self.topo.origins:
            self.node_dir(o.name).mkdir(parents=True, exist_ok=True)
            self.daemons[o.name] = [Origin(self._env(o.name), o)]
        for s in self.topo.servers:
            self.node_dir(s.name).mkdir(parents=True, exist_ok=True)
            env = self._env(s.name)
            share = t.account_limits.share(sum(1 for x in self.topo.servers if x.pop == s.pop))
            edge = EdgeWorker(env, s, t.probe_port, control, pop_token, self.topo.origins,
                              {k: b.model_dump() for k, b in t.breakers.items()},
                              spill_peers(self.topo, s.name, t.spillover_pops),
                              t.server_capacity_rps, t.spillover_threshold, share)
            kv = KvReplica(env, s, self.topo.kv_masters, t.kv_stale_after_s, share, t.kv_poll_s)
            if t.server_process == "folded":
                self.daemons[s.name] = [ExaBgp(env, s), PopAgent(env, edge, kv, s.health_agent == "anylab")]
            else:
                self.daemons[s.name] = [edge, ExaBgp(env, s), kv]
            if any(n.profile.bfd for n in s.neighbors):
                self.daemons[s.name].append(BirdBfd(env, s))
            if s.health_agent == "anylab" and t.server_process == "split":
                self.daemons[s.name].append(HealthAgent(env, s))
        target = str(self.topo.anycast[0].network_address)
        for c in self.topo.clients:
            self.node_dir(c.name).mkdir(parents=True, exist_ok=True)
            self.daemons[c.name] = [Prober(self._env(c.name), c, target, t.probe_rate_hz, t.probe_port,
                                           t.probe_idle_hz)]

    def all_daemons(self) -> Iterable[Daemon]:
        for ds in self.daemons.values():
            yield from ds

    def write_state(self, phase: str, **extra: Any) -> None:
        state = {"name": self.name, "topology": self.topo.name, "source": self.topo.source,
                 "spec": self.topo.spec.model_dump(mode="json"), "phase": phase, "pid": os.getpid(),
                 "starttime": proc_starttime(os.getpid()), "netns_prefix": netns_prefix(self.name),
                 "timings": self.timings, "notes": self.notes, **extra}
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
            raise AnylabError(f"namespaces of lab '{self.name}' are left over; run 'anylab down --all'")
        self.run_dir.mkdir(parents=True)
        try:
            self._write_in_service({p.name: list(p.servers) for p in self.topo.pops})
            self.write_state("validating")
            self._make_daemons()
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
            self.timings["network"] = monotonic() - t0
            self.write_state("starting")
            self._start_zygote()
            self._start_daemons()
            self.timings["daemons_ready"] = monotonic() - t0
            self.wait_converged(deadline=t0 + timeout)
            self.timings["converged"] = monotonic() - t0
            self.wait_do_leases(timeout=max(1.0, t0 + timeout - monotonic()))
            self.autoscaler = Autoscaler(self)
            self.autoscaler.start()
            self.write_state("up")
        except BaseException as exc:
            try:
                self.down()
            except AnylabError as teardown:
                exc.add_note(str(teardown))  # keep the reason up failed in front
            raise

    def _start_zygote(self) -> None:
        """Start the fork server the PoP servers' Python daemons come from (:mod:`core.zygote`) and wait
        until it accepts requests; raises WaitTimeout with its output."""
        sock, log = self.run_dir / "zygote.sock", self.run_dir / "zygote.out"
        proc = self.procs.spawn([sys.executable, "-m", "core.zygote", "--socket", str(sock),
                                 "--preload", ",".join(SERVER_PRELOAD)], node="lab",
                                name="zygote", log=log)

        def accepting() -> bool:
            if not proc.alive():
                raise AnylabError(f"the zygote exited: {log.read_text(errors='replace')[-500:]}", daemon="zygote")
            return socket_accepts(sock)

        wait_for(accepting, timeout=30.0, what="the zygote's socket", daemon="zygote",
                 describe=lambda: log.read_text(errors="replace")[-300:] if log.exists() else "(no output)")
        self.procs.zygote = sock

    def _start_daemons(self, nodes: Iterable[str] | None = None) -> None:
        """Start every daemon of ``nodes`` (by default every node but the standby servers), each as soon
        as the daemons it depends on, on its own node, are ready — one server's health agent does not
        wait for the other 299 servers' edge workers. Readiness is probed round-robin over everything
        started; a daemon's deadline is its ``ready_timeout`` plus 50 ms for every daemon started before
        it in the same run (they share the CPU: 1 500 daemons start at once at 300 PoPs).
        Raises DaemonError (a daemon died), WaitTimeout (one was not ready in time) or AnylabError (a
        dependency cycle)."""
        standby = {s.name for s in self.topo.servers if s.standby}
        chosen = set(nodes) if nodes is not None else set(self.daemons) - standby
        pending = {(node, d.name): d for node, ds in self.daemons.items() if node in chosen for d in ds}
        starting: dict[tuple[str, str], tuple[Daemon, float]] = {}
        done: set[tuple[str, str]] = set()
        count = 0
        while pending or starting:
            for key, d in [(k, d) for k, d in pending.items() if all((k[0], dep) in done for dep in d.dependencies)]:
                d.start()
                count += 1
                starting[key] = (d, monotonic() + d.ready_timeout + 0.05 * count)
                del pending[key]
            if not starting:
                raise AnylabError(f"dependency cycle among {sorted(pending)}")
            ready = [key for key, (d, _) in starting.items() if d.probe_ready()]
            for key in ready:
                done.add(key)
                del starting[key]
            late = [(key, d) for key, (d, deadline) in starting.items() if monotonic() > deadline]
            if late:
                key, d = late[0]
                raise WaitTimeout(f"not ready in time ({len(late)} daemons late); last output: {d.log_tail()}",
                                  node=key[0], daemon=key[1])
            if not ready and starting:
                time.sleep(0.02)  # the probing interval: nothing became ready in this pass

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

    def wait_converged(self, deadline: float) -> None:
        """Wait until every session is Established, every router's best path to every anycast prefix
        has the predicted AS path, and every client has an answer sent after that. Raises WaitTimeout
        naming what is still missing."""
        predicted = {p: predict_routes(self.topo, p) for p in self.topo.anycast}
        missing: list[str] = []

        def wrong(r: Router) -> list[str]:
            out = []
            for prefix, routes in predicted.items():
                route = routes[r.name]
                want = route.as_path if route else None
                got = router_kinds.best_as_path(self.node_dir(r.name), r, prefix)
                if want != got:
                    out.append(f"{r.name}: {prefix} via {got}, predicted {want}")
            return out

        laggards: list[Router] = []

        def bgp_done() -> bool:
            # Each question is a vtysh or birdc run per router (tens of ms of CPU for FRR): while sessions
            # are down, paths are not asked; while the last round's laggards are still wrong, the others
            # are not asked again. Only a round that asks every router can end the wait.
            missing.clear()
            for s in self.sessions():
                if s.up < s.total:
                    missing.append(f"{s.router}: sessions down {', '.join(s.down)}")
            if missing:
                return False
            if laggards:
                missing.extend(p for problems in _per_router(wrong, laggards) for p in problems)
                if missing:
                    return False
            results = _per_router(wrong, self.topo.routers)
            laggards[:] = [r for r, problems in zip(self.topo.routers, results, strict=True) if problems]
            missing.extend(p for problems in results for p in problems)
            return not missing

        wait_for(bgp_done, timeout=max(1.0, deadline - monotonic()), what="BGP convergence",
                 interval=0.05, describe=lambda: "; ".join(missing[:6]))
        t_bgp = monotonic()

        def clients_answered() -> bool:
            missing[:] = [c for c, pop in self.catchment(after=t_bgp).items() if pop is None]
            return not missing

        wait_for(clients_answered, timeout=max(1.0, deadline - monotonic()), what="answers at every client",
                 interval=0.02, describe=lambda: "no answer yet at " + ", ".join(missing))

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

    def _write_in_service(self, serving: dict[str, list[str]]) -> None:
        tmp = self.run_dir / (IN_SERVICE_FILE + ".tmp")
        tmp.write_text(json.dumps(serving))
        tmp.replace(self.run_dir / IN_SERVICE_FILE)

    def scale(self, pop: str, servers: int, timeout: float = 60.0) -> dict[str, Any]:
        """Bring ``pop`` to ``servers`` servers in service: start the processes of its next standby
        servers (they announce the prefix; ECMP spreads new flows onto them) or stop its last ones (the
        health agent withdraws first). Returns what changed and, on the way up, the seconds from the
        start until the processes were ready, the sessions Established and every upstream router's FIB
        had the new servers as next hops (on the way down: until the FIB had dropped them). Raises
        UsageError outside 1 … max_servers, AnylabError/WaitTimeout when a step fails."""
        with self.scaling:
            return self._scale(pop, servers, timeout)

    def _scale(self, pop: str, servers: int, timeout: float) -> dict[str, Any]:
        from core.errors import UsageError

        p = self.topo.pop(pop)
        slots = [*p.servers, *p.standby]
        if not 1 <= servers <= len(slots):
            raise UsageError(f"{pop} has room for 1 … {len(slots)} servers (max_servers), not {servers}")
        serving = in_service(self.topo, self.run_dir)
        now_in = list(serving[pop])
        t0 = monotonic()
        if servers > len(now_in):
            added = [s for s in slots if s not in now_in][:servers - len(now_in)]
            self._start_daemons(added)
            t_ready = monotonic() - t0
            serving[pop] = now_in + added
            changed, removed = added, []
        elif servers < len(now_in):
            removed = now_in[servers:]
            serving[pop] = now_in[:servers]
            self._write_in_service(serving)  # first: the sessions about to go down no longer count
            self.control().set_servers(pop, serving[pop])
            for server in reversed(removed):
                for d in reversed(self.daemons[server]):  # the health agent first: it withdraws
                    d.stop()
            t_ready, changed, added = monotonic() - t0, removed, []
        else:
            return {"pop": pop, "servers": now_in, "added": [], "removed": []}
        self._write_in_service(serving)
        if added:
            self.control().set_servers(pop, serving[pop])
        prefix = str(self.topo.anycast[0])
        hops = {(r, str(n.address)) for r in p.upstreams for n in self.topo.router(r).neighbors if n.node in changed}
        sessions_s = None
        if added:
            def established() -> bool:
                return all(st.up == st.total for st in self.sessions() if st.router in p.upstreams)

            wait_for(established, timeout=timeout, what=f"sessions of {', '.join(added)}", interval=0.05)
            sessions_s = monotonic() - t0

        def fib() -> bool:
            for router, via in hops:
                present = via in fib_nexthops(self.netns[router], prefix)
                if present != bool(added):
                    return False
            return True

        wait_for(fib, timeout=timeout, what=f"the upstream routers' FIB to {'add' if added else 'drop'} "
                 f"{', '.join(changed)}", interval=0.05)
        return {"pop": pop, "servers": serving[pop], "added": added, "removed": removed,
                "processes_s": round(t_ready, 3), "sessions_s": None if sessions_s is None else round(sessions_s, 3),
                "fib_s": round(monotonic() - t0, 3)}

    def fail(self, scenario: str, target: str, count: int = 3, period: float = 1.0) -> float:
        """Inject a fault from the catalogue (:mod:`lab.faults.catalogue`); returns its CLOCK_MONOTONIC time.
        Raises UsageError for a bad request (nothing touched), AnylabError if injecting fails."""
        return self.injector.fail(plan(self.topo, scenario, target, count, period))

    def restore(self, target: str) -> float:
        """Undo the fault on ``target``; returns when the undo began. Raises UsageError if not failed."""
        return self.injector.restore(target)

    def control(self, timeout: float = 30.0) -> Client:
        """The control plane's API, as the operator (admin token)."""
        return Client(self.node_dir(self.topo.control.name), timeout=timeout)

    def deploy(self, name: str, host: str, code: str, bindings: dict[str, Any] | None = None,
               path_prefix: str = "/", pops: list[str] | None = None, regions: list[str] | None = None,
               timeout: float = 30.0, **options: Any) -> Deployed:
        """Upload a worker to the control plane, deploy it (to ``pops``/``regions``, else everywhere) and
        wait until every PoP server runs it. Raises ControlPlaneError (the API's reason: bad code, bad
        target, control plane down), WaitTimeout naming the servers that did not switch."""
        upload = {"code": code, "host": host, "path_prefix": path_prefix, "bindings": bindings or {}, **options}
        return self.control().release(name, upload, pops, regions, timeout)

    def rollback(self, name: str, timeout: float = 30.0) -> Deployed:
        """Roll worker ``name`` back to its previous placement and wait until every server runs it."""
        return self.control().roll_back(name, timeout)

    def do_directory(self) -> dict[str, Any]:
        """The Durable Object directory's listing (regions, objects). Raises AnylabError."""
        return durable_ops.directory(self.node_dir(self.topo.control.name))

    def do_host(self, region: str) -> dict[str, Any]:
        """Region ``region``'s DO host status (lease, owned objects, lag). Raises AnylabError."""
        return durable_ops.host(self.node_dir(self.topo.kv_master_of(region).name))

    def wait_do_leases(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every region's DO host holds a lease. Raises WaitTimeout."""
        return durable_ops.wait_leases(self.node_dir(self.topo.control.name), timeout)

    def withdraw(self, pop: str) -> float:
        return self.set_announced(pop, False)

    def announce(self, pop: str) -> float:
        return self.set_announced(pop, True)

    def wait_shifted(self, clients: Iterable[str], t_fault: float, timeout: float = 30.0,
                     settle: float = 0.0) -> dict[str, Shift]:
        """Wait until each client got an answer from a PoP other than the one it used at ``t_fault``,
        then return each client's Shift. Raises WaitTimeout naming the clients that did not move."""
        clients = list(clients)
        result: dict[str, Shift] = {}

        def probe() -> bool:
            for c in clients:
                shift = shift_after(self.probes(c), t_fault)
                result[c] = shift
            return all(s.shift_s is not None for s in result.values())

        wait_for(probe, timeout=timeout, what="clients to shift", interval=0.05,
                 describe=lambda: ", ".join(f"{c}: still {s.before}" for c, s in result.items()
                                            if s.shift_s is None))
        return result


# -- functions that also work on a lab run by another process -------------------------------------


def read_state(name: str) -> dict[str, Any] | None:
    path = run_dir_of(name) / STATE_FILE
    if not run_dir_of(name).exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {"name": name, "phase": "unknown"}


def topology_of(state: dict[str, Any]) -> Topology:
    """The topology a running lab was built from (as it was then, not as the file is now)."""
    return build_topology(state["spec"], state.get("source", "<state>"))


def lab_names() -> list[str]:
    return sorted(p.name for p in RUN_ROOT.iterdir() if p.is_dir()) if RUN_ROOT.is_dir() else []


def in_service(topo: Topology, run_dir: Path) -> dict[str, list[str]]:
    """PoP → its servers in service now (the rest of its slots are racked but have no processes)."""
    try:
        data: dict[str, list[str]] = json.loads((run_dir / IN_SERVICE_FILE).read_text())
        return data
    except (OSError, ValueError):
        return {p.name: list(p.servers) for p in topo.pops}


def fib_nexthops(netns_file: str, prefix: str) -> set[str]:
    """The gateways of the kernel route to ``prefix`` in a router's namespace (empty: no route).
    Raises AnylabError when ``ip`` cannot run there."""
    try:
        res = subprocess.run(["nsenter", f"--net={netns_file}", "--", "ip", "-j", "route", "show", prefix],
                             capture_output=True, text=True, timeout=10, check=True)
        routes = json.loads(res.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise AnylabError(f"cannot read the route to {prefix}: {exc}") from exc
    hops: set[str] = set()
    for r in routes:
        hops |= {h["gateway"] for h in r.get("nexthops", []) if "gateway" in h}
        if "gateway" in r:
            hops.add(r["gateway"])
    return hops


T = TypeVar("T")


def _per_router(fn: Callable[[Router], T], routers: Sequence[Router]) -> list[T]:
    """``fn`` for every router, in order; several at once (each asks its daemon through a subprocess:
    one after another, 100 routers took tens of seconds a round on a loaded box)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(routers)))) as pool:
        return list(pool.map(fn, routers))


def _router_state(run_dir: Path, r: Router) -> tuple[dict[str, str], dict[str, str]]:
    try:
        return router_kinds.sessions(run_dir / r.name, r), router_kinds.bfd_states(run_dir / r.name, r)
    except Exception:  # the daemon not answering counts as every session down
        return {}, {}


def router_sessions(topo: Topology, run_dir: Path) -> list[SessionState]:
    """Every router's BGP sessions (those to servers out of service do not count)."""
    serving = {s for servers in in_service(topo, run_dir).values() for s in servers}
    idle = {s.name for s in topo.servers} - serving
    out = []
    states = _per_router(lambda r: _router_state(run_dir, r), topo.routers)
    for r, (peers, bfd) in zip(topo.routers, states, strict=True):
        # A session counts as up once BGP is Established and, where the profile wants it, BFD is up:
        # a fault injected before BFD is up would be caught by the hold timer instead.
        neighbors = [n for n in r.neighbors if n.node not in idle]
        down = tuple(f"{n.node}({peers.get(str(n.address), 'no answer')})" for n in neighbors
                     if peers.get(str(n.address)) != "Established")
        down += tuple(f"{n.node}(BFD {bfd[str(n.address)]})" for n in neighbors
                      if bfd.get(str(n.address), "up") != "up" and peers.get(str(n.address)) == "Established")
        out.append(SessionState(r.name, len(neighbors) - len(down), len(neighbors), down))
    return out


def observed_catchment(topo: Topology, run_dir: Path, after: float | None = None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for c in topo.clients:
        probe = last_answer(read_probes(run_dir / c.name / "probes.jsonl", tail_bytes=64 << 10), after)
        out[c.name] = probe.pop if probe else None
    return out


def daemons_alive(run_dir: Path) -> dict[str, dict[str, bool]]:
    """node → daemon → alive, from the lab's process records."""
    alive = {(p.node, p.name, p.pid) for p in recorded_procs(run_dir)}
    out: dict[str, dict[str, bool]] = {}
    path = run_dir / "pids.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.setdefault(rec["node"], {})[rec["name"]] = (rec["node"], rec["name"], rec["pid"]) in alive
    return out


def cleanup(name: str, controller_timeout: float | None = None) -> list[str]:
    """Remove everything lab ``name`` left: ask a live controller to stop (waiting 60 s plus 0.2 s a
    node by default), stop the recorded processes (by PID, checked against their start time), delete
    its namespaces and run directory. Returns the errors met (it keeps going past them)."""
    errors: list[str] = []
    run_dir = run_dir_of(name)
    state = read_state(name) or {}
    if controller_timeout is None:
        controller_timeout = 60.0 + 0.2 * len(netns.names(netns_prefix(name)))
    pid, start = state.get("pid"), state.get("starttime")
    if isinstance(pid, int) and isinstance(start, int) and pid != os.getpid() and is_same_process(pid, start):
        os.kill(pid, 15)
        try:
            wait_for(lambda: not is_same_process(pid, start), timeout=controller_timeout,
                     what=f"controller {pid} to stop")
        except AnylabError as exc:
            errors.append(str(exc))
    stop_many(list(reversed(recorded_procs(run_dir))), errors)
    for ns in netns.names(netns_prefix(name)):
        try:
            netns.delete(ns)
        except AnylabError as exc:
            errors.append(str(exc))
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    for leftover in (f"{name}.controller.log", f"{name}.failed"):
        (RUN_ROOT / leftover).unlink(missing_ok=True)
    return errors


def cleanup_all() -> list[str]:
    """``anylab down --all``: every lab's leftovers, and namespaces with the lab prefix but no lab."""
    errors: list[str] = []
    for name in lab_names():
        errors += cleanup(name)
    for ns in netns.names(NETNS_PREFIX):
        try:
            netns.delete(ns)
        except AnylabError as exc:
            errors.append(str(exc))
    for pattern in ("*.controller.log", "*.failed"):
        for leftover in RUN_ROOT.glob(pattern) if RUN_ROOT.is_dir() else []:
            leftover.unlink(missing_ok=True)
    return errors


def set_probe_rate(run_dir: Path, measuring: bool) -> int:
    """Switch the lab's probers to their measuring rate (SIGUSR1) or back to their idle rate (SIGUSR2),
    by recorded PID; returns how many were signalled. A prober without an idle rate ignores both."""
    sig = signal.SIGUSR1 if measuring else signal.SIGUSR2
    count = 0
    for proc in recorded_procs(run_dir):
        if proc.name == "prober" and proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
                count += 1
    return count
