"""valley_free.yaml with real daemons, FRR and BIRD: the routers' policy does what model.graph predicts.

``Lab.up`` already waits until every router's best path has the predicted AS path (local preference
by relation included); these tests add what only the daemons can show: which paths a router is
*offered* (valley-free export) and where a client moves when the customer route goes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bgp.routers import as_paths
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES

#: A withdrawal crosses at most 4 routers here; FRR holds each update ~60 ms (bgpd + zebra), BIRD
#: under a millisecond. The margin covers a busy 2-core CI machine.
SHIFT_BOUND_S = 4 * 0.06 + 1.5


@pytest.fixture(scope="module", params=["frr", "bird"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "valley_free.yaml", name=f"tvf{request.param[0]}",
                       router_kind=request.param) as running:
        yield running


def held(lab: Lab, router: str) -> list[tuple[int, ...]]:
    return as_paths(lab.node_dir(router), lab.topo.router(router), lab.topo.anycast[0])


def test_customer_route_beats_shorter_peer_route(lab: Lab) -> None:
    assert lab.catchment() == {"ca": "far", "ct": "near", "cb": "near"} == lab.predicted()
    # a is offered near by its peer b and by its provider t1, and prefers its customer's longer path.
    assert held(lab, "a") == [(65001, 65020, 64601), (65020, 64601), (65030, 65040, 64602)]


def test_peer_routes_never_go_up(lab: Lab) -> None:
    """With far withdrawn a's best is near through its peer: its customer c gets it, its provider t1
    does not (t1 holds only its own customer route through b)."""
    t = lab.withdraw("far")
    try:
        shift = lab.wait_shifted(["ca"], t)["ca"]
        assert (shift.from_pop, shift.to_pop) == ("far", "near")
        assert shift.shift_s is not None and shift.shift_s < SHIFT_BOUND_S
        assert held(lab, "t1") == [(65020, 64601)]
        assert (65010, 65020, 64601) in held(lab, "c")
    finally:
        t = lab.announce("far")
        lab.wait_shifted(["ca"], t)
