"""Placement: regions kept whole, attached nodes with their router, the cut = the links between hosts."""

from __future__ import annotations

import pytest

from core.errors import TopologyError
from model.generate import stage
from model.load import build_topology, load_topology
from model.placement import place
from tests.conftest import TOPOLOGIES


def test_global_over_three_hosts_is_one_region_each() -> None:
    topo = load_topology(TOPOLOGIES / "global.yaml")
    p = place(topo, 3)
    region_of = {r.name: r.region for r in topo.routers}
    for host in range(3):
        assert len({region_of[n] for n in p.nodes_on(host) if n in region_of}) == 1
    for s in topo.servers:
        assert p.host_of[s.name] == p.host_of[s.neighbors[0].node]
    assert p.cut and all(region_of[a.node] != region_of[b.node] for a, b in p.cut)
    assert all(p.host_of[a.node] != p.host_of[b.node] for a, b in p.cut)


def test_more_hosts_than_regions_split_regions_and_stay_balanced() -> None:
    topo = build_topology(stage(3, pops_per_region=5, transits_per_region=4))
    p = place(topo, 8)
    sizes = [len(p.nodes_on(h)) for h in range(8)]
    assert min(sizes) > 0 and max(sizes) <= 2 * min(sizes) + 6
    assert place(topo, 8) == p  # deterministic


def test_one_host_cuts_nothing_and_too_many_hosts_is_an_error() -> None:
    topo = load_topology(TOPOLOGIES / "two_pops.yaml")
    assert place(topo, 1).cut == ()
    with pytest.raises(TopologyError, match=r"settings\.hosts: 4 hosts for 3 routers"):
        place(topo, 4)
    with pytest.raises(TopologyError, match=r"settings\.hosts"):
        load_topology(TOPOLOGIES / "two_pops.yaml", hosts=4)
