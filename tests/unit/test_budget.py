"""The estimate before `up` agrees with what bench/scale.py measured, and refuses what will not fit."""

from __future__ import annotations

import pytest

from model.budget import CONTROL_PLANE, Estimate, estimate, verdict
from model.generate import stage
from model.load import build_topology, load_topology
from tests.conftest import TOPOLOGIES

# bench/scale.py, 2026-11-27 (README, "Scale, measured"): PoPs, kind → lab PSS (GB), idle CPU (cores).
MEASURED = {(30, "bird"): (1.3, 0.23), (30, "frr"): (1.7, 0.24), (102, "bird"): (3.3, 0.41),
            (102, "frr"): (4.4, 0.43), (300, "bird"): (9.0, 0.80), (300, "frr"): (11.7, 0.86)}
SHAPES = {30: (5, 2), 102: (17, 6), 300: (50, 16)}


def _stage3(pops: int, kind: str) -> Estimate:
    """The estimate of what bench/scale.py ran then: before issue 22's control plane nodes."""
    per_region, transits = SHAPES[pops]
    data = stage(3, pops_per_region=per_region, transits_per_region=transits, name="g")
    data["routers"] = [{**r, "kind": kind} for r in data["routers"]]
    topo = build_topology(data, "t")
    got = estimate(topo)
    n = len(topo.control_planes)
    return Estimate(got.memory - n * CONTROL_PLANE[0], got.cpu - n * CONTROL_PLANE[1], got.servers, got.routers)


@pytest.mark.parametrize(("pops", "kind"), sorted(MEASURED))
def test_the_estimate_is_within_its_stated_error_of_the_measurement(pops: int, kind: str) -> None:
    """Memory within 7 %, idle CPU within 15 % (the module states 6 % and 12 %, measured)."""
    got = _stage3(pops, kind)
    memory_gb, cpu = MEASURED[(pops, kind)]
    assert got.memory / 1e9 == pytest.approx(memory_gb, rel=0.07)
    assert got.cpu == pytest.approx(cpu, rel=0.15)


# bench/startup.py --runs 3, 2026-12-04 (docs/results.md): the split labs' PSS summed over node kinds, MB,
# with a control plane node per region; global.yaml again with its DNS (--runs 1, 2026-12-04: 16 DNS nodes).
STARTUP = {"two_pops.yaml": 374.8, "global.yaml": 1600.0, "regions.py": 1860.1}


@pytest.mark.parametrize("name", sorted(STARTUP))
def test_the_estimate_of_the_shipped_topologies_is_within_4_percent(name: str) -> None:
    got = estimate(load_topology(TOPOLOGIES / name))
    assert got.memory / 1e6 == pytest.approx(STARTUP[name], rel=0.04)


def test_fifteen_hundred_servers_do_not_fit_this_machine() -> None:
    """399 PoPs (the generator's most) of 4 servers: the design's stage 3 scaled up."""
    data = stage(3, regions=7, pops_per_region=57, transits_per_region=20, servers=4, name="g")
    need = estimate(build_topology(data, "t"))
    refusal, _ = verdict(need, available_memory=22e9, cores=2)
    assert need.servers == 1596 and need.memory > 45e9
    assert refusal is not None and refusal.startswith("needs ≈ ") and "22.0 GB available" in refusal


def test_a_lab_past_the_planning_share_is_a_warning_not_a_refusal() -> None:
    need = Estimate(memory=10e9, cpu=0.4, servers=300, routers=100)
    assert verdict(need, 24e9, 2) == (None, None)
    refusal, warning = verdict(need, 13e9, 2)
    assert refusal is None and warning is not None and "more than 70% of the 13.0 GB" in warning
    refusal, warning = verdict(Estimate(1e9, 1.5, 10, 10), 24e9, 2)
    assert refusal is None and warning is not None and "more than 50% of 2 cores" in warning
