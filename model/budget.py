"""What a topology will cost to run, before it runs: memory and idle CPU from the budgets measured per
process (docs/scaling.md, "Measured budgets", bench/scale.py on 2026-11-27), so that ``anylab up`` can
say a lab will not fit before it starts one.

The figures are PSS, idle (probes at their idle rate, no requests): a lab under load needs more CPU, not
much more memory. Calibration against bench/scale.py's six labs (docs/results.md, "Scale"): memory within
6 % at 30, 102 and 300 PoPs, BIRD and FRR (over rather than under at the smaller sizes), idle CPU within
12 %; against bench/startup.py's three split labs, memory within 3 %. tests/unit/test_budget.py holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.topology import DnsNode, Topology

MB = 1e6
#: Per PoP server, by settings.server_process: (PSS bytes, idle CPU in cores); split measured by
#: bench/startup.py on global.yaml and regions.py (2026-12-03: 40–41 MB).
SERVER = {"folded": (29 * MB, 0.0018), "split": (41 * MB, 0.0040)}
#: Per router, by kind: (PSS bytes, idle CPU in cores); bfdd adds its share per BFD session.
ROUTER = {"bird": (1.2 * MB, 0.0005), "frr": (23 * MB, 0.0005)}
BFD_SESSION_CPU = 0.0014
#: A client's prober and a service node's daemons (control plane + DO directory, KV master + DO host,
#: origin): bench/startup.py (2026-12-03) measured 9 MB a client, 49–52 MB a service node.
CLIENT = (10 * MB, 0.002)
SERVICE = (50 * MB, 0.002)
#: A region's control plane node (etcd member + control plane API), apart from SERVICE (the labs measured
#: above predate them): bench/startup.py (2026-12-04) measured 42–43 MB with three regions (53 MB alone);
#: 55 MB with metrics on (2026-12-05: the client library in the API process).
CONTROL_PLANE = (55 * MB, 0.01)
#: A DNS node by :func:`dns_kind`: the root and the hidden primary (Knot; the primary with its feeder), a
#: unicast provider node (its server), an anycast provider node (its server, ExaBGP, health agent, BIRD for
#: BFD), a resolver by software: bench/startup.py (2026-12-04) on global.yaml measured 2.7, 15.4, 2.4, 37.5,
#: 8.5 and 24.5 MB (Knot's and NSD's pages are shared between the nodes: PSS).
DNS = {"root": (3 * MB, 0.001), "hidden": (16 * MB, 0.001), "unicast": (3 * MB, 0.001),
       "anycast": (38 * MB, 0.004), "unbound": (9 * MB, 0.001), "bind": (25 * MB, 0.001)}
#: The monitoring node (Prometheus, Alertmanager, the alert receiver), scraping 23 targets every second:
#: bench/startup.py (2026-12-05) on global.yaml measured 89 MB.
MONITORING = (89 * MB, 0.02)
#: The controller, the zygote, the recorders and the lab's pollers: one set per lab (the CPU is the
#: intercept of bench/scale.py's idle lab CPU against its server count: 0.23, 0.41, 0.80 cores at 30, 102, 300).
LAB = (10 * MB, 0.15)
#: The share of a machine's available memory and of its cores a lab may plan for (docs/scaling.md,
#: "How many machines": memory to 70 %, idle CPU to 50 %, the rest is headroom for measuring).
MEMORY_SHARE = 0.7
CPU_SHARE = 0.5


@dataclass(frozen=True)
class Estimate:
    """A lab's planned memory (bytes) and idle CPU (cores), and what they were made of."""

    memory: float
    cpu: float
    servers: int
    routers: int

    def describe(self) -> str:
        return (f"≈ {self.memory / 1e9:.1f} GB and {self.cpu:.2f} cores idle for {self.servers} PoP server(s) "
                f"and {self.routers} router(s)")


def estimate(topo: Topology) -> Estimate:
    """The measured budgets summed over the topology's nodes at ``up`` (standby servers and the DR site are
    not running)."""
    process = topo.spec.settings.server_process
    active = [s for s in topo.servers if not s.standby]
    memory, cpu = LAB
    memory += len(active) * SERVER[process][0]
    cpu += len(active) * SERVER[process][1]
    for r in topo.routers:
        memory += ROUTER.get(r.kind, ROUTER["frr"])[0]
        cpu += ROUTER.get(r.kind, ROUTER["frr"])[1]
        cpu += BFD_SESSION_CPU * sum(1 for n in r.neighbors if n.profile.bfd is not None)
    if topo.monitoring is not None:
        memory += MONITORING[0]
        cpu += MONITORING[1]
    # The DR site's control plane and master run only after a failover, as its standby servers do.
    standby = len(topo.dr_site.nodes()) - len(topo.dr_site.pop.servers) if topo.dr_site is not None else 0
    others = len(topo.services()) - len(topo.control_planes) - (topo.monitoring is not None) - standby
    memory += len(topo.clients) * CLIENT[0] + others * SERVICE[0] + len(topo.control_planes) * CONTROL_PLANE[0]
    cpu += len(topo.clients) * CLIENT[1] + others * SERVICE[1] + len(topo.control_planes) * CONTROL_PLANE[1]
    for n in topo.dns.nodes if topo.dns else ():
        memory += DNS[dns_kind(n)][0]
        cpu += DNS[dns_kind(n)][1]
    return Estimate(memory, cpu, len(active), len(topo.routers))


def dns_kind(n: DnsNode) -> str:
    """A DNS node's line in :data:`DNS`."""
    if n.role == "provider":
        return "anycast" if n.speaker is not None else "unicast"
    return n.kind if n.role == "resolver" else n.role


def verdict(need: Estimate, available_memory: float, cores: int) -> tuple[str | None, str | None]:
    """(refusal, warning) for running ``need`` on a machine with ``available_memory`` bytes free and
    ``cores`` CPUs: a refusal when the memory alone is more than the machine has free, a warning when it
    is past the planning share of memory or of CPU (the lab would run, measurements would suffer)."""
    if need.memory > available_memory:
        return (f"needs {need.describe()}; this machine has {available_memory / 1e9:.1f} GB available "
                "(split the topology over machines, docs/scaling.md, or fewer PoPs)"), None
    worries = []
    if need.memory > MEMORY_SHARE * available_memory:
        worries.append(f"more than {MEMORY_SHARE:.0%} of the {available_memory / 1e9:.1f} GB available")
    if need.cpu > CPU_SHARE * cores:
        worries.append(f"more than {CPU_SHARE:.0%} of {cores} cores idle")
    if worries:
        return None, f"this lab needs {need.describe()}: {' and '.join(worries)}; measurements may suffer"
    return None, None
