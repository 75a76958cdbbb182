"""The lab's own daemons: the PoP server's edge worker, health agent and KV replica (or the three as one
pop agent), the services' daemons, and the client's prober."""

from __future__ import annotations

import http.client
import json
import os
import socket
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

from backup.service import WEAK_NO_WAL
from control_plane.client import ADMIN_TOKEN, SOCKET, Client, ControlPlaneError
from control_plane.shared import WEAK_WRITES
from core import unix_http
from core.daemon import Daemon, NodeEnv
from core.metrics import TOKEN_FILE, TOKEN_KEY
from core.netns import socket_in
from core.peer_auth import PeerKeys
from core.timers import phase_of
from kv.master import WEAK_ACK
from lab.run.etcd import CA_FILE, CERT_FILE, KEY_FILE, EtcdTls, client_url, local_url
from model.constants import BACKUP_SOCKET, DO_DIRECTORY_PORT, DO_HOST_PORT, KV_REPLICA_PORT
from model.profiles import HEALTH_PORT
from model.spec import BackupSpec, LabSpec
from model.topology import Client as ClientNode
from model.topology import DrSite, Pop, Server, ServiceNode

#: What the PoP servers run, imported by the lab's zygote (:mod:`core.zygote`) before any fork.
SERVER_PRELOAD = ("pop_agent.edge", "health.agent", "kv.replica", "pop_agent.agent", "exabgp.application.main",
                  "bgp.exabgp_inproc")


