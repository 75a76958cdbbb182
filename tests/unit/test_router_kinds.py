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
from bgp.bird import BirdKind
from bgp.frr import Frr
from bgp.kind import KINDS, RouterKind, register
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
