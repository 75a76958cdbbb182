"""Each daemon class starts, becomes ready and stops cleanly inside a namespace (real FRR and ExaBGP).

Namespaces are named ``anylab-t<pid>-…`` and removed after each test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bgp.exabgp import ExaBgp
from bgp.frr import established_peers, prepare_dir, router_daemons
from bgp.routers import best_as_path, daemons_of
from core import netns
from core.daemon import NodeEnv
from core.proc import ProcessGroup, recorded_procs
from core.wait import wait_for
from model.load import load_topology
from tests.conftest import TOPOLOGIES

TOPO = load_topology(TOPOLOGIES / "two_pops.yaml")
PREFIX = f"anylab-t{os.getpid()}-"


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("run")
    os.chmod(path, 0o755)  # the frr user must reach the router directories below it
    os.chmod(path.parent, 0o755)
    os.chmod(path.parent.parent, 0o755)
    yield path
    leftovers = recorded_procs(path)
    for proc in leftovers:
        proc.stop()
    assert leftovers == [], "a daemon survived its stop()"


@pytest.fixture
def spaces() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        netns.delete(name)


def veth(a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
    subprocess.run(["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b], check=True)
    for ns, intf, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", intf], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", intf, "up"], check=True)


def test_frr_router_starts_ready_stops(run_dir: Path, spaces: list[str]) -> None:
    spaces.append(PREFIX + "r2")
    path = netns.add(spaces[0])
    procs = ProcessGroup(run_dir)
    env = NodeEnv("r2", path, run_dir / "r2", procs)
    prepare_dir(env.dir)
    daemons = router_daemons(env, TOPO.router("r2"))
    for d in daemons:
        d.write_config()
        d.validate()
    for d in daemons:
        d.start()
        d.wait_ready()
    peers = established_peers(env.dir)
    assert set(peers) == {"10.0.0.0", "10.1.0.1"}  # configured, not yet up: nobody is there
    for d in reversed(daemons):
        d.stop()
        assert d.proc is not None and not d.proc.alive()


def test_frr_validate_rejects_a_bad_config(run_dir: Path) -> None:
    procs = ProcessGroup(run_dir)
    env = NodeEnv("r2", None, run_dir / "r2", procs)
    prepare_dir(env.dir)
    bgpd = router_daemons(env, TOPO.router("r2"))[2]
    bgpd.write_config()
    bgpd.path(".conf").write_text(bgpd.path(".conf").read_text().replace("remote-as", "remote-ass"))
    with pytest.raises(Exception, match="r2/bgpd: dry run"):
        bgpd.validate()


@pytest.mark.parametrize("kind", ["frr", "bird"])
def test_exabgp_announces_demotes_withdraws(run_dir: Path, spaces: list[str], kind: str) -> None:
    """lax-s1 (prepend 2) peers with r3 (FRR or BIRD): once the agent's ``set normal`` arrives r3 has the
    anycast route with AS path 64602 ×3 (ExaBGP sends the path verbatim), ``set demoted`` prepends 3
    more, and the operator's withdrawal removes it whatever the agent wants."""
    spaces += [PREFIX + "r3", PREFIX + "lax"]
    r3_ns, lax_ns = netns.add(spaces[0]), netns.add(spaces[1])
    veth(spaces[0], "r3-eth1", "10.1.0.2/31", spaces[1], "lax-s1-eth0", "10.1.0.3/31")
    procs = ProcessGroup(run_dir)
    r3_env = NodeEnv("r3", r3_ns, run_dir / "r3", procs)
    r3 = replace(TOPO.router("r3"), kind=kind)
    routers = daemons_of(r3_env, r3)
    lax_env = NodeEnv("lax-s1", lax_ns, run_dir / "lax-s1", procs)
    lax_env.dir.mkdir()
    exa = ExaBgp(lax_env, TOPO.server("lax-s1"))
    for d in [*routers, exa]:
        d.write_config()
        d.validate()
    for d in [*routers, exa]:
        d.start()
        d.wait_ready()
    prefix = TOPO.anycast[0]

    def path() -> tuple[int, ...] | None:
        return best_as_path(r3_env.dir, r3, prefix)

    exa.api("set", mode="normal")
    wait_for(lambda: path() == (64602,) * 3, timeout=20, what="the anycast route at r3", describe=lambda: str(path()))
    exa.api("set", mode="demoted")
    wait_for(lambda: path() == (64602,) * 6, timeout=10, what="the demoted route", describe=lambda: str(path()))
    exa.api("withdraw")
    wait_for(lambda: path() is None, timeout=10, what="the withdrawal at r3", describe=lambda: str(path()))
    exa.stop()
    for d in reversed(routers):
        d.stop()
