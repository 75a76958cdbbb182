"""The operator's tools without a lab: node expressions, what exec runs on a node, capture's bounds,
validate's configurations and dry run (which must be able to say no)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bgp.frr import Bgpd
from core.errors import UsageError
from lab.cli.nodes import node_argv, select_nodes
from lab.run.capture import CaptureSpec
from lab.run.dryrun import SECRET, render_configs
from model.load import load_topology
from tests.conftest import TOPOLOGIES

TOPO = load_topology(TOPOLOGIES / "two_pops.yaml")
BIRD = load_topology(TOPOLOGIES / "two_pops.yaml", "bird")
RUN = Path("/run/anylab/t")


@pytest.mark.parametrize(("expression", "nodes"), [
    ("r1", ["r1"]),
    ("r2,r1", ["r1", "r2"]),  # the topology's order, not the expression's
    ("r1,r1", ["r1"]),
    ("r*", ["r1", "r2", "r3"]),
    ("routers", ["r1", "r2", "r3"]),
    ("servers,c1", ["sjc-s1", "lax-s1", "c1"]),
])
def test_node_expressions(expression: str, nodes: list[str]) -> None:
    assert select_nodes(TOPO, expression) == nodes


@pytest.mark.parametrize(("expression", "words"), [
    ("", "give a node name"),
    ("r1,", "give a node name"),
    ("r9", "no node 'r9' in topology two-pops"),
    ("x*", r"no node 'x\*'"),
])
def test_bad_node_expressions(expression: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        select_nodes(TOPO, expression)


def test_each_suite_client_is_pointed_at_its_router() -> None:
    assert node_argv(TOPO, RUN, "r1", ["vtysh", "-c", "show bgp summary"]) == [
        "/usr/bin/vtysh", "--vty_socket", "/run/anylab/t/r1", "-c", "show bgp summary"]
    assert node_argv(BIRD, RUN, "r2", ["birdc", "show", "protocols"]) == [
        "/usr/sbin/birdc", "-s", "/run/anylab/t/r2/bird.ctl", "show", "protocols"]
    assert node_argv(TOPO, RUN, "c1", ["ip", "route"]) == ["ip", "route"]
    assert node_argv(TOPO, RUN, "sjc-s1", ["exabgpcli"]) == [
        sys.executable, "-m", "bgp.exabgp_api", "--dir", "/run/anylab/t/sjc-s1", "--ask", "status"]


@pytest.mark.parametrize(("topo", "node", "argv", "words"), [
    (TOPO, "r1", ["birdc", "show", "status"], "r1 is a frr router: use vtysh, not birdc"),
    (BIRD, "r1", ["vtysh"], "r1 is a bird router: use birdc, not vtysh"),
    (TOPO, "c1", ["vtysh"], "c1 is not a router"),
    (TOPO, "r1", ["exabgpcli", "status"], "r1 is not a PoP server"),
    (TOPO, "sjc-s1", ["exabgpcli", "announce", "route"], "answers status and show neighbor"),
    (TOPO, "r1", [], "give the command to run after '--'"),
])
def test_what_a_node_cannot_run(topo: Any, node: str, argv: list[str], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        node_argv(topo, RUN, node, argv)


@pytest.mark.parametrize(("count", "seconds", "output", "words"), [
    (0, 1.0, "/tmp/x.pcap", "--count 0"),
    (10, 0.0, "/tmp/x.pcap", "--duration 0"),
    (10, 4000.0, "/tmp/x.pcap", "--duration 4000"),
    (10, 1.0, "/nonexistent-dir/x.pcap", "the directory /nonexistent-dir does not exist"),
    (10, 1.0, "/tmp", "is a directory"),
])
def test_capture_bounds(count: int, seconds: float, output: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        CaptureSpec("/run/netns/x", "r1-eth0", output, count, seconds).check()


def test_capture_runs_tcpdump_in_the_namespace_bounded() -> None:
    argv = CaptureSpec("/run/netns/anylab-t-r1", "r1-eth0", "/tmp/x.pcap", 5, 1.0, "tcp port 179").argv()
    assert argv[:4] == ["nsenter", "--net=/run/netns/anylab-t-r1", "--", "/usr/bin/tcpdump"]
    assert argv[argv.index("-c") + 1] == "5" and argv[-1] == "tcp port 179"


def test_configs_render_without_a_lab_and_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    rendered, errors = render_configs(TOPO, ["r1", "control"], None, dry_run=False)
    assert errors == [] and set(rendered) == {"r1", "control"}
    assert "router bgp 65001" in rendered["r1"]["bgpd.conf"]
    assert SECRET in rendered["control"].values()  # tokens are not shown
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


@pytest.mark.root
def test_the_dry_run_accepts_and_can_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FRR's own check, on a good config and on one broken on purpose (a weakened render); and a
    directory FRR's user cannot read is a rejection, not a pass (FRR itself exits 0 on it)."""
    _, errors = render_configs(TOPO, ["r1"], None, dry_run=True)  # the scratch directory
    assert errors == []
    _, errors = render_configs(TOPO, ["r1"], tmp_path / "unreadable", dry_run=True)  # pytest's tmp: 0700
    assert errors and all("can't open configuration file" in e for e in errors)
    good = Bgpd.render_config

    def broken(self: Bgpd) -> dict[Path, str]:
        return {p: t.replace(" bgp router-id", " no-such-command here\n bgp router-id") for p, t in
                good(self).items()}

    monkeypatch.setattr(Bgpd, "render_config", broken)
    _, errors = render_configs(TOPO, ["r1"], None, dry_run=True)
    assert len(errors) == 1 and errors[0].startswith("r1/bgpd: ") and "No such command" in errors[0]


def test_what_runs_as_root_is_said() -> None:
    from lab.cli.main import _root_warnings

    assert _root_warnings(TOPO, TOPOLOGIES / "two_pops.yaml") == []
    script = load_topology(TOPOLOGIES / "regions.py")
    assert _root_warnings(script, TOPOLOGIES / "regions.py")[0].endswith("run only scripts you trust")
    data = {"name": "cmd", "regions": [{"name": "na"}], "routers": [{"name": "r1", "asn": 65001, "region": "na"}],
            "pops": [{"name": "sjc", "asn": 64601, "region": "na", "upstreams": ["r1"],
                      "profile": {"base": "fast", "health": {"checks": [{"kind": "command", "argv": ["true"]}]}}}],
            "clients": [{"name": "c1", "region": "na", "router": "r1"}]}
    from model.load import build_topology

    warned = _root_warnings(build_topology(data, "t.yaml"), Path("t.yaml"))
    assert warned == ["health checks of kind 'command' run as root in the PoP servers of sjc"]


def test_a_lab_that_cannot_fit_is_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.cli import main

    monkeypatch.setattr(main, "_available_memory", lambda: 0.2e9)
    with pytest.raises(UsageError, match=r"two-pops needs ≈ 0\.4 GB .* 0\.2 GB available .*; --force starts it"):
        main._budget(TOPO, force=False)
    assert "0.2 GB available" in str(main._budget(TOPO, force=True))
    monkeypatch.setattr(main, "_available_memory", lambda: 100e9)
    assert main._budget(TOPO, force=False) is None