class EdgeWorker(Daemon):
    """``pop_agent.edge`` on the server's anycast addresses: the deployed workers over HTTP (port 80),
    the probers' UDP probes, and ``/healthz`` on 127.0.0.1 for the health agent."""

    name = "edge"
    forkable = True

    def __init__(self, env: NodeEnv, server: Server, udp_port: int, control: ServiceNode,
                 controls: tuple[ServiceNode, ...], keys: PeerKeys,
                 origins: tuple[ServiceNode, ...] = (), breakers: dict[str, dict[str, float]] | None = None,
                 peers: list[dict[str, object]] | None = None, capacity_rps: float = 5000.0,
                 spill_threshold: float = 0.8, account_limits: dict[str, float] | None = None) -> None:
        super().__init__(env)
        self.account_limits = {k: v for k, v in (account_limits or {}).items() if not k.startswith("kv_")}
        self.peers = peers or []
        self.capacity_rps, self.spill_threshold = capacity_rps, spill_threshold
        self.server = server
        self.udp_port = udp_port
        #: The control node (the DO directory), and the regions' control planes, home first.
        self.control = control
        self.controls = controls
        self.keys = keys
        self.origins = origins
        self.breakers = breakers or {}

    def spawn_env(self) -> dict[str, str] | None:
        """The lab's names for its origins, so that worker code can ``env.fetch("http://origin/…")`` (the
        namespaces share the root's /etc/hosts, which the lab does not touch), and the breakers' settings."""
        hosts = ",".join(f"{o.name}={o.address}:{o.port}" for o in self.origins)
        return {**os.environ, "ANYLAB_HOSTS": hosts, "ANYLAB_BREAKERS": json.dumps(self.breakers)}

    @property
    def deployments(self) -> Path:
        return self.env.dir / "deployments"

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        """The edge's signing keys (``pop`` for the control plane, ``do-router`` for the DO services)."""
        blocks: dict[str, object] = {}
        files: dict[Path, str] = {}
        for role in ("pop", "do-router"):
            blocks[role], more = self.keys.auth_config(self.path("-"), f"{role}/{self.server.name}")
            files.update(more)
        return blocks, files

    def secrets(self) -> dict[Path, str]:
        return {**self.auth()[1], **token_files(self)}

    def render_config(self) -> dict[Path, str]:
        return {self.path("-peers.json"): json.dumps(self.peers, indent=1),
                self.path("-auth.json"): json.dumps(self.auth()[0], indent=1)}

    def validate(self) -> None:
        if not self.server.prefixes:
            raise self.error("no anycast prefix to answer on")
        if not self.controls:
            raise self.error("no control plane to sync with")

    def argv(self) -> list[str]:
        argv = [self.env.python, "-m", "pop_agent.edge", "--pop", self.server.pop, "--server", self.server.name,
                "--udp-port", str(self.udp_port), "--health-port", str(HEALTH_PORT),
                "--deployments", str(self.deployments),
                "--control", ",".join(f"{c.address}:{c.port}" for c in self.controls),
                "--auth", str(self.path("-auth.json")),
                "--directory", f"{self.control.address}:{DO_DIRECTORY_PORT}",
                "--unicast", str(self.server.interfaces[0].address.ip), "--peers", str(self.path("-peers.json")),
                "--capacity-rps", str(self.capacity_rps), "--spill-threshold", str(self.spill_threshold),
                "--account-limits", json.dumps(self.account_limits),
                # One phase per region: a server's spillover peers are its region's nearest PoPs, and
                # polls and answers on one tick wake each server once a second instead of once per peer.
                "--tick-phase", f"{phase_of(self.server.region, 1.0):.3f}"]
        if self.metrics_token:
            argv += ["--metrics-token", str(self.env.dir / TOKEN_FILE)]
        for prefix in self.server.prefixes:
            argv += ["--address", str(prefix.network_address)]
        return argv

    def ready(self) -> bool:
        """A UDP probe from inside the server's own namespace is answered with this server's name."""
        if self.env.netns is None:
            return False
        with socket_in(self.env.netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(b'{"seq": 0}', (str(self.server.prefixes[0].network_address), self.udp_port))
            try:
                reply = json.loads(sock.recv(2048))
            except (OSError, ValueError):
                return False
        return bool(reply.get("server") == self.server.name)


def token_files(daemon: Daemon) -> dict[Path, str]:
    """The metrics token's file in ``daemon``'s node directory, if Prometheus scrapes it."""
    return {daemon.env.dir / TOKEN_FILE: daemon.metrics_token + "\n"} if daemon.metrics_token else {}


class PythonService(Daemon):
    """A daemon of this project run as ``python -m MODULE --config D/NAME.json``, its config the JSON of
    :meth:`config` (plus the metrics token's path when the lab scrapes it, :data:`core.metrics.TOKEN_KEY`)."""

    module: ClassVar[str]

    @abstractmethod
    def config(self) -> dict[str, object]:
        """The JSON config the module reads."""

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        """Its ``auth`` config block and key files (:mod:`core.peer_auth`); none by default."""
        return {}, {}

    def secrets(self) -> dict[Path, str]:
        return {**self.auth()[1], **token_files(self)}

    def render_config(self) -> dict[Path, str]:
        token = {TOKEN_KEY: str(self.env.dir / TOKEN_FILE)} if self.metrics_token else {}
        return {self.path(".json"): json.dumps({**self.config(), **token}, indent=1)}

    def argv(self) -> list[str]:
        return [self.env.python, "-m", self.module, "--config", str(self.path(".json"))]


def api_replica_name(index: int) -> str:
    """The daemon name of a region's ``index``-th control plane API process (0: the first)."""
    return "control-plane" if index == 0 else f"control-plane-{index}"


class ControlPlane(PythonService):
    """``control_plane.server`` on a region's control plane node (``cp-<region>``): the deploy API for the
    PoPs (lab network) and the operator (``api.sock`` in its directory), with the lab's admin token (the
    PoPs, DO hosts and other regions sign their requests instead); its state in etcd, through the
    region's member first; its artifacts replicated to the ``peers`` (nearest first)."""

    name = api_replica_name(0)
    module = "control_plane.server"
    dependencies = ("etcd",)

    def __init__(self, env: NodeEnv, node: ServiceNode, pops: tuple[Pop, ...], keys: PeerKeys,
                 peers: tuple[ServiceNode, ...], regions: int, admin_token: str, replica: int = 0) -> None:
        super().__init__(env)
        #: 0: the region's API; N > 0: its N-th replica (scaling), on the same address (SO_REUSEPORT).
        self.replica = replica
        self.control = node
        self.pops = pops
        self.keys = keys
        self.peers = peers
        self.regions = regions
        self.tokens = {"admin": admin_token}

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"cp/{self.control.region}",
                                     ("pop", "do-host", "cp", "dns", "backup"))

    def secrets(self) -> dict[Path, str]:
        return {self.env.dir / ADMIN_TOKEN: self.tokens["admin"] + "\n", **self.auth()[1], **token_files(self)}

    @property
    def artifacts(self) -> Path:
        """The region's artifact store (what ``artifact-store-wipe`` empties)."""
        return self.env.dir / "state" / "artifacts"

    @property
    def socket(self) -> str:
        return SOCKET if self.replica == 0 else f"api-{self.replica}.sock"

    def replica_of(self, index: int) -> ControlPlane:
        """The API's ``index``-th replica: the same region, its own process, socket and name."""
        cls = type(f"ControlPlaneReplica{index}", (ControlPlane,), {"name": api_replica_name(index)})
        replica: ControlPlane = cls(self.env, self.control, self.pops, self.keys, self.peers, self.regions,
                                    self.tokens["admin"], index)
        replica.metrics_token = self.metrics_token
        return replica

    def config(self) -> dict[str, object]:
        return {"region": self.control.region, "node": self.control.name, "repair": self.replica == 0,
                "state_dir": str(self.env.dir / "state"), "socket": str(self.env.dir / self.socket),
                "listen": [str(self.control.address), self.control.port],
                "tokens": {"admin": str(self.env.dir / ADMIN_TOKEN)}, "auth": self.auth()[0],
                "etcd": [local_url(), *(client_url(p) for p in self.peers)],
                "etcd_tls": {"ca": str(self.env.dir / CA_FILE), "cert": str(self.env.dir / CERT_FILE),
                             "key": str(self.env.dir / KEY_FILE)},
                "peers": [{"region": p.region, "address": str(p.address), "port": p.port} for p in self.peers],
                "regions": self.regions, **weakened("cp", WEAK_WRITES),
                "pops": [{"name": p.name, "region": p.region, "servers": list(p.servers)} for p in self.pops]}

    def validate(self) -> None:
        from control_plane.server import load_config

        try:
            load_config(self.path(".json"))
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise self.error(f"bad control plane config: {exc}") from exc

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.env.dir, self.tokens["admin"], timeout)

    def ready(self) -> bool:
        """Ready once the API answers its status on its socket (serving needs the etcd quorum, which needs
        the lab's routes: :meth:`lab.run.lab.Lab.wait_control_planes`)."""
        try:
            self.client(timeout=1.0).call_one(self.env.dir, "GET", "/v1/status", socket=self.socket)
        except ControlPlaneError:
            return False
        return True


