"""Generated stage topologies: deterministic, the design's sizes, valley-free and fully reachable."""

from __future__ import annotations

import pytest

from model.generate import STAGES, Shape, generate, stage
from model.graph import predict_catchment, predict_routes
from model.load import build_topology, load_topology
from tests.conftest import TOPOLOGIES


def test_same_shape_same_topology_other_seed_other_topology() -> None:
    shape = Shape("x", regions=3, transits_per_region=5, pops_per_region=10)
    assert generate(shape) == generate(shape)
    assert generate(shape) != generate(Shape("x", regions=3, transits_per_region=5, pops_per_region=10, seed=2))


@pytest.mark.parametrize(("number", "pops", "servers"), [(1, 1, 4), (2, 50, 50), (3, 300, 300)])
def test_stages_have_the_design_sizes(number: int, pops: int, servers: int) -> None:
    topo = build_topology(stage(number))
    assert (len(topo.pops), len(topo.servers)) == (pops, servers)
    assert all(link.relation for link in topo.spec.links)


def test_global_300_script_is_stage_3() -> None:
    topo = load_topology(TOPOLOGIES / "global_300.py")
    assert (len(topo.pops), len(topo.routers), len(topo.clients)) == (300, 102, 6)
    assert topo.spec.settings.profile.name == "scale"


def test_every_router_reaches_the_anycast_prefix_and_clients_stay_home() -> None:
    """Valley-free export must still give every router a route (tier-1s peer in a full mesh, every
    transit buys from its tier-1), and each client is served in its own region."""
    topo = build_topology(stage(3))
    routes = predict_routes(topo, topo.anycast[0])
    assert all(path is not None for path in routes.values())
    region_of = {p.name: p.region for p in topo.pops}
    for client, pop in predict_catchment(topo).items():
        assert region_of[pop] == client.split("-")[0]


def test_withdrawing_a_pop_keeps_its_clients_in_region() -> None:
    data = stage(3, pops_per_region=5, transits_per_region=4)
    topo = build_topology(data)
    before = predict_catchment(topo)
    gone = before["na-c1"]
    data["pops"] = [p for p in data["pops"] if p["name"] != gone]
    after = predict_catchment(build_topology(data))
    assert after["na-c1"] != gone and after["na-c1"].startswith("na-")


def test_out_of_range_shape_names_the_field() -> None:
    with pytest.raises(ValueError, match="regions = 9 is out of range"):
        generate(Shape("x", regions=9))
    with pytest.raises(ValueError, match="stage 4 does not exist"):
        stage(4)


def test_stage_table_is_complete() -> None:
    assert sorted(STAGES) == [1, 2, 3]
