"""Router kinds, looked up by name: the rest of the lab asks here and does not care which suite a router
runs. The kinds themselves are :mod:`bgp.kind`'s registry (``kind: frr`` → :class:`bgp.frr.Frr`,
``kind: bird`` → :class:`bgp.bird.BirdKind`); importing this module registers every suite.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

from bgp import bird, frr  # noqa: F401  (each registers its kind on import)
from bgp.kind import KINDS, RouterKind
from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from model.topology import Router


def kind_names() -> list[str]:
    """The names a topology (``kind:``) or ``--kind`` may give, sorted."""
    return sorted(KINDS)


def clis() -> dict[str, RouterKind]:
    """Each suite's command-line client (``vtysh``, ``birdc``) → its kind."""
    return {kind.cli: kind for kind in KINDS.values()}


def kind_of(router: Router) -> RouterKind:
    """The router's kind; raises AnylabError for a kind nobody registered."""
    try:
        return KINDS[router.kind]
    except KeyError:
        raise AnylabError(f"unknown router kind {router.kind!r}; there are: {', '.join(sorted(KINDS))}",
                          node=router.name) from None


def daemons_of(env: NodeEnv, router: Router) -> list[Daemon]:
    """The router's daemons in start order; creates its directory as its kind needs it."""
    return kind_of(router).daemons(env, router)


def sessions(router_dir: Path, router: Router) -> dict[str, str]:
    """Neighbour address → BGP state; raises (subprocess/ValueError) if the daemon does not answer."""
    return kind_of(router).sessions(router_dir, router)


def bfd_states(router_dir: Path, router: Router) -> dict[str, str]:
    """Neighbour address → BFD state ("up", "down", "init", or "none" when there is no session yet),
    for the neighbours whose session profile has BFD; raises as ``sessions`` does."""
    wanted = [str(n.address) for n in router.neighbors if n.profile.bfd is not None]
    if not wanted:
        return {}
    seen = kind_of(router).bfd_peers(router_dir)
    return {addr: seen.get(addr, "none") for addr in wanted}


def best_as_path(router_dir: Path, router: Router, prefix: IPv4Network) -> tuple[int, ...] | None:
    """The AS path of the router's best BGP path to ``prefix`` (None if it has none)."""
    return kind_of(router).best_as_path(router_dir, prefix)


def as_paths(router_dir: Path, router: Router, prefix: IPv4Network) -> list[tuple[int, ...]]:
    """The AS paths of every BGP path the router holds for ``prefix`` (best or not), sorted."""
    return kind_of(router).as_paths(router_dir, prefix)


def fib_nexthops(netns_file: str, router: Router, prefix: str) -> set[str]:
    """The gateways of the router's kernel route to ``prefix`` (empty: no route); raises AnylabError."""
    return kind_of(router).fib_nexthops(netns_file, prefix)