#: The test-only switch that weakens a service so that a bench can show it fail: ``ANYLAB_WEAKEN=kv`` (a
#: KV master acknowledges after its own fsync), ``cp`` (a control plane writes blindly and acknowledges
#: what etcd did not commit), ``backup`` (the backup service keeps no WAL: snapshots only). Never set by
#: the lab itself.
WEAKEN_ENV = "ANYLAB_WEAKEN"


def weakened(service: str, how: str) -> dict[str, str]:
    """``{"weaken": how}`` for the config of ``service`` when ``ANYLAB_WEAKEN`` names it, else nothing."""
    return {"weaken": how} if service in os.environ.get(WEAKEN_ENV, "").split(",") else {}


class KvMaster(PythonService):
    """``kv.master`` on a region's KV node: writes durable here and on another region's master before
    the ack, pulls from every other master, streams to the region's replicas."""

    name = "kv-master"
    module = "kv.master"

    def __init__(self, env: NodeEnv, node: ServiceNode, peers: tuple[ServiceNode, ...], keys: PeerKeys) -> None:
        super().__init__(env)
        self.service = node
        self.peers = peers
        self.keys = keys

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"kv-master/{self.service.name}",
                                     ("kv-master", "kv-replica", "backup"))

    @property
    def socket(self) -> Path:
        return self.env.dir / "kv.sock"

    def config(self) -> dict[str, object]:
        return {"node": self.service.name, "region": self.service.region, "data_dir": str(self.data_dir),
                "socket": str(self.socket), "listen": [str(self.service.address), self.service.port],
                "peers": [{"name": p.name, "address": str(p.address), "port": p.port} for p in self.peers],
                "auth": self.auth()[0], **weakened("kv", WEAK_ACK)}

    @property
    def data_dir(self) -> Path:
        """Everything the master keeps on disk (what ``kv-master-wipe`` takes away)."""
        return self.env.dir / "kv"

    def validate(self) -> None:
        if self.service.port <= 0:
            raise self.error(f"bad port {self.service.port}")

    def ready(self) -> bool:
        return _answers(self.socket, "/v1/status")


