"""etcd (Debian's ``etcd-server``) as one of the lab's daemons: each region's control plane node runs one
member of the lab's one cluster, the control plane's shared state (:mod:`control_plane.shared`).

Timers, scaled for the lab (etcd's defaults are 100 ms and 1 000 ms, sized for a WAN): a leader heartbeat
every :data:`HEARTBEAT_MS`, an election after :data:`ELECTION_MS` without one (etcd randomises it up to
twice that), so a killed leader is replaced in 0.5–1 s plus one round of votes — within the 2 s the issue
allows a deploy to wait. ``pre-vote`` is on: a member coming back from a partition asks before it starts
an election, so it does not depose a leader that the majority kept (a healed ``cp-cut`` does not interrupt
deploys). Members listen for clients on their lab address and on 127.0.0.1 (the region's control plane),
for peers on their lab address.

**Peers authenticate each other** with TLS client certificates, on both ports: ``up`` makes a CA for the
lab and a certificate per member (:func:`make_tls`, ``openssl``, EC P-256, 30 days, the member's lab address
and 127.0.0.1 as IP SANs, server and client use), so only the lab's members join the cluster and only a
holder of a member's key — its region's control plane, on the same node — reads or writes it. A PoP
server, which can route to a control plane node, has no certificate: etcd refuses it.

etcd has no dry-run mode: :meth:`EtcdMember.validate` checks the rendered config's fields (names, URLs,
the cluster listing this member), that the ``etcd`` binary is the one the lab installs, and that the
member's certificate verifies against the lab's CA (``openssl verify``).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from core.netns import connect_in
from model.constants import ETCD_CLIENT_PORT, ETCD_PEER_PORT
from model.topology import ServiceNode

HEARTBEAT_MS = 50
ELECTION_MS = 500
ETCD = "etcd"
#: The member's TLS files in its node's directory (written 0600 as secrets), used by the region's control
#: plane too.
CA_FILE, CERT_FILE, KEY_FILE = "etcd-ca.pem", "etcd-tls.pem", "etcd-tls.key"


def client_url(node: ServiceNode) -> str:
    return f"https://{node.address}:{ETCD_CLIENT_PORT}"


def local_url() -> str:
    return f"https://127.0.0.1:{ETCD_CLIENT_PORT}"


def peer_url(node: ServiceNode) -> str:
    return f"https://{node.address}:{ETCD_PEER_PORT}"


@dataclass(frozen=True)
class EtcdTls:
    """The lab's etcd CA (PEM) and one member's certificate and key (PEM)."""

    ca: str
    cert: str
    key: str


def make_tls(members: Iterable[tuple[str, str]], days: int = 30) -> dict[str, EtcdTls]:
    """A CA for this lab and a certificate per member, given as (name, IP address): name → its files' text.
    Raises AnylabError if openssl fails."""
    def run(*argv: str) -> None:
        res = subprocess.run(["openssl", *argv], capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise AnylabError(f"openssl {argv[0]}: {res.stderr.strip()[:300]}")

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    out: dict[str, EtcdTls] = {}
    with tempfile.TemporaryDirectory(prefix="anylab-etcd-") as tmp:
        d = Path(tmp)
        run("req", "-x509", *curve, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", str(days),
            "-subj", "/CN=anylab etcd CA")
        for name, address in members:
            (d / f"{name}.ext").write_text(f"subjectAltName=IP:{address},IP:127.0.0.1\n"
                                           "extendedKeyUsage=serverAuth,clientAuth\n")
            key, csr, pem, ext = (str(d / f"{name}.{suffix}") for suffix in ("key", "csr", "pem", "ext"))
            run("req", *curve, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
            run("x509", "-req", "-in", csr, "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
                "-out", pem, "-days", str(days), "-extfile", ext)
            out[name] = EtcdTls((d / "ca.pem").read_text(), (d / f"{name}.pem").read_text(),
                                (d / f"{name}.key").read_text())
    return out


class EtcdMember(Daemon):
    """The etcd member of one region's control plane node; ``members`` are every region's nodes."""

    name = "etcd"
    ready_timeout = 20.0

    def __init__(self, env: NodeEnv, node: ServiceNode, members: tuple[ServiceNode, ...], cluster_token: str,
                 tls: EtcdTls) -> None:
        super().__init__(env)
        self.service, self.members, self.cluster_token, self.tls = node, members, cluster_token, tls

    def secrets(self) -> dict[Path, str]:
        return {self.env.dir / CA_FILE: self.tls.ca, self.env.dir / CERT_FILE: self.tls.cert,
                self.env.dir / KEY_FILE: self.tls.key}

    def transport(self) -> dict[str, object]:
        """etcd's TLS block: this member's certificate, and a certificate from the lab's CA required."""
        return {"cert-file": str(self.env.dir / CERT_FILE), "key-file": str(self.env.dir / KEY_FILE),
                "trusted-ca-file": str(self.env.dir / CA_FILE), "client-cert-auth": True}

    @property
    def data_dir(self) -> Path:
        return self.env.dir / "etcd"

    def config(self) -> dict[str, object]:
        me = self.service
        return {
            "name": me.name, "data-dir": str(self.data_dir),
            "listen-peer-urls": peer_url(me), "initial-advertise-peer-urls": peer_url(me),
            "listen-client-urls": f"{client_url(me)},{local_url()}",
            "advertise-client-urls": client_url(me),
            "initial-cluster": ",".join(f"{m.name}={peer_url(m)}" for m in self.members),
            "initial-cluster-state": "new", "initial-cluster-token": self.cluster_token,
            "heartbeat-interval": HEARTBEAT_MS, "election-timeout": ELECTION_MS, "pre-vote": True,
            "client-transport-security": self.transport(), "peer-transport-security": self.transport(),
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
        self.run_check(["openssl", "verify", "-CAfile", str(self.env.dir / CA_FILE), str(self.env.dir / CERT_FILE)],
                       "openssl verify")

    def argv(self) -> list[str]:
        return [ETCD, "--config-file", str(self.path(".yaml"))]

    def ready(self) -> bool:
        """Its client port answers ``GET /version`` (a quorum is not needed: the cluster forms once
        the routes are up; :meth:`lab.run.lab.Lab.wait_control_planes` waits for that)."""
        if self.env.netns is None:
            return False
        try:
            context = tls_context(self.env.dir)
            with connect_in(self.env.netns, "127.0.0.1", ETCD_CLIENT_PORT, 0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"GET /version HTTP/1.0\r\nHost: localhost\r\n\r\n")
                reply = sock.recv(4096)
        except (OSError, AnylabError):
            return False
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] and b"etcdserver" in reply


def tls_context(directory: Path) -> ssl.SSLContext:
    """A client context for the member whose files are in ``directory``: its CA trusted, its certificate
    shown. Raises OSError/ssl.SSLError if they cannot be read."""
    context = ssl.create_default_context(cafile=str(directory / CA_FILE))
    context.load_cert_chain(str(directory / CERT_FILE), str(directory / KEY_FILE))
    return context
