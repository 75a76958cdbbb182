"""Router kinds behind one interface: the daemons of a router, its sessions and its best path.

``kind: frr`` runs zebra, bfdd and bgpd; ``kind: bird`` runs one BIRD. The rest of the lab asks here and
does not care which.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

from bgp.bird import Bird, bird_as_paths, bird_best_as_path, bird_sessions, birdc
from bgp.frr import established_peers, prepare_dir, router_daemons, vtysh_json
from core.daemon import Daemon, NodeEnv
from model.topology import Router


def daemons_of(env: NodeEnv, router: Router) -> list[Daemon]:
    """The router's daemons in start order; creates its directory (FRR's must belong to frr)."""
    if router.kind == "bird":
        env.dir.mkdir(parents=True, exist_ok=True)
        return [Bird(env, router)]
    prepare_dir(env.dir)
    return list(router_daemons(env, router))


def sessions(router_dir: Path, router: Router) -> dict[str, str]:
    """Neighbour address → BGP state; raises (subprocess/ValueError) if the daemon does not answer."""
    if router.kind == "bird":
        return bird_sessions(router_dir / "bird.ctl", router)
    return established_peers(router_dir)


def bfd_states(router_dir: Path, router: Router) -> dict[str, str]:
    """Neighbour address → BFD state ("up", "down", "init", or "none" when there is no session yet),
    for the neighbours whose session profile has BFD; raises as ``sessions`` does."""
    wanted = [str(n.address) for n in router.neighbors if n.profile.bfd is not None]
    if not wanted:
        return {}
    seen: dict[str, str] = {}
    if router.kind == "bird":
        for line in birdc(router_dir / "bird.ctl", "show bfd sessions").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].count(".") == 3:
                seen[parts[0]] = parts[2].lower()
    else:
        for peer in vtysh_json(router_dir, "show bfd peers json", daemon="bfdd") or []:
            seen[str(peer.get("peer"))] = str(peer.get("status", "?")).lower()
    return {addr: seen.get(addr, "none") for addr in wanted}


def best_as_path(router_dir: Path, router: Router, prefix: IPv4Network) -> tuple[int, ...] | None:
    """The AS path of the router's best BGP path to ``prefix`` (None if it has none)."""
    if router.kind == "bird":
        return bird_best_as_path(router_dir / "bird.ctl", prefix)
    data = vtysh_json(router_dir, f"show bgp ipv4 unicast {prefix} json", daemon="bgpd") or {}
    for path in data.get("paths", []):
        if path.get("bestpath", {}).get("overall"):
            text = str(path.get("aspath", {}).get("string", "")).strip()
            return tuple(int(a) for a in text.split()) if text else ()
    return None


def as_paths(router_dir: Path, router: Router, prefix: IPv4Network) -> list[tuple[int, ...]]:
    """The AS paths of every BGP path the router holds for ``prefix`` (best or not), sorted."""
    if router.kind == "bird":
        return bird_as_paths(router_dir / "bird.ctl", prefix)
    data = vtysh_json(router_dir, f"show bgp ipv4 unicast {prefix} json", daemon="bgpd") or {}
    return sorted(tuple(int(a) for a in str(p.get("aspath", {}).get("string", "")).split())
                  for p in data.get("paths", []))