class _BackupNode(PythonService):
    """What the backup store's two nodes share: the operator socket, the store's directory and, to reach
    a control plane's etcd, a client certificate from the lab's etcd CA."""

    def __init__(self, env: NodeEnv, node: ServiceNode, keys: PeerKeys, spec: BackupSpec,
                 tls: EtcdTls | None) -> None:
        super().__init__(env)
        self.service, self.keys, self.spec, self.tls = node, keys, spec, tls

    def secrets(self) -> dict[Path, str]:
        tls = ({self.env.dir / CA_FILE: self.tls.ca, self.env.dir / CERT_FILE: self.tls.cert,
                self.env.dir / KEY_FILE: self.tls.key} if self.tls is not None else {})
        return {**super().secrets(), **tls}

    def etcd_tls(self) -> dict[str, str]:
        return {"ca": str(self.env.dir / CA_FILE), "cert": str(self.env.dir / CERT_FILE),
                "key": str(self.env.dir / KEY_FILE)}

    @property
    def socket(self) -> Path:
        return self.env.dir / BACKUP_SOCKET

    @property
    def data_dir(self) -> Path:
        """The store (what a fault on the node would take away)."""
        return self.env.dir / "store"

    def ready(self) -> bool:
        return _answers(self.socket, "/v1/status")


class BackupService(_BackupNode):
    """``backup.service`` on the backup node: the primary region's backup store, following every KV
    master and DO host (signed as ``backup``) and the control plane's etcd (its own client certificate
    from the lab's etcd CA), snapshots on the configured periods; its API on its operator socket."""

    name = "backup"
    module = "backup.service"

    def __init__(self, env: NodeEnv, node: ServiceNode, masters: tuple[ServiceNode, ...], keys: PeerKeys,
                 spec: BackupSpec, control_planes: tuple[ServiceNode, ...] = (), tls: EtcdTls | None = None) -> None:
        super().__init__(env, node, keys, spec, tls)
        self.masters, self.control_planes = masters, control_planes

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"backup/{self.service.name}", ("backup",))

    def config(self) -> dict[str, object]:
        s = self.spec
        control: dict[str, object] = {}
        if self.control_planes and self.tls is not None:
            control = {"control": {
                "etcd": [client_url(c) for c in self.control_planes], "snapshot_s": s.kv_snapshot_s,
                "etcd_tls": self.etcd_tls(),
                "planes": [{"name": c.region, "address": str(c.address), "port": c.port}
                           for c in self.control_planes]}}
        return {"node": self.service.name, "data_dir": str(self.data_dir), "socket": str(self.socket),
                "listen": [str(self.service.address), self.service.port], "snapshot_s": s.kv_snapshot_s,
                "keep_s": s.keep_days * s.kv_snapshot_s,
                "masters": [{"name": m.name, "address": str(m.address), "port": m.port} for m in self.masters],
                "objects": {"snapshot_s": s.do_snapshot_s,
                            "hosts": [{"name": m.region, "address": str(m.address), "port": DO_HOST_PORT}
                                      for m in self.masters]},
                **control, "auth": self.auth()[0], **weakened("backup", WEAK_NO_WAL)}

    def validate(self) -> None:
        if not self.masters:
            raise self.error("no KV master to back up")


