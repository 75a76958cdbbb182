"""A router kind: one class per routing suite behind one interface, looked up by name
(containerlab's node kinds). ``kind: frr`` and ``kind: bird`` are :class:`bgp.frr.Frr` and
:class:`bgp.bird.BirdKind`; a third suite is one more class with :func:`register`, nothing else to touch.

A kind makes a router's daemons (each renders, dry-runs, starts, probes and stops itself: the
:class:`core.daemon.Daemon` verbs) and answers the lab's questions about a running router: its BGP
sessions, BFD peers, best and held paths, and the FIB the kernel installed.
"""

from __future__ import annotations

import json
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import ClassVar

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from model.topology import Router


@dataclass(frozen=True)
class SessionChange:
    """A BGP session reaching Established (``up``) or leaving it, as the router logged it: when (seconds
    on CLOCK_REALTIME: a log's clock; :func:`core.clock.realtime_offset` turns it into the lab's), the
    neighbour's address, and why when the suite says (else empty)."""

    t_wall: float
    neighbor: str
    up: bool
    reason: str = ""


def log_time(stamp: str, fmt: str) -> float | None:
    """A log line's local-time stamp as CLOCK_REALTIME seconds (None if it does not parse)."""
    try:
        return datetime.strptime(stamp, fmt).timestamp()
    except ValueError:
        return None


class RouterKind(ABC):
    """One routing suite. Every query raises (subprocess errors, ValueError) when the daemon does not
    answer; callers treat that as "not yet"."""

    #: The name a topology gives the kind (``kind: NAME``, ``--kind NAME``).
    name: ClassVar[str]

    #: The suite's own command-line client, as an operator types it (``anylab exec r1 -- vtysh …``).
    cli: ClassVar[str]

    @abstractmethod
    def cli_argv(self, router_dir: Path, args: list[str]) -> list[str]:
        """The argv that runs :attr:`cli` with ``args`` against this router's daemons (not the host's)."""

    @abstractmethod
    def daemons(self, env: NodeEnv, router: Router) -> list[Daemon]:
        """The router's daemons in start order; creates its directory as the suite needs it."""

    @abstractmethod
    def sessions(self, router_dir: Path, router: Router) -> dict[str, str]:
        """Neighbour address → BGP state (``Established`` …)."""

    @abstractmethod
    def bfd_peers(self, router_dir: Path) -> dict[str, str]:
        """Peer address → BFD state (``up``, ``down``, ``init`` …) of every BFD session the router has."""

    @abstractmethod
    def session_changes(self, router_dir: Path, router: Router) -> list[SessionChange]:
        """Every session change the router's log holds, oldest first (none if there is no log yet)."""

    @abstractmethod
    def best_as_path(self, router_dir: Path, prefix: IPv4Network) -> tuple[int, ...] | None:
        """The AS path of the best BGP path to ``prefix`` (None if there is none)."""

    @abstractmethod
    def as_paths(self, router_dir: Path, prefix: IPv4Network) -> list[tuple[int, ...]]:
        """The AS paths of every BGP path held for ``prefix`` (best or not), sorted."""

    def fib_nexthops(self, netns_file: str, prefix: str) -> set[str]:
        """The gateways of the kernel route to ``prefix`` in the router's namespace (empty: no route).
        Every suite here installs its routes in the kernel, so this reads the kernel (``ip -j route``).
        Raises AnylabError when ``ip`` cannot run there."""
        try:
            res = subprocess.run(["nsenter", f"--net={netns_file}", "--", "ip", "-j", "route", "show", prefix],
                                 capture_output=True, text=True, timeout=10, check=True)
            routes = json.loads(res.stdout or "[]")
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise AnylabError(f"cannot read the route to {prefix}: {exc}") from exc
        hops: set[str] = set()
        for r in routes:
            hops |= {h["gateway"] for h in r.get("nexthops", []) if "gateway" in h}
            if "gateway" in r:
                hops.add(r["gateway"])
        return hops


#: Kind name → the kind. Filled by :func:`register` as the suites' modules are imported
#: (:mod:`bgp.routers` imports them all).
KINDS: dict[str, RouterKind] = {}


def register(cls: type[RouterKind]) -> type[RouterKind]:
    """Class decorator: make ``cls`` the kind named ``cls.name``. Raises AnylabError for a name taken."""
    if cls.name in KINDS:
        raise AnylabError(f"router kind {cls.name!r} is registered twice")
    KINDS[cls.name] = cls()
    return cls
