"""etcd (Debian's ``etcd-server``) as one of the lab's daemons: each region's control plane node runs one
member of the lab's one cluster, the control plane's shared state (:mod:`control_plane.shared`).

Timers, scaled for the lab (etcd's defaults are 100 ms and 1 000 ms, sized for a WAN): a leader heartbeat
every :data:`HEARTBEAT_MS`, an election after :data:`ELECTION_MS` without one (etcd randomises it up to
twice that), so a killed leader is replaced in 0.5–1 s plus one round of votes — within the 2 s the issue
allows a deploy to wait. ``pre-vote`` is on: a member coming back from a partition asks before it starts
an election, so it does not depose a leader that the majority kept (a healed ``cp-cut`` does not interrupt
deploys). Members listen for clients on their lab address and on 127.0.0.1 (the region's control plane),
for peers on their lab address.

etcd has no dry-run mode: :meth:`EtcdMember.validate` checks the rendered config's fields (names, URLs,
the cluster listing this member) and that the ``etcd`` binary is the one the lab installs.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from core.netns import socket_in
from model.constants import ETCD_CLIENT_PORT, ETCD_PEER_PORT
from model.topology import ServiceNode

HEARTBEAT_MS = 50
ELECTION_MS = 500
ETCD = "etcd"


def client_url(node: ServiceNode) -> str:
    return f"http://{node.address}:{ETCD_CLIENT_PORT}"


def peer_url(node: ServiceNode) -> str:
    return f"http://{node.address}:{ETCD_PEER_PORT}"


class EtcdMember(Daemon):
    """The etcd member of one region's control plane node; ``members`` are every region's nodes."""

    name = "etcd"
    ready_timeout = 20.0

    def __init__(self, env: NodeEnv, node: ServiceNode, members: tuple[ServiceNode, ...], cluster_token: str) -> None:
        super().__init__(env)
        self.service, self.members, self.cluster_token = node, members, cluster_token

    @property
    def data_dir(self) -> Path:
        return self.env.dir / "etcd"

    def config(self) -> dict[str, object]:
        me = self.service
        return {
            "name": me.name, "data-dir": str(self.data_dir),
            "listen-peer-urls": peer_url(me), "initial-advertise-peer-urls": peer_url(me),
            "listen-client-urls": f"{client_url(me)},http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "advertise-client-urls": client_url(me),
            "initial-cluster": ",".join(f"{m.name}={peer_url(m)}" for m in self.members),
            "initial-cluster-state": "new", "initial-cluster-token": self.cluster_token,
            "heartbeat-interval": HEARTBEAT_MS, "election-timeout": ELECTION_MS, "pre-vote": True,
            "enable-grpc-gateway": True, "logger": "zap", "log-level": "warn",
            "log-outputs": [str(self.path(".log"))],
            # A lab's history is small; compacting keeps a long soak's database from growing.
            "auto-compaction-mode": "revision", "auto-compaction-retention": "10000",
        }

    def render_config(self) -> dict[Path, str]:
        # JSON is YAML: etcd's --config-file takes it as it is.
        return {self.path(".yaml"): json.dumps(self.config(), indent=1)}

    def validate(self) -> None:
        if shutil.which(ETCD) is None:
            raise self.error("etcd is not installed (Debian's etcd-server: './anylab setup')")
        try:
            cfg = json.loads(self.path(".yaml").read_text())
        except (OSError, ValueError) as exc:
            raise self.error(f"bad config {self.path('.yaml')}: {exc}") from exc
        names = [part.split("=", 1)[0] for part in str(cfg["initial-cluster"]).split(",")]
        if cfg["name"] not in names or len(set(names)) != len(names):
            raise self.error(f"member {cfg['name']} must be listed once in initial-cluster ({cfg['initial-cluster']})")
        if Path(cfg["data-dir"]).parent != self.env.dir:
            raise self.error(f"data-dir {cfg['data-dir']} is not in the node's run directory")

    def argv(self) -> list[str]:
        return [ETCD, "--config-file", str(self.path(".yaml"))]

    def ready(self) -> bool:
        """Its client port answers ``GET /version`` (a quorum is not needed: the cluster forms once
        the routes are up; :meth:`lab.run.lab.Lab.wait_control_planes` waits for that)."""
        if self.env.netns is None:
            return False
        try:
            with socket_in(self.env.netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(("127.0.0.1", ETCD_CLIENT_PORT))
                sock.sendall(b"GET /version HTTP/1.0\r\nHost: localhost\r\n\r\n")
                reply = sock.recv(4096)
        except (OSError, AnylabError):
            return False
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] and b"etcdserver" in reply