class BackupDr(_BackupNode):
    """``backup.dr`` on the DR region's backup node (``drbk``): the primary store copied continuously (signed
    as ``backup``), each snapshot verified here, the cold archive kept ``archive_days`` lab days; with a
    standby platform (``site``), what its failover restores into the site's control plane (etcd, with a
    certificate of its own) and KV master."""

    name = "backup-dr"
    module = "backup.dr"

    def __init__(self, env: NodeEnv, node: ServiceNode, primary: ServiceNode, keys: PeerKeys,
                 spec: BackupSpec, site: DrSite | None = None, tls: EtcdTls | None = None) -> None:
        super().__init__(env, node, keys, spec, tls)
        self.primary, self.site = primary, site

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"backup/{self.service.name}")

    def config(self) -> dict[str, object]:
        site: dict[str, object] = {}
        if self.site is not None and self.tls is not None:
            cp, kv = self.site.control, self.site.storage
            site = {"site": {"masters": [{"name": kv.name, "address": str(kv.address), "port": kv.port}],
                             "etcd": [client_url(cp)], "etcd_tls": self.etcd_tls(),
                             "planes": [{"name": cp.region, "address": str(cp.address), "port": cp.port}]}}
        return {"node": self.service.name, "data_dir": str(self.data_dir), "socket": str(self.socket),
                "listen": [str(self.service.address), self.service.port],
                "primary": {"address": str(self.primary.address), "port": self.primary.port},
                "archive_s": self.spec.archive_days * self.spec.kv_snapshot_s, "auth": self.auth()[0], **site}

    def validate(self) -> None:
        if self.primary.region == self.service.region:
            raise self.error(f"the DR copy is in the primary store's region {self.primary.region}")
        if self.site is not None and self.tls is None:
            raise self.error("a standby platform needs the copy's etcd client certificate")


class KvReplica(PythonService):
    """``kv.replica`` on a PoP server: the local copy the server's workers read (127.0.0.1), following
    the region's master; Level 1 when it is away."""

    name = "kv-replica"
    forkable = True
    module = "kv.replica"

    def __init__(self, env: NodeEnv, server: Server, masters: tuple[ServiceNode, ...], stale_after_s: float,
                 keys: PeerKeys, account_limits: dict[str, float] | None = None, poll_s: float = 2.0) -> None:
        super().__init__(env)
        self.server = server
        self.keys = keys
        self.poll_s = poll_s
        # Its own region's master first: that one it follows and writes to; the others serve reads
        # the local copy cannot.
        self.masters = tuple(sorted(masters, key=lambda m: m.region != server.region))
        self.stale_after_s = stale_after_s
        self.account_limits = {k: v for k, v in (account_limits or {}).items() if k.startswith("kv_")}

    @property
    def socket(self) -> Path:
        return self.env.dir / "kv.sock"

    @property
    def data_dir(self) -> Path:
        """The replica's copy and its queue of writes (what ``kv-global-loss`` takes away)."""
        return self.env.dir / "kv"

    def config(self) -> dict[str, object]:
        def ref(m: ServiceNode) -> dict[str, object]:
            return {"name": m.name, "address": str(m.address), "port": m.port}

        return {"server": self.server.name, "data_dir": str(self.data_dir), "socket": str(self.socket),
                "listen": ["127.0.0.1", KV_REPLICA_PORT], "master": ref(self.masters[0]),
                "masters": [ref(m) for m in self.masters], "stale_after_s": self.stale_after_s,
                "poll_wait_s": self.poll_s,
                "metrics": str(self.env.dir / "kv.prom"), "events": str(self.env.dir / "kv-events.jsonl"),
                "account_limits": self.account_limits, "auth": self.auth()[0]}

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"kv-replica/{self.server.name}")

    def validate(self) -> None:
        if not self.masters or self.masters[0].region != self.server.region:
            raise self.error(f"region '{self.server.region}' has no KV master")

    def ready(self) -> bool:
        return _answers(self.socket, "/v1/status")


