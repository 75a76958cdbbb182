"""The DR region's standby platform (``backup.dr_servers``; :class:`model.topology.DrSite`): brought up from
the region's copy of the backups when every serving region is lost (the design's "Catastrophic
(multi-region) → failover to DR site"), and stood down again.

A failover starts the site's control plane (an etcd cluster of its own and the API) and KV master, has the
DR copy restore the control plane's state and artifacts and the KV data into them as of a time
(:meth:`backup.dr.DrCopy.failover`), places every deployed worker on the site's PoP too, then starts
the site's PoP servers: their edge workers sync the
deployments from the site's control plane, their KV replicas follow its master, and ExaBGP announces the
anycast prefix to the DR router once the health agent passes — the clients' traffic comes to the DR region.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from control_plane.client import Client
from core.clock import monotonic
from core.daemon import Daemon
from core.errors import AnylabError, UsageError
from core.wait import wait_for
from kv.client import KvClient
from lab.run.launchers import weakened
from lab.run.observe import router_sessions
from lab.run.rundir import in_service, write_in_service
from lab.run.starts import start_daemons
from model.constants import DR_POP
from model.topology import DrSite, Topology

#: The test-only weakening's value (``ANYLAB_WEAKEN=dr``).
WEAK_NO_PLACEMENT = "no-placement"


def site_of(topo: Topology) -> DrSite:
    """The topology's standby platform; raises UsageError if it has none."""
    if topo.dr_site is None:
        raise UsageError(f"topology {topo.name} has no standby platform in a DR region (backup.dr_servers)")
    return topo.dr_site


def place_workers(control: Client) -> dict[str, str]:
    """Deploy every worker the restored state places somewhere to the DR PoP too, at the version most PoPs
    ran (a tie: the greatest version name); worker → version. A placement names its PoPs, and the DR PoP
    was in none while the regions served. Raises ControlPlaneError."""
    placed = {}
    for name, info in control.deployments()["workers"].items():
        runs = Counter(info["placement"].values())
        if runs:
            version = max(runs, key=lambda v: (runs[v], v))
            control.deploy(name, version, pops=[DR_POP])
            placed[name] = version
    return placed


def failover(topo: Topology, run_dir: Path, daemons: dict[str, list[Daemon]], dr_api: KvClient,
             at: float | None, timeout: float) -> dict[str, Any]:
    """Bring the standby platform up from the DR copy as of ``at`` (CLOCK_MONOTONIC; None: now). Returns the
    copy's account of the restore and the seconds from the start until the site's services were ready,
    restored, its servers' processes ready and their sessions to the DR router Established. Raises
    UsageError (no site, or it serves already), KvError (the restore), AnylabError/WaitTimeout."""
    site = site_of(topo)
    serving = in_service(topo, run_dir)
    if DR_POP in serving:
        raise UsageError("the DR site serves already (anylab dr standdown first)")
    t0 = monotonic()
    try:
        start_daemons(daemons, {site.control.name, site.storage.name})
        t_services = monotonic()
        restored = dr_api.call("POST", "/v1/failover", {"at": t0 if at is None else at})
        # The test-only weakening (ANYLAB_WEAKEN=dr): the restored deployments left where they were placed, so
        # the DR site serves no worker — for a bench to show the figure fail.
        placed = {} if weakened("dr", WEAK_NO_PLACEMENT) else place_workers(Client(run_dir / site.control.name))
        t_restored = monotonic()
        serving[DR_POP] = list(site.pop.servers)
        write_in_service(run_dir, serving)  # first: their sessions count as soon as they come up
        start_daemons(daemons, set(site.pop.servers))
        t_servers = monotonic()

        def established() -> bool:  # its own sessions: the lost regions' servers are down on the same router
            down = {d.partition("(")[0] for st in router_sessions(topo, run_dir) if st.router in site.pop.upstreams
                    for d in st.down}
            return not down & set(site.pop.servers)

        wait_for(established, timeout=timeout, what=f"the sessions of {', '.join(site.pop.servers)}",
                 interval=0.05)
    except BaseException as exc:
        try:
            _stop(topo, run_dir, daemons)  # a failed failover leaves nothing of the site running
        except AnylabError as stopping:
            exc.add_note(str(stopping))
        raise
    return {"t": t0, "restored": restored, "placed": placed, "services_s": round(t_services - t0, 3),
            "restored_s": round(t_restored - t0, 3), "servers_s": round(t_servers - t0, 3),
            "sessions_s": round(monotonic() - t0, 3)}


def standdown(topo: Topology, run_dir: Path, daemons: dict[str, list[Daemon]]) -> dict[str, Any]:
    """Take the standby platform out of service: its servers stop (each health agent first: it withdraws),
    then its master and control plane. Their disks stay (a later failover restores over them). Raises
    UsageError if the site does not serve."""
    site = site_of(topo)
    serving = in_service(topo, run_dir)
    if DR_POP not in serving:
        raise UsageError("the DR site does not serve")
    t0 = monotonic()
    _stop(topo, run_dir, daemons)
    return {"t": t0, "stopped": list(reversed(site.nodes())), "s": round(monotonic() - t0, 3)}


def _stop(topo: Topology, run_dir: Path, daemons: dict[str, list[Daemon]]) -> None:
    """Out of service first (the sessions about to go down no longer count), then every daemon of the site,
    last started first: a server's health agent withdraws before its speaker stops."""
    site = site_of(topo)
    serving = in_service(topo, run_dir)
    if DR_POP in serving:
        del serving[DR_POP]
        write_in_service(run_dir, serving)
    for node in reversed(site.nodes()):
        for d in reversed(daemons[node]):
            d.stop()
