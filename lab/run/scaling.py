"""Scaling a PoP by hand or by the autoscaler: bringing it to N servers in service out of its racked
slots (``max_servers``), and timing what that takes: processes, sessions, every upstream router's FIB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bgp import routers as router_kinds
from control_plane.client import Client
from core.clock import monotonic
from core.daemon import Daemon
from core.errors import UsageError
from core.wait import wait_for
from lab.run.observe import router_sessions
from lab.run.rundir import in_service, write_in_service
from lab.run.starts import start_daemons
from model.topology import Topology


def scale_pop(topo: Topology, run_dir: Path, netns: dict[str, str], daemons: dict[str, list[Daemon]],
              control: Client, pop: str, servers: int, timeout: float) -> dict[str, Any]:
    """Bring ``pop`` to ``servers`` servers in service: start the processes of its next standby servers
    (they announce the prefix; ECMP spreads new flows onto them) or stop its last ones (the health agent
    withdraws first), and tell the control plane. Returns what changed and, on the way up, the seconds
    from the start until the processes were ready, the sessions Established and every upstream router's
    FIB had the new servers as next hops (on the way down: until the FIB had dropped them). Raises
    UsageError outside 1 … max_servers, AnylabError/WaitTimeout when a step fails."""
    p = topo.pop(pop)
    slots = [*p.servers, *p.standby]
    if not 1 <= servers <= len(slots):
        raise UsageError(f"{pop} has room for 1 … {len(slots)} servers (max_servers), not {servers}")
    serving = in_service(topo, run_dir)
    now_in = list(serving[pop])
    t0 = monotonic()
    if servers > len(now_in):
        added = [s for s in slots if s not in now_in][:servers - len(now_in)]
        start_daemons(daemons, set(added))
        t_ready = monotonic() - t0
        serving[pop] = now_in + added
        changed, removed = added, []
    elif servers < len(now_in):
        removed = now_in[servers:]
        serving[pop] = now_in[:servers]
        write_in_service(run_dir, serving)  # first: the sessions about to go down no longer count
        control.set_servers(pop, serving[pop])
        for server in reversed(removed):
            for d in reversed(daemons[server]):  # the health agent first: it withdraws
                d.stop()
        t_ready, changed, added = monotonic() - t0, removed, []
    else:
        return {"pop": pop, "servers": now_in, "added": [], "removed": []}
    write_in_service(run_dir, serving)
    if added:
        control.set_servers(pop, serving[pop])
    prefix = str(topo.anycast[0])
    hops = {(r, str(n.address)) for r in p.upstreams for n in topo.router(r).neighbors if n.node in changed}
    sessions_s = None
    if added:
        def established() -> bool:
            return all(st.up == st.total for st in router_sessions(topo, run_dir) if st.router in p.upstreams)

        wait_for(established, timeout=timeout, what=f"sessions of {', '.join(added)}", interval=0.05)
        sessions_s = monotonic() - t0

    def fib() -> bool:
        for router, via in hops:
            present = via in router_kinds.fib_nexthops(netns[router], topo.router(router), prefix)
            if present != bool(added):
                return False
        return True

    wait_for(fib, timeout=timeout, what=f"the upstream routers' FIB to {'add' if added else 'drop'} "
             f"{', '.join(changed)}", interval=0.05)
    return {"pop": pop, "servers": serving[pop], "added": added, "removed": removed,
            "processes_s": round(t_ready, 3), "sessions_s": None if sessions_s is None else round(sessions_s, 3),
            "fib_s": round(monotonic() - t0, 3)}