class DoService(PythonService):
    """A Durable Object service: its operator socket ``do.sock`` and decision log ``do-events.jsonl``."""

    @property
    def socket(self) -> Path:
        return self.env.dir / "do.sock"

    @property
    def events(self) -> Path:
        return self.env.dir / "do-events.jsonl"

    def ready(self) -> bool:
        """Ready once its API answers (a host's lease needs the lab's routes: ``Lab.wait_do_leases``)."""
        return _answers(self.socket, "/v1/status")


class DoDirectory(DoService):
    """``durable.directory_service`` on the control node: where every Durable Object lives, the regions'
    leases, failover. The operator reaches it on ``do.sock``."""

    name = "do-directory"
    module = "durable.directory_service"

    def __init__(self, env: NodeEnv, node: ServiceNode, hosts: tuple[ServiceNode, ...], settings: LabSpec,
                 keys: PeerKeys) -> None:
        super().__init__(env)
        self.service, self.hosts, self.settings, self.keys = node, hosts, settings, keys

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), None, ("do-host", "do-router"))

    def config(self) -> dict[str, object]:
        s = self.settings
        return {"listen": [str(self.service.address), DO_DIRECTORY_PORT], "socket": str(self.socket),
                "state": str(self.env.dir / "do-placements.json"), "events": str(self.events),
                "regions": {h.region: [str(h.address), DO_HOST_PORT] for h in self.hosts},
                "lease_s": s.do_lease_s, "renew_s": s.do_renew_s, "margin_s": s.do_margin_s, "auth": self.auth()[0]}

    def validate(self) -> None:
        if len({h.region for h in self.hosts}) != len(self.hosts):
            raise self.error("two DO hosts in one region")


class DoHost(DoService):
    """``durable.host_service`` on a region's storage node: runs the objects the region owns, keeps the
    copies it backs up."""

    name = "do-host"
    module = "durable.host_service"

    def __init__(self, env: NodeEnv, node: ServiceNode, control: ServiceNode, keys: PeerKeys,
                 settings: LabSpec, controls: tuple[ServiceNode, ...] = ()) -> None:
        super().__init__(env)
        self.service, self.control, self.keys, self.settings = node, control, keys, settings
        #: The regions' control planes, this region's first: where object code comes from.
        self.controls = controls

    def auth(self) -> tuple[dict[str, object], dict[Path, str]]:
        return self.keys.auth_config(self.path("-"), f"do-host/{self.service.region}",
                                     ("do-router", "do-host", "backup"))

    @property
    def data_dir(self) -> Path:
        """Everything the host keeps on disk (what ``do-host-wipe`` takes away)."""
        return self.env.dir / "do"

    def config(self) -> dict[str, object]:
        s = self.settings
        return {"region": self.service.region, "listen": [str(self.service.address), DO_HOST_PORT],
                "socket": str(self.socket), "data_dir": str(self.data_dir), "events": str(self.events),
                "directory": [str(self.control.address), DO_DIRECTORY_PORT],
                "control": [[str(c.address), c.port] for c in self.controls], "auth": self.auth()[0],
                "mode": s.do_mode, "renew_s": s.do_renew_s, "snapshot_s": s.do_snapshot_s}

    def validate(self) -> None:
        if self.settings.do_mode not in ("sync", "async"):
            raise self.error(f"do_mode {self.settings.do_mode!r}: sync or async")


