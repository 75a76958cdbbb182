"""Timer profiles: names, overrides on a base, per-router/PoP selection, and the bounds they imply."""

from __future__ import annotations

from typing import Any

import pytest

from bgp.exabgp_api import ApiState, Route
from core.errors import TopologyError
from model.load import build_topology
from model.profiles import NAMED, named


def topo(settings: dict[str, Any] | None = None, router: dict[str, Any] | None = None,
         pop: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "p", "settings": settings or {}, "regions": [{"name": "na"}],
            "routers": [{"name": "r1", "asn": 65001, "region": "na", **(router or {})}],
            "pops": [{"name": "sjc", "region": "na", "asn": 64601, "upstreams": ["r1"], **(pop or {})}],
            "clients": [{"name": "c1", "region": "na", "router": "r1"}]}


@pytest.mark.parametrize("name", list(NAMED))
def test_every_named_profile_is_valid(name: str) -> None:
    assert named(name).name == name


def test_fast_profile_detects_within_110_ms() -> None:
    fast = named("fast")  # 50 ms + one 30 ms hung check + the last one's 30 ms timeout
    assert fast.health.detection_bound == pytest.approx(0.110)
    assert fast.bfd is not None and fast.bfd.detect_s == pytest.approx(0.15)
    # A silent neighbour: BFD's 150 ms with it, the hold time without (the design's seed timers: 90 s).
    assert fast.silence_detect_s == pytest.approx(0.15) and named("seed").silence_detect_s == 90.0


def test_seed_profile_is_the_design_timeline() -> None:
    seed = named("seed")
    assert (seed.keepalive, seed.hold, seed.bfd) == (30, 90, None)
    assert seed.health.interval * seed.health.fall == 5.0  # "health check detects in 5 s"


def test_default_is_fast_and_routers_pops_inherit() -> None:
    t = build_topology(topo())
    assert t.routers[0].profile.name == t.pops[0].profile.name == "fast"
    assert all(n.profile.bfd for n in t.routers[0].neighbors)


def test_override_builds_on_the_topology_profile() -> None:
    t = build_topology(topo({"profile": "datacenter"}, pop={"profile": {"health": {"fall": 5}}}))
    pop = t.pops[0].profile
    assert pop.name == "datacenter*" and pop.hold == 9 and pop.health.fall == 5
    assert pop.health.interval == 1.0  # the rest of health comes from the base


def test_session_profile_is_the_pops_for_a_server_session() -> None:
    t = build_topology(topo({"profile": "seed"}, pop={"profile": "fast"}))
    (session,) = t.routers[0].neighbors
    assert session.profile.name == "fast" and t.routers[0].profile.name == "seed"


@pytest.mark.parametrize(("settings", "field", "words"), [
    ({"profile": "quick"}, "settings.profile", "unknown profile 'quick'"),
    ({"profile": {"base": "fast", "keepalive": 2}}, "settings.profile", "keepalive 2 s does not fit hold 3 s"),
    ({"profile": {"bfd": {"interval_ms": 1}}}, "settings.profile.bfd.interval_ms", "greater than or equal to 10"),
    ({"profile": {"health": {"demote": {"prepend": 0}}}}, "settings.profile.health.demote", "changes nothing"),
])
def test_bad_profiles_name_the_field(settings: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(TopologyError) as err:
        build_topology(topo(settings), "t.yaml")
    assert f"t.yaml: {field}" in str(err.value) and words in str(err.value)


def test_demoted_route_prepends_and_raises_med() -> None:
    r = Route.from_json({"prefix": "203.0.113.1/32", "med": 10, "as_path": [64601]})
    d = r.demoted(prepend=2, med=100)
    assert d.as_path == (64601, 64601, 64601) and d.med == 110
    assert d.command("announce") == "announce route 203.0.113.1/32 next-hop self med 110 as-path [ 64601 64601 64601 ]"


@pytest.mark.parametrize(("agent", "admin_down", "effective"), [
    ("normal", False, "normal"), ("demoted", False, "demoted"), ("withdrawn", False, "withdrawn"),
    ("normal", True, "withdrawn"), ("demoted", True, "withdrawn"),
])
def test_operator_shutdown_wins_over_the_agent(agent: str, admin_down: bool, effective: str) -> None:
    assert ApiState((), (), agent=agent, admin_down=admin_down).effective == effective
