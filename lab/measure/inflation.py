"""Anycast path inflation: for each client, the round trip to the PoP BGP sends it to (its catchment)
against the round trip to the PoP with the lowest one — before and, with a PoP failed, after.

A client's round trip to PoP P is measured as the round trip client ↔ its router plus router ↔ P's first
server in service (ICMP, the least of :data:`PINGS`: propagation, not queueing), over the lab's routing as
it is (the router reaches a server's link address over BGP). The anycast probes' round trip can differ
from it: a server answers through any of its upstreams (ECMP), so the way back may be longer. The
catchment's own anycast round trip is the client's probes' median over the last second, beside it.
Inflation = catchment RTT − best RTT.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.clock import monotonic
from core.errors import UsageError
from core.stats import quantile
from core.wait import wait_for
from lab.links.state import calibration_summary
from lab.record.probes import read_probes
from lab.run.driver import Driver
from lab.run.observe import observed_catchment
from lab.run.rundir import in_service

PINGS = 5
_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")


def ping_min_ms(netns: str, address: str, count: int = PINGS) -> float | None:
    """The least RTT (ms) of ``count`` pings from the namespace ``netns`` to ``address``; None if none
    came back."""
    # -U: the time the reply reached ping, not the kernel's receive stamp, which is taken before a relay on
    # this node holds an arriving packet (a router's own ping would miss its links' inbound delay).
    res = subprocess.run(["nsenter", f"--net={netns}", "--", "ping", "-U", "-n", "-q", "-c", str(count),
                          "-i", "0.05", "-W", "2", address], capture_output=True, text=True, check=False, timeout=30)
    m = _RTT.search(res.stdout)
    return float(m.group(1)) if m else None


def rtt_table(driver: Driver, exclude: Iterable[str] = ()) -> dict[str, dict[str, float | None]]:
    """Client → PoP → RTT (ms) via the client's router, for every PoP in service and not excluded."""
    topo = driver.topo
    serving = in_service(topo, driver.run_dir)
    targets = {p.name: topo.server(serving[p.name][0]) for p in topo.pops
               if serving.get(p.name) and p.name not in set(exclude)}
    routers = sorted({c.router for c in topo.clients})
    jobs: dict[tuple[str, str], tuple[str, str]] = {}
    for r in routers:
        for pop, server in targets.items():
            intf = next((i for i in server.interfaces if i.peer_node == r), server.interfaces[0])
            jobs[(r, pop)] = (driver.netns[r], str(intf.address.ip))
    for c in topo.clients:
        jobs[(c.name, "")] = (driver.netns[c.name], str(c.interface.peer_address.ip))
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = dict(zip(jobs, pool.map(lambda j: ping_min_ms(*j), jobs.values()), strict=True))
    table: dict[str, dict[str, float | None]] = {}
    for c in topo.clients:
        access = got[(c.name, "")]
        row: dict[str, float | None] = {}
        for pop in targets:
            onward = got[(c.router, pop)]
            row[pop] = None if access is None or onward is None else round(access + onward, 3)
        table[c.name] = row
    return table


def anycast_rtt_ms(driver: Driver, client: str, since: float) -> float | None:
    """The median RTT (ms) of the client's answered probes sent since ``since``."""
    probes = read_probes(driver.node_dir(client) / "probes.jsonl", tail_bytes=256 << 10)
    rtts = [(p.recv - p.sent) * 1e3 for p in probes if p.recv is not None and p.sent >= since]
    q = quantile(rtts, 0.5)
    return None if q is None else round(q, 3)


def report(driver: Driver, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Each client's catchment PoP and its RTT, the lowest-RTT PoP and its RTT, and the inflation."""
    t0 = monotonic()
    table = rtt_table(driver, exclude)
    catchment = observed_catchment(driver.topo, driver.run_dir, after=t0)
    out: dict[str, Any] = {}
    for client, rtts in table.items():
        known = {p: r for p, r in rtts.items() if r is not None}
        best = min(known, key=lambda p: known[p]) if known else None
        pop = catchment.get(client)
        via = known.get(pop) if pop else None
        out[client] = {"catchment": pop, "catchment_rtt_ms": via, "anycast_probe_rtt_ms": anycast_rtt_ms(
                           driver, client, t0), "best": best, "best_rtt_ms": known.get(best) if best else None,
                       "inflation_ms": round(via - known[best], 3) if via is not None and best else None,
                       "rtt_ms": rtts}
    return out


def inflation(driver: Driver, fail_pop: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """The report, and with ``fail_pop`` again while that PoP is down (pop-down, restored after).
    Raises UsageError (unknown PoP), AnylabError, WaitTimeout."""
    result: dict[str, Any] = {"topology": driver.topo.name, "before": report(driver)}
    if fail_pop is not None:
        if fail_pop not in {p.name for p in driver.topo.pops}:  # before anything is touched
            raise UsageError(f"--fail {fail_pop}: no such PoP; there are: "
                             f"{', '.join(p.name for p in driver.topo.pops)}")
        moved = [c for c, r in result["before"].items() if r["catchment"] == fail_pop]
        t_fault = driver.fail("pop-down", fail_pop)
        try:
            def shifted() -> bool:
                now = observed_catchment(driver.topo, driver.run_dir, after=monotonic() - 0.5)
                return all(now.get(c) not in (None, fail_pop) for c in moved)

            wait_for(shifted, timeout=timeout, what=f"clients of {fail_pop} served elsewhere")
            result["failed"] = {"pop": fail_pop, "t": t_fault, "clients_moved": moved,
                                "shift_done_s": round(monotonic() - t_fault, 3)}
            result["after"] = report(driver, exclude=[fail_pop])
        finally:
            driver.restore(fail_pop)
    result["summary"] = {k: _summary(result[k]) for k in ("before", "after") if k in result}
    result["links"] = calibration_summary(driver.run_dir)
    return result


def _summary(rep: dict[str, Any]) -> dict[str, Any]:
    inflated = [r["inflation_ms"] for r in rep.values() if r["inflation_ms"] is not None]
    return {"clients": len(rep), "not_at_best": sum(1 for r in rep.values() if r["catchment"] != r["best"]),
            "max_inflation_ms": max(inflated, default=None),
            "mean_inflation_ms": round(sum(inflated) / len(inflated), 3) if inflated else None}


