"""Which nodes a command means, and what a command typed for a node runs there.

``anylab exec`` and ``anylab capture`` take a node expression: a name (``r1``), a comma-separated list
(``r1,r2``), shell-style patterns (``sjc-s*``) or a group (``routers``, ``servers``, ``clients``,
``services``, ``all``). A routing suite's own client (``vtysh``, ``birdc``) is pointed at that router's
daemons by its kind (:attr:`bgp.kind.RouterKind.cli`), and ``exabgpcli`` on a PoP server asks that
server's ExaBGP API process (ExaBGP's own CLI is off: it costs ~28 MB a server, see bgp/exabgp.py).
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from core.errors import UsageError
from model.topology import Topology

#: The groups a node expression may name, each the nodes of that kind in the topology's order.
GROUPS = ("routers", "servers", "clients", "services", "all")
#: The ExaBGP API process's questions ``exabgpcli`` answers (the lab's API; read-only).
EXABGP_COMMANDS = ("status", "show neighbor")


def _group(topo: Topology, group: str) -> list[str]:
    return {
        "routers": [r.name for r in topo.routers],
        "servers": [s.name for s in topo.servers],
        "clients": [c.name for c in topo.clients],
        "services": [s.name for s in topo.services()],
        "all": topo.node_names(),
    }[group]


def select_nodes(topo: Topology, expression: str) -> list[str]:
    """The nodes ``expression`` names, each once, in the topology's order.

    Raises UsageError for an empty expression, or a name or pattern that matches no node (naming it and
    listing what there is)."""
    names = topo.node_names()
    chosen: set[str] = set()
    parts = [p.strip() for p in expression.split(",")]
    if not expression.strip() or any(not p for p in parts):
        raise UsageError(f"node {expression!r}: give a node name, names separated by commas, a pattern such as "
                         f"'sjc-s*', or one of: {', '.join(GROUPS)}")
    for part in parts:
        if part in GROUPS:
            chosen.update(_group(topo, part))
            continue
        matched = fnmatch.filter(names, part) if any(ch in part for ch in "*?[") else [n for n in names if n == part]
        if not matched:
            shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
            raise UsageError(f"no node '{part}' in topology {topo.name}; nodes: {shown} "
                             f"(or one of: {', '.join(GROUPS)})")
        chosen.update(matched)
    return [n for n in names if n in chosen]


def node_argv(topo: Topology, run_dir: Path, node: str, argv: list[str]) -> list[str]:
    """What ``argv``, typed for ``node``, runs: a router suite's client pointed at the node's daemons,
    ``exabgpcli`` as a question to the server's ExaBGP API process, anything else as it is.

    Raises UsageError for an empty command, a suite's client on a node that is not a router of that suite,
    and ``exabgpcli`` anywhere but on a PoP server or with a question it does not answer."""
    from bgp.routers import clis, kind_of

    if not argv:
        raise UsageError("give the command to run after '--', e.g. anylab exec r1 -- ip route")
    routers = {r.name: r for r in topo.routers}
    if argv[0] in clis():
        if node not in routers:
            raise UsageError(f"{argv[0]} talks to a router's daemons; {node} is not a router")
        kind = kind_of(routers[node])
        if argv[0] != kind.cli:
            raise UsageError(f"{node} is a {kind.name} router: use {kind.cli}, not {argv[0]}")
        return kind.cli_argv(run_dir / node, argv[1:])
    if argv[0] == "exabgpcli":
        if node not in {s.name for s in topo.servers}:
            raise UsageError(f"exabgpcli asks a PoP server's ExaBGP; {node} is not a PoP server")
        question = " ".join(argv[1:]) or "status"
        if question not in EXABGP_COMMANDS:
            raise UsageError(f"exabgpcli {question!r}: the lab's ExaBGP API answers {' and '.join(EXABGP_COMMANDS)} "
                             "(a withdrawal is a fault: 'anylab fail drain SERVER')")
        return [sys.executable, "-m", "bgp.exabgp_api", "--dir", str(run_dir / node), "--ask", question]
    return list(argv)

