"""Router kinds are a registry: looked up by name, one class each, a new one added without touching
the lookup."""

from __future__ import annotations

import typing
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from bgp import kind as kind_module
from bgp import routers
from bgp.bird import BirdKind, bird_session_changes
from bgp.frr import Frr, adjchanges
from bgp.kind import KINDS, RouterKind, SessionChange, register
from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from model.load import build_topology
from model.spec import RouterSpec
from model.topology import Router

TOPO = {"name": "k", "regions": [{"name": "na"}],
        "routers": [{"name": "r1", "asn": 65001, "region": "na"}, {"name": "r2", "asn": 65002, "region": "na"}],
        "links": [{"a": "r1", "b": "r2"}],
        "pops": [{"name": "sjc", "region": "na", "asn": 64601, "upstreams": ["r2"]}],
        "clients": [{"name": "c1", "region": "na", "router": "r1"}]}


def test_the_registry_holds_one_class_per_kind() -> None:
    assert routers.kind_names() == ["bird", "frr"]
    assert isinstance(KINDS["frr"], Frr) and isinstance(KINDS["bird"], BirdKind)


def test_the_topology_schema_names_exactly_the_registered_kinds() -> None:
    """model/ sits below bgp/ and cannot read the registry: the schema's list must not drift from it."""
    allowed = typing.get_args(RouterSpec.model_fields["kind"].annotation)
    assert sorted(allowed) == routers.kind_names()


def test_an_unknown_kind_is_one_clear_error() -> None:
    r1 = build_topology(TOPO).router("r1")
    with pytest.raises(AnylabError, match="unknown router kind 'gobgp'; there are: bird, frr"):
        routers.kind_of(replace(r1, kind="gobgp"))


def test_a_name_cannot_be_registered_twice() -> None:
    class Again(Frr):
        name = "frr"

    with pytest.raises(AnylabError, match="registered twice"):
        register(Again)


def test_a_third_kind_is_one_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new suite registers itself; the lookup (bgp.routers) is not touched."""
    seen: list[str] = []

    class Fake(RouterKind):
        name = "fake"
        cli = "fakec"

        def cli_argv(self, router_dir: Path, args: list[str]) -> list[str]:
            return ["fakec", str(router_dir), *args]

        def daemons(self, env: NodeEnv, router: Router) -> list[Daemon]:
            seen.append(f"daemons {router.name}")
            return []

        def sessions(self, router_dir: Path, router: Router) -> dict[str, str]:
            return {str(n.address): "Established" for n in router.neighbors}

        def bfd_peers(self, router_dir: Path) -> dict[str, str]:
            return {}

        def session_changes(self, router_dir: Path, router: Router) -> list[SessionChange]:
            return []

        def best_as_path(self, router_dir: Path, prefix: IPv4Network) -> tuple[int, ...] | None:
            return (64601,)

        def as_paths(self, router_dir: Path, prefix: IPv4Network) -> list[tuple[int, ...]]:
            return [(64601,)]

    monkeypatch.setattr(kind_module, "KINDS", dict(KINDS))
    monkeypatch.setattr(routers, "KINDS", kind_module.KINDS)
    register(Fake)
    r2 = build_topology(TOPO).router("r2")
    fake = replace(r2, kind="fake")
    assert routers.daemons_of(NodeEnv("r2", None, tmp_path, None), fake) == []  # type: ignore[arg-type]
    assert routers.best_as_path(tmp_path, fake, IPv4Network("203.0.113.1/32")) == (64601,)
    assert set(routers.sessions(tmp_path, fake).values()) == {"Established"}
    assert seen == ["daemons r2"] and "fake" in routers.kind_names()


def test_frr_session_changes_come_from_bgpd_log_at_milliseconds(tmp_path: Path) -> None:
    log = tmp_path / "bgpd.log"
    log.write_text(
        "2026/12/05 20:20:14.676 BGP: [N9HHH-F8H1M] %ADJCHANGE: neighbor 10.0.0.3(r3) in vrf default Up\n"
        "2026/12/05 20:20:15.790 BGP: [M59KS-A3ZXZ] bgp_update_receive: rcvd End-of-RIB for IPv4 Unicast\n"
        "2026/12/05 20:20:16.001 BGP: [N9HHH-F8H1M] %ADJCHANGE: neighbor 10.1.0.21(Unknown) in vrf default Down"
        " BFD down received\n"
        "2026/12/05 20:20:1")  # a line being written
    got = adjchanges(log)
    assert [(c.neighbor, c.up, c.reason) for c in got] == [("10.0.0.3", True, ""),
                                                           ("10.1.0.21", False, "BFD down received")]
    assert round(got[1].t_wall - got[0].t_wall, 3) == 1.325
    assert adjchanges(tmp_path / "none.log") == []


def test_bird_session_changes_come_from_its_state_trace(tmp_path: Path) -> None:
    r1 = build_topology(TOPO).router("r1")
    log = tmp_path / "bird.log"
    log.write_text("2026-12-05 20:25:59.463 <TRACE> n0: State changed to start\n"
                   "2026-12-05 20:26:03.972 <TRACE> n0: State changed to up\n"
                   "2026-12-05 20:26:09.270 <TRACE> n0: State changed to stop\n"
                   "2026-12-05 20:26:09.270 <TRACE> n0: State changed to flush\n"
                   "2026-12-05 20:26:09.270 <TRACE> n0: State changed to down\n"
                   "2026-12-05 20:26:09.270 <TRACE> n99: State changed to up\n")  # no such neighbour
    got = bird_session_changes(log, r1)
    assert [(c.neighbor, c.up) for c in got] == [(str(r1.neighbors[0].address), True),
                                                 (str(r1.neighbors[0].address), False)]
    assert round(got[1].t_wall - got[0].t_wall, 3) == 5.298
