"""The lab's baseline, defined once: what ``anylab up`` waits for before it returns and what every
measurement waits for before it injects its fault."""

from __future__ import annotations

from pathlib import Path

from bgp import routers as router_kinds
from core.clock import monotonic
from core.wait import wait_for
from lab.run.observe import observed_catchment, per_router, router_sessions
from model.graph import predict_catchment, predict_routes
from model.topology import Router, Topology


def wait_baseline(topo: Topology, run_dir: Path, deadline: float) -> None:
    """Wait until the lab is at its baseline: every BGP session Established (and BFD up where the profile
    has it), every router's best path to every anycast prefix has the predicted AS path, and then every
    client answered — by a probe sent after that — from a PoP its predicted catchment names (either of
    ``a|b`` under ECMP). Raises WaitTimeout naming what is still missing when ``deadline``
    (CLOCK_MONOTONIC) passes."""
    predicted = {p: predict_routes(topo, p) for p in topo.anycast}
    missing: list[str] = []

    def wrong(r: Router) -> list[str]:
        out = []
        for prefix, routes in predicted.items():
            route = routes[r.name]
            want = route.as_path if route else None
            got = router_kinds.best_as_path(run_dir / r.name, r, prefix)
            if want != got:
                out.append(f"{r.name}: {prefix} via {got}, predicted {want}")
        return out

    laggards: list[Router] = []

    def bgp_done() -> bool:
        # Each question is a vtysh or birdc run per router (tens of ms of CPU for FRR): while sessions
        # are down, paths are not asked; while the last round's laggards are still wrong, the others
        # are not asked again. Only a round that asks every router can end the wait.
        missing.clear()
        for s in router_sessions(topo, run_dir):
            if s.up < s.total:
                missing.append(f"{s.router}: sessions down {', '.join(s.down)}")
        if missing:
            return False
        if laggards:
            missing.extend(p for problems in per_router(wrong, laggards) for p in problems)
            if missing:
                return False
        results = per_router(wrong, topo.routers)
        laggards[:] = [r for r, problems in zip(topo.routers, results, strict=True) if problems]
        missing.extend(p for problems in results for p in problems)
        return not missing

    wait_for(bgp_done, timeout=max(1.0, deadline - monotonic()), what="BGP convergence",
             interval=0.05, describe=lambda: "; ".join(missing[:6]))
    t_bgp = monotonic()
    catchment = predict_catchment(topo)

    def clients_answered() -> bool:
        seen = observed_catchment(topo, run_dir, after=t_bgp)
        missing[:] = [f"{c}: {seen.get(c) or 'no answer'} (predicted {pop})" for c, pop in catchment.items()
                      if seen.get(c) not in pop.split("|")]
        return not missing

    wait_for(clients_answered, timeout=max(1.0, deadline - monotonic()),
             what="answers at every client from its predicted PoP", interval=0.02,
             describe=lambda: "; ".join(missing[:6]))


def wait_platform_level_zero(topo: Topology, run_dir: Path, deadline: float) -> None:
    """Wait until every PoP server in service reports degradation level 0 (its ``protect.json``): right
    after its start a server is at level 1 until its KV replica has reached the region's master, and a
    lab handed over in that state reads as degraded in ``anylab status``. Raises WaitTimeout naming the
    servers still degraded and why when ``deadline`` (CLOCK_MONOTONIC) passes."""
    import json

    from lab.run.rundir import in_service

    missing: list[str] = []

    def level_zero() -> bool:
        missing.clear()
        for servers in in_service(topo, run_dir).values():
            for server in servers:
                try:
                    report = json.loads((run_dir / server / "protect.json").read_text())
                except (OSError, ValueError):
                    missing.append(f"{server}: no protect.json yet")
                    continue
                if report.get("level"):
                    why = "; ".join(str(v) for v in (report.get("reasons") or {}).values())
                    missing.append(f"{server}: level {report['level']} ({why})")
        return not missing

    wait_for(level_zero, timeout=max(1.0, deadline - monotonic()), what="every PoP server at degradation level 0",
             interval=0.05, describe=lambda: "; ".join(missing[:6]))
