"""Observing a running lab from any process (by its run directory and namespaces): every router's BGP
sessions and BFD, the catchment the probers see, which daemons are alive; and switching the probers
between their idle and measuring rates. (A router's FIB is its kind's to read: :mod:`bgp.routers`.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bgp import routers as router_kinds
from core.proc import recorded_procs
from lab.record.probes import last_answer, read_probes
from lab.run.rundir import in_service
from model.topology import Router, Topology


@dataclass(frozen=True)
class SessionState:
    router: str
    up: int
    total: int
    down: tuple[str, ...]


T = TypeVar("T")


def per_router(fn: Callable[[Router], T], routers: Sequence[Router]) -> list[T]:
    """``fn`` for every router, in order; several at once (each asks its daemon through a subprocess:
    one after another, 100 routers took tens of seconds a round on a loaded box)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(routers)))) as pool:
        return list(pool.map(fn, routers))


def _router_state(run_dir: Path, r: Router) -> tuple[dict[str, str], dict[str, str]]:
    try:
        return router_kinds.sessions(run_dir / r.name, r), router_kinds.bfd_states(run_dir / r.name, r)
    except Exception:  # the daemon not answering counts as every session down
        return {}, {}


def router_sessions(topo: Topology, run_dir: Path) -> list[SessionState]:
    """Every router's BGP sessions (those to servers out of service do not count)."""
    serving = {s for servers in in_service(topo, run_dir).values() for s in servers}
    idle = {s.name for s in topo.all_servers()} - serving
    out = []
    states = per_router(lambda r: _router_state(run_dir, r), topo.routers)
    for r, (peers, bfd) in zip(topo.routers, states, strict=True):
        # A session counts as up once BGP is Established and, where the profile wants it, BFD is up:
        # a fault injected before BFD is up would be caught by the hold timer instead.
        neighbors = [n for n in r.neighbors if n.node not in idle]
        down = tuple(f"{n.node}({peers.get(str(n.address), 'no answer')})" for n in neighbors
                     if peers.get(str(n.address)) != "Established")
        down += tuple(f"{n.node}(BFD {bfd[str(n.address)]})" for n in neighbors
                      if bfd.get(str(n.address), "up") != "up" and peers.get(str(n.address)) == "Established")
        out.append(SessionState(r.name, len(neighbors) - len(down), len(neighbors), down))
    return out


def observed_catchment(topo: Topology, run_dir: Path, after: float | None = None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for c in topo.clients:
        probe = last_answer(read_probes(run_dir / c.name / "probes.jsonl", tail_bytes=64 << 10), after)
        out[c.name] = probe.pop if probe else None
    return out


def daemons_alive(run_dir: Path) -> dict[str, dict[str, bool]]:
    """node → daemon → alive, from the lab's process records."""
    alive = {(p.node, p.name, p.pid) for p in recorded_procs(run_dir)}
    out: dict[str, dict[str, bool]] = {}
    path = run_dir / "pids.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.setdefault(rec["node"], {})[rec["name"]] = (rec["node"], rec["name"], rec["pid"]) in alive
    return out


def set_probe_rate(run_dir: Path, measuring: bool) -> int:
    """Switch the lab's probers to their measuring rate (SIGUSR1) or back to their idle rate (SIGUSR2),
    by recorded PID; returns how many were signalled. A prober without an idle rate ignores both."""
    sig = signal.SIGUSR1 if measuring else signal.SIGUSR2
    count = 0
    for proc in recorded_procs(run_dir):
        if proc.name == "prober" and proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
                count += 1
    return count
