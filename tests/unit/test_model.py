"""Topology validation: the valid files load, every malformed file gives its one clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import TopologyError
from model.load import build_topology, load_topology
from tests.conftest import PROJECT, TOPOLOGIES

MALFORMED = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <message part>'"
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 20


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_file_gives_its_message(path: Path) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected_message(path) in message
    assert ". Fix: " in message and len(info.value.fix) > 5


@pytest.mark.parametrize("name", ["two_pops.yaml", "global.yaml", "regions.py", "valley_free.yaml", "stages.py",
                                  "global_300.py"])
def test_shipped_topologies_load(name: str) -> None:
    topo = load_topology(TOPOLOGIES / name)
    assert topo.routers and topo.servers and topo.clients


def test_bad_topology_exits_2_and_names_file(tmp_path: Path) -> None:
    bad = MALFORMED[0]
    res = subprocess.run([sys.executable, "-m", "lab.cli.main", "graph", "-o", str(tmp_path / "x.mmd"), str(bad)],
                         capture_output=True, text=True, cwd=PROJECT, check=False)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "Fix:" in res.stderr


def test_missing_file_is_a_topology_error() -> None:
    with pytest.raises(TopologyError, match="cannot be read"):
        load_topology(TOPOLOGIES / "no-such.yaml")


def test_addresses_are_deterministic_and_stable() -> None:
    a = load_topology(TOPOLOGIES / "global.yaml")
    b = load_topology(TOPOLOGIES / "global.yaml")
    assert list(a.interfaces()) == list(b.interfaces())
    assert [r.loopback for r in a.routers] == [r.loopback for r in b.routers]
    # Adding a client at the end renumbers nothing that existed.
    data = a.spec.model_dump(mode="json")
    data["clients"].append({"name": "na-c3", "region": "na", "router": "na-w"})
    c = build_topology(data)
    old = {(i.node, i.name): i.address for i in a.interfaces()}
    new = {(i.node, i.name): i.address for i in c.interfaces()}
    assert all(new[k] == v for k, v in old.items())


def test_explicit_addresses_are_used() -> None:
    data = load_topology(TOPOLOGIES / "two_pops.yaml").spec.model_dump(mode="json")
    data["links"][0]["addresses"] = ["192.0.2.0/31", "192.0.2.1/31"]
    data["routers"][0]["loopback"] = "192.0.2.100"
    topo = build_topology(data)
    r1 = topo.router("r1")
    assert str(r1.loopback) == "192.0.2.100"
    assert str(r1.interfaces[0].address) == "192.0.2.0/31"
    assert str(topo.router("r2").neighbors[0].address) == "192.0.2.0"


def test_sessions_follow_links() -> None:
    topo = load_topology(TOPOLOGIES / "two_pops.yaml")
    r2 = topo.router("r2")
    assert sorted(n.node for n in r2.neighbors) == ["r1", "sjc-s1"]
    sjc = topo.server("sjc-s1")
    assert [(n.node, n.asn) for n in sjc.neighbors] == [("r2", 65002)]
    assert sjc.prefixes == topo.anycast


def test_unknown_node_lookup_is_a_lab_error() -> None:
    from core.errors import AnylabError

    topo = load_topology(TOPOLOGIES / "two_pops.yaml")
    with pytest.raises(AnylabError, match="no PoP named 'nyc'; there are: sjc, lax"):
        topo.pop("nyc")
