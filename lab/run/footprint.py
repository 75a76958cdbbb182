"""What a running lab costs: proportional memory (PSS) and CPU of its processes, per node and daemon.

Reads ``/proc`` only. The lab's own process list (``pids.jsonl``) names each daemon's process; children a
daemon starts itself (ExaBGP's API process, an edge worker's isolates) are counted with it. PSS charges
a shared page to each process that maps it by its share, so the sum over a lab is what the lab really
takes, and a per-server figure divided out of it is honest about sharing.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.clock import monotonic
from core.proc import recorded_procs

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    """The process's PSS in KiB (0 if it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of the process in clock ticks (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children_map() -> dict[int, list[int]]:
    """Parent pid → child pids, for every process on the machine."""
    out: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[ppid].append(int(entry.name))
    return out


def with_descendants(pid: int, children: dict[int, list[int]], stop: frozenset[int] = frozenset()) -> list[int]:
    """``pid`` and every process below it, not descending into ``stop`` (processes counted on their
    own, such as the zygote's children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c in children.get(p, ()) if c not in stop)
    return out


@dataclass(frozen=True)
class Usage:
    """One daemon of one node: its processes' PSS (MiB) and CPU (% of one core) over the sample."""

    node: str
    daemon: str
    processes: int
    pss_mib: float
    cpu_pct: float


def daemon_groups(run_dir: Path) -> dict[tuple[str, str], list[int]]:
    """(node, daemon) → its live processes: the recorded one and what it started itself (not other
    recorded processes, such as the zygote's children)."""
    children = children_map()
    groups: dict[tuple[str, str], list[int]] = {}
    live = [p for p in recorded_procs(run_dir) if p.alive()]
    recorded = frozenset(p.pid for p in live)
    for proc in live:
        groups[(proc.node, proc.name)] = with_descendants(proc.pid, children, recorded)
    return groups


def pss_now(run_dir: Path) -> dict[tuple[str, str], float]:
    """(node, daemon) → PSS in MiB now."""
    return {key: sum(pss_kib(p) for p in pids) / 1024.0 for key, pids in daemon_groups(run_dir).items()}


def sample(run_dir: Path, seconds: float = 10.0) -> list[Usage]:
    """Measure every live process of the lab in ``run_dir`` over ``seconds`` (PSS at the end).

    The lab must be running; processes that exit during the sample count with what they used.
    """
    groups = daemon_groups(run_dir)
    # The window runs from before the first reading to after the last: on a loaded machine reading
    # /proc for thousands of processes takes seconds, which must not count as time without CPU use.
    t0 = monotonic()
    before = {key: sum(cpu_ticks(p) for p in pids) for key, pids in groups.items()}
    time.sleep(seconds)  # the sample window itself: a measurement, not a wait for a condition
    used = {key: sum(cpu_ticks(p) for p in pids) - before[key] for key, pids in groups.items()}
    elapsed = monotonic() - t0
    return [Usage(key[0], key[1], len(pids), sum(pss_kib(p) for p in pids) / 1024.0,
                  100.0 * used[key] / CLK_TCK / elapsed) for key, pids in groups.items()]


def by_daemon(usages: Iterable[Usage], nodes: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per daemon name over ``nodes``: total PSS and CPU, and the mean per node that runs it."""
    wanted = set(nodes)
    acc: dict[str, list[Usage]] = defaultdict(list)
    for u in usages:
        if u.node in wanted:
            acc[u.daemon].append(u)
    return {name: {"nodes": len(us), "pss_mib": round(sum(u.pss_mib for u in us), 1),
                   "cpu_pct": round(sum(u.cpu_pct for u in us), 2),
                   "pss_mib_each": round(sum(u.pss_mib for u in us) / len(us), 2),
                   "cpu_pct_each": round(sum(u.cpu_pct for u in us) / len(us), 3)}
            for name, us in sorted(acc.items())}
