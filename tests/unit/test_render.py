"""Config rendering against golden files (regenerate with UPDATE_GOLDEN=1 after a deliberate change)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from bgp.bird import Bird, BirdBfd
from bgp.exabgp import ExaBgp
from bgp.frr import router_daemons
from core.daemon import Daemon, NodeEnv
from core.peer_auth import PeerKeys
from core.proc import ProcessGroup
from lab.run.dns import dns_daemons
from lab.run.etcd import EtcdMember, EtcdTls
from lab.run.launchers import HealthAgent
from lab.run.net import ip_batch
from model.load import load_topology
from tests.conftest import TOPOLOGIES

GOLDEN = Path(__file__).parent / "golden" / "two_pops"
TOPO = load_topology(TOPOLOGIES / "two_pops.yaml")
RUN = Path("/run/anylab/golden")


def env(node: str) -> NodeEnv:
    return NodeEnv(node, None, RUN / node, ProcessGroup(RUN), "/venv/bin/python")


def daemons() -> list[Daemon]:
    out: list[Daemon] = []
    for r in TOPO.routers:
        out += router_daemons(env(r.name), r)
        out.append(Bird(env(r.name), replace(r, kind="bird")))
    for s in TOPO.servers:
        out += [ExaBgp(env(s.name), s), BirdBfd(env(s.name), s), HealthAgent(env(s.name), s)]
    for cp in TOPO.control_planes:
        out.append(EtcdMember(env(cp.name), cp, TOPO.control_planes, "anylab-golden", EtcdTls("ca", "cert", "key")))
    return out


VALLEY = load_topology(TOPOLOGIES / "valley_free.yaml")


def valley_daemons() -> list[Daemon]:
    """Router a of valley_free.yaml has a provider, a peer and a customer: every policy branch."""
    a = VALLEY.router("a")
    return [*router_daemons(env("a"), a)[2:], Bird(env("a"), replace(a, kind="bird"))]


GLOBAL = load_topology(TOPOLOGIES / "global.yaml")


def dns_of_global() -> list[Daemon]:
    """One DNS node of each role and software of global.yaml (its ``dns`` section)."""
    keep = {"dns-root", "dns-hidden", "p1-na-w", "p2-na-e", "p3-eu-e", "r1-na", "r2-na"}
    made = dns_daemons(GLOBAL, env, PeerKeys.make())
    return [d for node, ds in made.items() if node in keep for d in ds if not isinstance(d, BirdBfd)]


CASES = [(GOLDEN, d, path) for d in daemons() for path in d.render_config()]
CASES += [(GOLDEN.parent / "valley_free", d, path) for d in valley_daemons() for path in d.render_config()]
CASES += [(GOLDEN.parent / "global_dns", d, path) for d in dns_of_global() for path in d.render_config()]


@pytest.mark.parametrize(("where", "daemon", "path"), CASES,
                         ids=[f"{w.name}-{d.node}-{p.name}" for w, d, p in CASES])
def test_config_matches_golden(where: Path, daemon: Daemon, path: Path) -> None:
    text = daemon.render_config()[path]
    golden = where / f"{daemon.node}.{path.name}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("node", TOPO.node_names())
def test_ip_batch_matches_golden(node: str) -> None:
    text = "\n".join(ip_batch(TOPO, node)) + "\n"
    golden = GOLDEN / f"{node}.ip.batch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_prepend_repeats_own_asn() -> None:
    lax = next(d for d in daemons() if isinstance(d, ExaBgp) and d.server.pop == "lax")
    assert lax.routes() == {"routes": [{"prefix": "203.0.113.1/32", "med": 0, "as_path": [64602, 64602, 64602]}],
                            "demote": {"prepend": 3, "med": 0}}
