"""DNS figures on a running lab: which node of an anycast provider a client reaches and when that changes,
how long a zone change takes to be answered by every provider node, and the queries the resolvers send
to each provider (counted by nftables on the resolver nodes: a dead provider cannot count what it is
sent).

Every time is CLOCK_MONOTONIC, the clock every namespace of the lab shares.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dns.rcode import NOERROR, NXDOMAIN

from core.clock import monotonic
from core.errors import AnylabError
from core.wait import wait_for
from dnsd.probe import ask, nsid_of
from lab.links.apply import run_in
from lab.run.driver import Driver
from model.topology import Dns

#: The nftables table counting a resolver's queries to each provider (``anylab_fault`` is the faults').
COUNT_TABLE = "anylab_dnscount"
#: How often a shift is probed, and how long one probe waits.
PROBE_PERIOD_S = 0.01
PROBE_TIMEOUT_S = 0.05


def dns_of(lab: Driver) -> Dns:
    """The lab's DNS; raises AnylabError if its topology has none."""
    if lab.topo.dns is None:
        raise AnylabError(f"topology {lab.topo.name} has no DNS (no 'dns' section)")
    return lab.topo.dns


def answering_node(lab: Driver, client: str, provider: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """The node of ``provider`` that answers ``client`` now (its NSID; None: no answer)."""
    dns = dns_of(lab)
    reply = ask(lab.netns[client], str(dns.provider(provider).address), dns.zone, "SOA", timeout=timeout, nsid=True)
    return None if reply is None else nsid_of(reply)


def wait_node_shift(lab: Driver, client: str, provider: str, before: str, t_fault: float,
                    timeout: float = 10.0) -> dict[str, Any]:
    """Probe ``provider`` from ``client`` every PROBE_PERIOD_S until another node than ``before`` answers:
    ``{shift_s (first answer from another node − t_fault), to, unanswered (probes without an answer
    meanwhile)}``. Raises WaitTimeout with the last node seen."""
    seen: list[str | None] = []
    t_moved: list[float] = []

    def moved() -> bool:
        node = answering_node(lab, client, provider)
        seen.append(node)
        if node is not None and node != before:
            t_moved.append(monotonic())
            return True
        return False

    wait_for(moved, timeout=timeout, what=f"{client}'s answers from {provider} to come from another node than "
             f"{before}", interval=PROBE_PERIOD_S, describe=lambda: f"last answer from {seen[-1] if seen else None}")
    return {"shift_s": round(t_moved[0] - t_fault, 4), "to": seen[-1], "unanswered": seen.count(None)}


def wait_zone_everywhere(lab: Driver, name: str, t0: float, present: bool = True,
                         timeout: float = 10.0) -> dict[str, float]:
    """Wait until every provider node answers ``name`` (an A record if ``present``, NXDOMAIN if not), asked
    from its router; returns node → seconds from ``t0`` to the first such answer. Raises WaitTimeout
    naming the nodes that do not yet."""
    dns = dns_of(lab)
    nodes = dns.of_role("provider")
    took: dict[str, float] = {}

    def everywhere() -> bool:
        for n in nodes:
            if n.name in took:
                continue
            reply = ask(lab.netns[n.router], str(n.address), name, "A", timeout=0.2)
            if reply is not None and bool(reply.answer) == present and reply.rcode() in (NOERROR, NXDOMAIN):
                took[n.name] = round(monotonic() - t0, 4)
        return len(took) == len(nodes)

    wait_for(everywhere, timeout=timeout, what=f"every provider node to answer {name} "
             f"({'present' if present else 'gone'})", interval=0.005,
             describe=lambda: "not yet: " + ", ".join(n.name for n in nodes if n.name not in took))
    return took


def count_queries(lab: Driver) -> None:
    """On every resolver node, count the packets it sends to each provider's address (UDP and TCP port
    53), replacing any count before."""
    dns = dns_of(lab)
    rules = "".join(f"    ip daddr {p.address} meta l4proto {{ udp, tcp }} th dport 53 counter comment \"{p.name}\"\n"
                    for p in dns.providers)
    table = (f"table inet {COUNT_TABLE} {{\n  chain output {{ type filter hook output priority 0; policy accept;\n"
             f"{rules}  }}\n}}\n")
    for r in dns.of_role("resolver"):
        run_in(lab.netns[r.name], ["nft", "delete", "table", "inet", COUNT_TABLE], may_fail=True)  # none yet
        run_in(lab.netns[r.name], ["nft", "-f", "-"], table)


def query_counts(lab: Driver) -> dict[str, dict[str, int]]:
    """Resolver node → provider → packets sent to it since :func:`count_queries`."""
    dns = dns_of(lab)
    out: dict[str, dict[str, int]] = {}
    for r in dns.of_role("resolver"):
        data = json.loads(run_in(lab.netns[r.name], ["nft", "-j", "list", "table", "inet", COUNT_TABLE]))
        counts: dict[str, int] = {}
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            packets = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)
            counts[str(rule.get("comment"))] = int(packets)
        out[r.name] = counts
    return out


def sample_counts(lab: Driver, seconds: float, period: float = 0.1) -> list[tuple[float, dict[str, dict[str, int]]]]:
    """:func:`query_counts` every ``period`` for ``seconds``: (time, counts) pairs."""
    out = []
    end = monotonic() + seconds
    due = monotonic()
    while monotonic() < end:
        out.append((monotonic(), query_counts(lab)))
        due += period
        time.sleep(max(0.0, due - monotonic()))  # the sampling period itself, not a wait for a state
    return out