class Origin(PythonService):
    """``lab.run.origin`` on an origin node: what workers fetch from; its failure mode is set by the
    faults over ``origin.sock``."""

    name = "origin"
    module = "lab.run.origin"

    def __init__(self, env: NodeEnv, node: ServiceNode) -> None:
        super().__init__(env)
        self.service = node

    @property
    def socket(self) -> Path:
        return self.env.dir / "origin.sock"

    def config(self) -> dict[str, object]:
        return {"name": self.service.name, "listen": [str(self.service.address), self.service.port],
                "socket": str(self.socket)}

    def validate(self) -> None:
        if not 0 < self.service.port < 65536:
            raise self.error(f"bad port {self.service.port}")

    def before_start(self) -> None:
        self.socket.unlink(missing_ok=True)

    def ready(self) -> bool:
        return _answers(self.socket, "/admin/status")

    def set_mode(self, mode: str, **values: float) -> dict[str, object]:
        """Switch the origin's failure mode; raises DaemonError if it does not take it."""
        try:
            status, body = unix_http.request(str(self.socket), "POST", "/admin/mode",
                                             json.dumps({"mode": mode, **values}).encode(),
                                             {"Content-Type": "application/json"}, timeout=5.0)
        except (OSError, http.client.HTTPException) as exc:
            raise self.error(f"cannot set mode {mode}: {exc}") from exc
        if status != 200:
            raise self.error(f"mode {mode} refused: {body[:200].decode(errors='replace')}")
        reply: dict[str, object] = json.loads(body)
        return reply


def _answers(path: Path, url: str) -> bool:
    """An HTTP GET on a Unix socket answers 200 (one readiness probe, no retries)."""
    try:
        return unix_http.request(str(path), "GET", url, timeout=1.0)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


#: The shortest lease of a health agent's dead-man's switch: one busy event loop (a burst of requests,
#: a collection) can go quiet for a few hundred milliseconds, and a shorter lease would withdraw a healthy
#: server then.
MIN_LEASE_S = 1.0


#: The health agent's last verdict, in its node's directory (read by ``status`` too).
HEALTH_STATE = "health-state.json"


def agent_lease(server: Server) -> float:
    """The lease a server's health agent holds the ExaBGP API with: ``fall × interval + timeout`` (what
    failing checks would have taken), at least :data:`MIN_LEASE_S`."""
    h = server.profile.health
    return max(MIN_LEASE_S, h.fall * h.interval + h.timeout)


class HealthAgent(PythonService):
    """``health.agent``: checks the local service and tells the ExaBGP API process what to announce."""

    name = "health"
    forkable = True
    module = "health.agent"
    dependencies: ClassVar[tuple[str, ...]] = ("edge", "exabgp")

    def __init__(self, env: NodeEnv, server: Server) -> None:
        super().__init__(env)
        self.server = server
        #: The dead-man's switch's lease (:func:`agent_lease`): the agent holds the ExaBGP API with it, so
        #: that a dead or hung agent — a process of its own, or folded into the edge's — is withdrawn.
        self.lease_s = agent_lease(server)

    def config(self) -> dict[str, object]:
        h, d = self.server.profile.health, self.env.dir
        return {
            "server": self.server.name, "pop": self.server.pop,
            "fsm": {"rise": h.rise, "fall": h.fall, "interval": h.interval, "fast_interval": h.fast_interval,
                    "timeout": h.timeout, "on_down": h.on_down, "drain_mode": h.drain_mode,
                    "debounce": h.debounce},
            "checks": [c.model_dump(mode="json") for c in h.checks], "combine": h.combine,
            "hooks": [list(hook) for hook in h.hooks],
            "api_socket": str(d / "api.sock"), "drain_file": str(self.drain_file),
            "events": str(self.events), "metrics": str(d / "health.prom"), "state": str(self.state_file),
            **({"overload": {"overload_above": h.overload.above, "overload_after": h.overload.after_s,
                             "restore_below": h.overload.below, "restore_after": h.overload.restore_after_s},
                "protect": str(d / "protect.json")} if h.overload is not None else {}),
            "lease_s": self.lease_s,
        }

    @property
    def drain_file(self) -> Path:
        return self.env.dir / "drain"

    @property
    def events(self) -> Path:
        return self.env.dir / "health-events.jsonl"

    @property
    def state_file(self) -> Path:
        return self.env.dir / HEALTH_STATE

    def validate(self) -> None:
        from health.agent import AgentConfig

        try:
            AgentConfig.from_json(self.config())
        except (KeyError, ValueError, TypeError) as exc:
            raise self.error(f"bad health agent config: {exc}") from exc

    def before_start(self) -> None:
        self.state_file.unlink(missing_ok=True)

    def ready(self) -> bool:
        """Ready once the agent has reached its first verdict (up or down)."""
        try:
            return json.loads(self.state_file.read_text()).get("health") in ("up", "down")
        except (OSError, ValueError):
            return False


