"""The chaos soak's schedule (lab.faults.chaos): reproducible, Poisson, bounded as it says."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import pytest

from core.errors import UsageError
from lab.faults.chaos import BUSY, LATE, OVERLAP, REGIONS, FaultClass, Planned, catalogue, draw, summary, topology_rules
from model.load import load_topology
from tests.conftest import TOPOLOGIES


def injected(schedule: list[Planned]) -> list[Planned]:
    return [p for p in schedule if p.skipped is None]


def concurrent(schedule: list[Planned]) -> list[list[Planned]]:
    """For each injected fault, the injected faults active when it began (itself included)."""
    ins = injected(schedule)
    return [[x for x in ins if x.t <= p.t < x.end] for p in ins]


def test_the_same_seed_draws_the_same_schedule_and_another_seed_another() -> None:
    classes = [FaultClass("a", "pop-down", ("p1", "p2"), 1.0, 2.0), FaultClass("b", "server-silent", ("s1",), 2.0, 1.0)]
    one = draw(classes, 200.0, seed=3, day_s=5.0)
    assert one == draw(list(reversed(classes)), 200.0, seed=3, day_s=5.0)  # the classes' order does not matter
    assert one != draw(classes, 200.0, seed=4, day_s=5.0)
    assert [p.t for p in one] == sorted(p.t for p in one)


def test_arrivals_are_poisson_at_the_scaled_mtbf_and_repairs_log_normal_at_their_median() -> None:
    # One target, MTBF 2 days of 0.5 s: a rate of 1/s over 10 000 s; no bound in the way.
    schedule = draw([FaultClass("x", "pop-down", ("p",), 2.0, 0.001, 0.5)], 10_000.0, seed=1, day_s=0.5,
                    max_overlap=10**6)
    n = len(schedule)
    assert abs(n - 10_000) < 4 * 10_000 ** 0.5, n  # Poisson: sd = √mean
    gaps = [b.t - a.t for a, b in itertools.pairwise(schedule)]
    assert statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: sd = mean
    assert statistics.median(p.repair_s for p in schedule) == pytest.approx(0.001, rel=0.05)


def test_injected_faults_respect_the_overlap_bound_their_targets_and_the_end() -> None:
    classes = [FaultClass("a", "pop-down", tuple(f"p{i}" for i in range(6)), 0.5, 5.0)]
    schedule = draw(classes, 300.0, seed=9, day_s=10.0, max_overlap=2)
    assert {p.skipped for p in schedule} >= {None, OVERLAP}
    for active in concurrent(schedule):
        assert len(active) <= 2
        assert len({p.target for p in active}) == len(active)
    assert all(p.end <= 300.0 for p in injected(schedule))
    assert all(p.end > 300.0 for p in schedule if p.skipped == LATE)
    table = summary(schedule)["a"]
    assert table["injected"] == len(injected(schedule)) and sum(table.values()) == len(schedule)


def test_on_global_yaml_no_two_regions_lose_storage_or_control_at_once_and_nothing_fatal_unless_asked() -> None:
    topo = load_topology(TOPOLOGIES / "global.yaml")
    classes = catalogue(topo)
    assert not any(c.fatal for c in classes)
    assert "catastrophic" in {c.scenario for c in catalogue(topo, fatal=True)}
    assert {c.name for c in classes} >= {"service", "speaker", "server", "pop", "link", "link-degrade", "region",
                                         "kv", "do", "control-plane", "origin", "dns"}
    footprint, regions_of = topology_rules(topo)
    # Storage and control plane faults 10× as often as the defaults: enough of them overlap to meet the bound.
    busy = [FaultClass(c.name, c.scenario, c.targets, c.mtbf_days / (10 if c.name in ("kv", "do", "control-plane")
                                                                     else 1), c.repair_median_s) for c in classes]
    schedule = draw(busy, 600.0, seed=5, day_s=2.0, max_overlap=3, max_regions=1, footprint=footprint,
                    regions_of=regions_of)
    skipped = {p.skipped for p in schedule}
    assert {None, REGIONS, BUSY} <= skipped, summary(schedule)
    for active in concurrent(schedule):
        assert len(set().union(*(regions_of(p.scenario, p.target) for p in active))) <= 1, active
        nodes = [footprint(p.scenario, p.target) for p in active]
        assert all(not (a & b) for i, a in enumerate(nodes) for b in nodes[i + 1:]), active
    # A region-wide fault and a fault on one of its PoPs touch the same servers.
    assert footprint("pops-down", "eu") & footprint("pop-down", "fra")
    assert regions_of("pops-down", "eu") == {"eu"} and regions_of("cp-down", "cp-na") == {"na"}


@pytest.mark.parametrize(("duration", "day", "overlap", "regions"), [(0, 1, 1, 1), (10, 0, 1, 1), (10, 1, 0, 1),
                                                                     (10, 1, 1, -1)])
def test_a_bound_out_of_range_is_refused(duration: float, day: float, overlap: int, regions: int) -> None:
    with pytest.raises(UsageError):
        draw([], duration, 1, day, overlap, regions)


def test_the_dry_run_lists_every_arrival_and_the_classes() -> None:
    from lab.measure.chaos import ChaosSpec, nines, schedule, schedule_table

    topo = load_topology(TOPOLOGIES / "global.yaml")
    planned = schedule(topo, ChaosSpec(120.0, 7))
    text = schedule_table(planned)
    assert len(text.splitlines()) == 1 + len(planned) + 1 + len(summary(planned))
    assert planned == schedule(topo, ChaosSpec(120.0, 7))
    with pytest.raises(UsageError, match="a soak lasts"):
        schedule(topo, ChaosSpec(5.0, 7))
    assert nines(0.9999) == pytest.approx(4.0) and nines(1.0) == float("inf") and nines(None) is None


def test_the_reference_puts_each_class_alone_on_what_serves_the_clients() -> None:
    from lab.measure.chaos import ChaosSpec, reference_schedule, serving_nodes, soak_topology

    topo = soak_topology(TOPOLOGIES / "global.yaml")
    assert topo.spec.settings.profile.health.timeout == 0.5 and topo.spec.settings.profile.bfd is not None
    assert topo.spec.settings.probe_rate_hz == 200.0
    serving = serving_nodes(topo)
    plan = reference_schedule(topo, ChaosSpec(600.0, 7), rounds=2, gap_s=10.0)
    classes = catalogue(topo)
    assert [p.cls for p in plan] == [c.name for c in classes] * 2
    assert all(b.t >= a.end + 10.0 - 1e-9 for a, b in itertools.pairwise(plan))  # never two at once
    footprint = topology_rules(topo)[0]
    for cls in ("service", "speaker", "server", "pop", "link", "region"):
        assert all(footprint(p.scenario, p.target) & serving for p in plan if p.cls == cls), cls


def test_a_sampled_figure_is_compared_first_third_against_last_third() -> None:
    from lab.measure.chaos import trend

    assert trend([{"pss_mb": 1.0}, {"pss_mb": 2.0}], "pss_mb") is None
    got = trend([{"pss_mb": v} for v in (100.0, 102.0, 101.0, 103.0, 110.0, 112.0)], "pss_mb")
    assert got == {"first_third": 101.0, "last_third": 111.0, "growth": 10.0, "growth_pct": 9.9, "samples": 6}


def test_the_longest_soak_fits_its_workloads_longest_run() -> None:
    from lab.load import MAX_LOAD_S
    from lab.measure.chaos import MAX_DURATION_S, WARMUP_S, WIND_DOWN_S

    # The first hour-long bench died here: the HTTP and DO tools refused a run past 3 600 s and exited.
    assert MAX_DURATION_S + WARMUP_S + WIND_DOWN_S <= MAX_LOAD_S


def test_a_repair_settles_when_the_touched_nodes_sessions_are_back_and_other_downs_are_reported() -> None:
    from lab.measure.chaos import SETTLE_MAX_S, SessionEvent, sessions_down_unexplained, settle
    from lab.record.availability import Window

    windows = [Window("pop-down sin", "pop", 10.0, 20.0), Window("link-down a:b", "link", 30.0, 32.0)]
    touched = {"pop-down sin": frozenset({"sin-s1"}), "link-down a:b": frozenset({"a", "b"})}
    changes = [SessionEvent(*c) for c in [
        (10.2, "ap-w", "sin-s1", False, "BFD down received"),
        (24.5, "ap-w", "sin-s1", True, ""),  # the PoP's speaker back 4.5 s after the repair
        (25.0, "ap-w", "syd-s1", True, ""),  # not a node the fault touched
        (30.1, "a", "b", False, "Interface down"),
        (33.0, "a", "b", True, ""),
        (32.5 + SETTLE_MAX_S + 1, "a", "b", True, ""),  # too late to be this repair's
        (50.0, "ap-w", "hkg-s1", False, "BFD down received")]]  # no fault: the routing's own flap
    got = settle(windows, touched, changes)
    assert [w.t_settled for w in got] == [24.5, 33.0] and got[0].t_over == 24.5
    assert settle(windows, touched, [])[0].t_settled is None and windows[0].t_over == 20.0
    assert sessions_down_unexplained(got, touched, changes, 3.0) == [
        SessionEvent(50.0, "ap-w", "hkg-s1", False, "BFD down received")]


def test_a_process_the_autoscaler_started_during_the_soak_is_not_a_leak() -> None:
    from lab.measure.chaos import autoscaled, soak_topology

    topo = soak_topology(TOPOLOGIES / "global.yaml")
    cp = topo.control_plane_of("apac").name
    events = [{"t": 50.0, "control_plane": "apac", "from": 1, "to": 2,
               "result": {"region": "apac", "replicas": 2, "started": ["control-plane-1"]}},
              {"t": 60.0, "control_plane": "eu", "from": 2, "to": 3, "error": "not ready in 30 s"},
              {"t": 500.0, "control_plane": "na", "result": {"started": ["control-plane-1"]}}]  # after the soak
    grown = autoscaled(topo, events, 200.0)
    assert grown(cp, "control-plane-1") and not grown(cp, "control-plane-2") and not grown(cp, "etcd")
    assert not grown(topo.control_plane_of("na").name, "control-plane-1")
    # asked for and not ready in time: started all the same
    eu = topo.control_plane_of("eu").name
    assert grown(eu, "control-plane-2") and not grown(eu, "control-plane-1")


def test_an_autoscale_event_that_does_not_parse_explains_no_process() -> None:
    from lab.measure.chaos import autoscaled, soak_topology

    topo = soak_topology(TOPOLOGIES / "global.yaml")
    cp = topo.control_plane_of("apac").name
    bad = [{"t": "soon", "control_plane": "apac", "from": 1, "to": 2},
           {"t": 50.0, "control_plane": "apac", "from": "one", "to": 2},
           {"t": 50.0, "control_plane": "mars", "from": 1, "to": 2},
           {"t": 50.0, "pop": "atlantis"}]
    grown = autoscaled(topo, bad, 200.0)
    assert not grown(cp, "control-plane-1") and not grown(topo.pops[0].servers[0], "edge")
    # the same events, well formed, would have explained it (the check can come out the other way)
    assert autoscaled(topo, [{"t": 50.0, "control_plane": "apac", "from": 1, "to": 2}], 200.0)(cp, "control-plane-1")


def test_a_flap_is_a_failed_check_outside_every_fault_touching_its_server() -> None:
    from lab.measure.chaos import FLAP_MARGIN_S, failed_checks, flap_lead
    from lab.record.availability import Window
    from model.profiles import LOADED_BOX_HEALTH, HealthSpec

    windows = [Window("server-silent a", "server", 10.0, 20.0, t_settled=22.0), Window("pop-down p", "pop", 30.0, 40.0)]
    touched = {"server-silent a": frozenset({"a"}), "pop-down p": frozenset({"b"})}
    events: list[dict[str, Any]] = [
              {"t": 5.0, "event": "check-failed"},     # before any fault: a flap
              {"t": 15.0, "event": "check-failed"},    # inside a's own fault
              {"t": 21.5, "event": "check-failed"},    # after the repair, before its routing settled: a's fault still
              {"t": 25.0, "event": "check-ok"},        # not a failure
              {"t": 35.0, "event": "check-failed"},    # another server's fault: a flap of a's
              {"t": "x", "event": "check-failed"},     # no usable time
              {"t": 99.0, "event": "check-failed"}]    # after the soak
    lead = flap_lead(HealthSpec(**LOADED_BOX_HEALTH))
    # LOADED_BOX: one check's detection is the 0.5 s timeout (longer than the 0.2 s interval) plus the timeout
    assert lead == pytest.approx(1.0 + FLAP_MARGIN_S)
    assert failed_checks("a", events, lead, windows, touched, 0.0, 60.0) == [("a", 5.0, lead), ("a", 35.0, lead)]
    assert [t for _s, t, _l in failed_checks("b", events, lead, windows, touched, 0.0, 60.0)] == [5.0, 15.0, 21.5]


def test_a_faults_scope_is_the_pops_and_regions_it_takes() -> None:
    from lab.measure.chaos import scope_of, soak_topology
    from lab.record.availability import Scope

    topo = soak_topology(TOPOLOGIES / "global.yaml")
    footprint = topology_rules(topo)[0]
    na = frozenset(p.name for p in topo.pops if p.region == "na")
    assert scope_of(topo, footprint("server-silent", "iad-s1")) == Scope(pops=frozenset({"iad"}))
    assert scope_of(topo, footprint("pop-down", "fra")) == Scope(pops=frozenset({"fra"}))
    assert scope_of(topo, footprint("link-down", "na-e:eu-w")) == Scope(regions=frozenset({"na", "eu"}))
    region = next(c for c in catalogue(topo, False) if c.name == "region")
    assert scope_of(topo, footprint(region.scenario, "na")) == Scope(pops=na, regions=frozenset({"na"}))
    for cls in ("kv", "control-plane", "origin"):
        c = next(c for c in catalogue(topo, False) if c.name == cls)
        assert scope_of(topo, footprint(c.scenario, c.targets[0])) == Scope(), cls
    # An anycast provider node serves its region's resolvers; the unicast provider every resolver.
    assert scope_of(topo, footprint("dns-node-down", "p2-eu-e")) == Scope(client_regions=frozenset({"eu"}))
    assert scope_of(topo, footprint("dns-node-down", "p3-eu-e")) == Scope()


def test_the_mttr_of_faults_that_ran_alone_leaves_out_every_overlap() -> None:
    from lab.measure.chaos import mttr_alone

    def fault(cls: str, t: float, repair: float, recover: float | None, settled: float | None = None,
              affected: bool = True) -> dict[str, Any]:
        return {"cls": cls, "t_fault": t, "t_repair": repair, "t_settled": settled, "recover_s": recover,
                "affected": {"c": recover} if affected else {}}

    faults = [fault("pop", 0.0, 5.0, 2.0),            # alone: its window ends at 5 + 3 (grace)
              fault("pop", 20.0, 25.0, 4.0, 29.0),    # settled at 29: its window reaches 32 and meets the next
              fault("link", 31.0, 33.0, 9.0),
              fault("pop", 50.0, 55.0, 3.0),          # alone
              fault("server", 70.0, 71.0, None),      # never recovered: not a time
              fault("dns", 90.0, 95.0, 0.0, affected=False)]  # affected nobody: no time to recover
    assert mttr_alone(faults, 3.0) == {"pop": {"faults": 2, "mttr_s": 2.5}}
    # Without the settling the second pop fault's window ends at 28: it and the link fault ran alone too.
    faults[1]["t_settled"] = None
    assert mttr_alone(faults, 3.0) == {"link": {"faults": 1, "mttr_s": 9.0}, "pop": {"faults": 3, "mttr_s": 3.0}}