class Prober(Daemon):
    """``lab.record.prober`` in a client namespace, probing the first anycast address."""

    name = "prober"

    def __init__(self, env: NodeEnv, client: ClientNode, target: str, rate_hz: float, udp_port: int,
                 idle_hz: float | None = None) -> None:
        super().__init__(env)
        self.client = client
        self.target = target
        self.rate_hz = rate_hz
        self.idle_hz = idle_hz
        self.udp_port = udp_port

    @property
    def out(self) -> Path:
        return self.env.dir / "probes.jsonl"

    def render_config(self) -> dict[Path, str]:
        return {}

    def validate(self) -> None:
        if self.rate_hz <= 0:
            raise self.error(f"probe rate {self.rate_hz} must be positive")

    def argv(self) -> list[str]:
        return [self.env.python, "-m", "lab.record.prober", "--target", self.target, "--port", str(self.udp_port),
                "--rate", str(self.rate_hz), "--out", str(self.out),
                *(["--idle-rate", str(self.idle_hz)] if self.idle_hz else [])]

    def ready(self) -> bool:
        return self.out.exists()




class PopAgent(Daemon):
    """``pop_agent.agent``: the edge worker, its KV replica and (with ``health_agent: anylab``) its health
    agent as one process (``settings.server_process: folded``). The parts' configs and files are those of
    :class:`EdgeWorker`, :class:`KvReplica` and :class:`HealthAgent`; the agent holds the ExaBGP API with
    its lease (:func:`agent_lease`), so that a dead or hung process is withdrawn as a failing check would
    have been."""

    name = "pop-agent"
    forkable = True
    dependencies = ("exabgp",)

    def __init__(self, env: NodeEnv, edge: EdgeWorker, kv: KvReplica, health: bool) -> None:
        super().__init__(env)
        self.edge, self.kv = edge, kv
        self.health = HealthAgent(env, edge.server) if health else None

    @property
    def data_dir(self) -> Path:
        """Its KV replica's (the only disk a pop agent keeps)."""
        return self.kv.data_dir

    @property
    def parts(self) -> tuple[Daemon, ...]:
        return (self.edge, self.kv, *((self.health,) if self.health is not None else ()))

    def render_config(self) -> dict[Path, str]:
        return {path: text for part in self.parts for path, text in part.render_config().items()}

    def secrets(self) -> dict[Path, str]:
        return {path: text for part in self.parts for path, text in part.secrets().items()}

    def validate(self) -> None:
        for part in self.parts:
            part.validate()

    def argv(self) -> list[str]:
        argv = [self.env.python, "-m", "pop_agent.agent", *self.edge.argv()[3:],
                "--kv-config", str(self.kv.path(".json"))]
        if self.health is not None:
            argv += ["--health-config", str(self.health.path(".json"))]
        return argv

    def spawn_env(self) -> dict[str, str] | None:
        return self.edge.spawn_env()

    def before_start(self) -> None:
        for part in self.parts:
            part.before_start()

    def ready(self) -> bool:
        """Ready when the agent has a verdict, the KV replica answers its status and the edge a probe —
        asked in that order: the edge's probe waits up to 0.2 s for an answer, and at 300 servers starting
        at once those waits ran one after another; the agent's first verdict comes only once the edge
        serves, so by then the probe is answered at once."""
        return all(part.ready() for part in reversed(self.parts))
