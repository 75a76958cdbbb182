#!/usr/bin/env python3
"""Benchmark (not a test): the platform's DNS from three providers (issue 23), on ``global.yaml`` with its
``dns`` section, the records' TTL set per run (``--ttls``).

Users: every client runs :mod:`lab.load.dns_load` (its stub: its two resolvers in order, 2 s each, 5 s in
all; no stub cache, so every query reaches a resolver), ``--rate`` queries per second over the names of
the platform's zone (``www``, a deployed worker, a PoP). Resolver kinds: a region's first client asks
Unbound first, its second BIND; each figure is given per kind.

- **Normal**: resolution latency, and how each resolver spreads its queries over the three providers
  (counted by nftables on the resolver nodes) — Müller et al.'s question (IMC 2017: do recursives stick
  to the fastest authoritative?). Only meaningful where the TTL makes resolvers ask (TTL 1).
- **Zone change**: ``--deploys`` deploys of new workers; each → every provider node answers its name,
  asked from the node's router (the issue's goal: p99 ≤ 1 s).
- **Anycast node down**: ``dns-node-down`` of the node a client reaches for p1 (Knot) and p2 (NSD),
  ``--repeat`` times: the client's shift (its first answer from another node of the provider, NSID).
- **Provider down** (p1, then p2; caches warm — the users ran before — and cold — the resolvers restarted
  at the fault): ``--fault-s`` seconds. Per kind: resolutions failed, latency p50/p99 during the fault
  and per second, how long the resolvers went on asking the dead provider (their last query to it, from
  the fault), and the queries per second the surviving providers got against before (amplification).
- **Every provider down** (``--fault-s``): Moura et al.'s setup (IMC 2018: a complete outage of a zone's
  authoritatives, clients riding it out on cached answers for as long as the TTL allows): resolutions
  served during the outage, per kind, and the resolvers' query rate to the dead providers against before
  (their retries: the load a DDoS victim sees on top of the attack).

    sudo .venv/bin/python bench/dns_providers.py [--ttls 1,10,30,300] [--out bench/results/dns.json]

(Not ``bench/dns.py``: Python puts a script's directory first on its path, and a ``dns.py`` there would
hide dnspython — the package ``dns`` — from every script in ``bench/``.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.clock import monotonic  # noqa: E402
from core.stats import quantile  # noqa: E402
from core.wait import wait_for  # noqa: E402
from lab.load.dns_load import DnsLoads, per_second, summary  # noqa: E402
from lab.measure.dns import (  # noqa: E402
    answering_node,
    count_queries,
    query_counts,
    sample_counts,
    wait_node_shift,
    wait_zone_everywhere,
)
from lab.run.lab import Lab  # noqa: E402
from model.load import build_topology  # noqa: E402
from model.topology import Topology  # noqa: E402

WORKER = "async def fetch(request, env, ctx):\n    return 'dns'\n"
TOPOLOGY = PROJECT / "topologies" / "global.yaml"
NAMES = ["www.edge.test", "bench.edge.test", "ord.pop.edge.test", "fra.pop.edge.test", "sin.pop.edge.test"]


def topology(ttl: int) -> Topology:
    data = yaml.safe_load(TOPOLOGY.read_text())
    data["dns"]["ttl"] = ttl
    return build_topology(data, str(TOPOLOGY))


def r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


class Bench:
    def __init__(self, lab: Lab, rate: float) -> None:
        self.lab = lab
        dns = lab.topo.dns
        assert dns is not None
        self.dns = dns
        self.rate = rate
        self.kind_of_address = {str(n.address): n.kind for n in dns.of_role("resolver")}
        #: client → the kind of its first resolver
        self.kind = {c.name: self.kind_of_address[str(dns.resolvers_for(c.name)[0])] for c in lab.topo.clients}

    def users(self) -> DnsLoads:
        return DnsLoads(self.lab.run_dir, self.lab.netns, {c.name: [str(a) for a in self.dns.resolvers_for(c.name)]
                                                            for c in self.lab.topo.clients}, NAMES, self.rate)

    def records_by_kind(self, loads: DnsLoads) -> dict[str, list[dict[str, Any]]]:
        """Resolver kind (of the clients' first resolver) → its clients' records, each file read once."""
        out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in sorted(set(self.kind.values()))}
        for client, kind in self.kind.items():
            out[kind] += loads.records(client)
        return out

    @staticmethod
    def by_kind(records: dict[str, list[dict[str, Any]]], since: float, until: float) -> dict[str, Any]:
        """Per resolver kind: the users' queries started in [since, until)."""
        return {kind: summary(recs, since, until) for kind, recs in records.items()}

    def answering(self, users: DnsLoads, timeout: float = 10.0) -> None:
        """Wait until every client's users have had an answer (their resolvers reach the providers)."""
        wait_for(lambda: all(any(x["ok"] for x in users.records(c)) for c in self.kind), timeout=timeout,
                 what="every client's first resolution", interval=0.05)

    def resolver_kind(self, resolver: str) -> str:
        return self.dns.node(resolver).kind

    def spread(self, before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
               seconds: float) -> dict[str, Any]:
        """Per resolver kind: queries per second to each provider, and each provider's share."""
        out: dict[str, Any] = {}
        for kind in sorted({self.resolver_kind(x) for x in after}):
            per: dict[str, float] = {}
            for res, counts in after.items():
                if self.resolver_kind(res) != kind:
                    continue
                for p, n in counts.items():
                    per[p] = per.get(p, 0) + (n - before.get(res, {}).get(p, 0)) / seconds
            total = sum(per.values())
            out[kind] = {"qps": {p: r(v, 2) for p, v in sorted(per.items())},
                         "share": {p: r(v / total, 3) if total else None for p, v in sorted(per.items())}}
        return out

    # -- scenarios ---------------------------------------------------------------------------------

    def normal(self, seconds: float) -> dict[str, Any]:
        count_queries(self.lab)
        users = self.users()
        users.start(seconds + 12.0)
        self.answering(users)  # past the resolvers' first, empty-cache queries
        t0, c0 = monotonic(), query_counts(self.lab)
        time.sleep(seconds)  # the window measured itself
        t1, c1 = monotonic(), query_counts(self.lab)
        users.stop()
        return {"seconds": seconds, "users": self.by_kind(self.records_by_kind(users), t0, t1),
                "spread": self.spread(c0, c1, t1 - t0)}

    def zone_change(self, deploys: int) -> dict[str, Any]:
        per_node: dict[str, list[float]] = {}
        for i in range(deploys):
            done = self.lab.deploy(f"z{i}", f"z{i}.edge.test", WORKER)
            took = wait_zone_everywhere(self.lab, f"z{i}.edge.test.", done.t)
            for node, s in took.items():
                per_node.setdefault(node, []).append(s)
        by_provider: dict[str, Any] = {}
        for p in self.dns.providers:
            xs = [s * 1e3 for n in p.nodes for s in per_node[n]]
            by_provider[p.name] = {"kind": p.kind, "n": len(xs), "p50_ms": r(quantile(xs, 0.5)),
                                   "p99_ms": r(quantile(xs, 0.99)), "max_ms": r(max(xs))}
        every = [max(per_node[n][i] for n in per_node) * 1e3 for i in range(deploys)]
        return {"deploys": deploys, "providers": by_provider,
                "every_provider": {"p50_ms": r(quantile(every, 0.5)), "p99_ms": r(quantile(every, 0.99)),
                                   "max_ms": r(max(every))}}

    def node_down(self, repeat: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for provider, client in (("p1", "eu-c1"), ("p2", "eu-c2")):
            runs = []
            for _ in range(repeat):
                node = answering_node(self.lab, client, provider, timeout=1.0)
                assert node is not None
                t = self.lab.fail("dns-node-down", node)
                try:
                    shift = wait_node_shift(self.lab, client, provider, node, t)
                finally:
                    self.lab.restore(node)
                wait_node_shift(self.lab, client, provider, str(shift["to"]), monotonic())  # back home
                runs.append({"node": node, **shift})
            out[provider] = {"kind": self.dns.provider(provider).kind, "runs": runs,
                             "max_shift_s": max(x["shift_s"] for x in runs)}
        return out

    def restart_resolvers(self) -> None:
        """Every resolver killed and started again: empty caches, no memory of which servers were slow."""
        for res in self.dns.of_role("resolver"):
            self.lab.fail("resolver-down", res.name)
            self.lab.restore(res.name)

    def outage(self, providers: list[str], fault_s: float, cold: bool, before_s: float = 6.0) -> dict[str, Any]:
        """Fresh resolvers, users for ``before_s`` (caches warm), then ``providers`` silent for ``fault_s``
        (with ``cold``, every resolver restarted at the fault: empty caches), then ``before_s`` more after
        the restore. Fresh first: a resolver remembers a dead server long after it is back (Unbound's
        infrastructure cache, 15 min by default), which would skew the next run."""
        self.restart_resolvers()
        count_queries(self.lab)
        users = self.users()
        users.start(before_s + fault_s + before_s + 2.0)
        t_users = monotonic()
        time.sleep(before_s)  # the users warm the caches
        t_fault, c_base = monotonic(), query_counts(self.lab)
        for p in providers:
            self.lab.fail("dns-provider-down", p)
        if cold:
            self.restart_resolvers()
        samples = sample_counts(self.lab, fault_s - (monotonic() - t_fault), period=0.1)
        t_restore = monotonic()
        for p in providers:
            self.lab.restore(p)
        time.sleep(before_s)  # the users after the restore
        t_end, c_end = monotonic(), query_counts(self.lab)
        users.stop()
        dead = set(providers)
        # The load compared before and during: on the providers left, or (every one down) on the dead ones.
        compared = [p.name for p in self.dns.providers if p.name not in dead] or sorted(dead)
        pre = self.spread({}, c_base, t_fault - t_users)  # over the users' warm-up
        during = self.spread(c_base, samples[-1][1], samples[-1][0] - t_fault)
        stopped: dict[str, float | None] = {}
        for res in self.dns.of_role("resolver"):
            last = None
            for (_ta, ca), (tb, cb) in itertools.pairwise(samples):
                if any(cb[res.name].get(p, 0) > ca[res.name].get(p, 0) for p in dead):
                    last = tb
            stopped[res.name] = None if last is None else round(last - t_fault, 2)
        records = self.records_by_kind(users)

        def qps(spread: dict[str, Any], kind: str) -> float:
            return sum(spread[kind]["qps"].get(p) or 0.0 for p in compared)

        return {"providers_down": providers, "cold": cold, "fault_s": round(t_restore - t_fault, 2),
                "users_before": self.by_kind(records, t_fault - before_s, t_fault),
                "users_during": self.by_kind(records, t_fault, t_restore),
                "users_after": self.by_kind(records, t_restore, t_restore + before_s),
                "queries_before": pre, "queries_during": during,
                "queries_after": self.spread(samples[-1][1], c_end, t_end - samples[-1][0]),
                "amplification": {kind: r(qps(during, kind) / max(1e-9, qps(pre, kind)), 2)
                                  for kind in during if kind in pre},
                "last_query_to_dead_s": stopped,
                "per_second": {kind: [{k: v for k, v in x.items() if k != "answered_by"}
                                      for x in per_second(recs, t_fault)] for kind, recs in records.items()}}


def run_ttl(ttl: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"ttl": ttl}
    with Lab(topology(ttl), name="bdns") as lab:
        bench = Bench(lab, args.rate)
        lab.deploy("bench", "bench.edge.test", WORKER)
        out["timings"] = {k: round(v, 2) for k, v in lab.timings.items()}
        if ttl == min(args.ttls):
            out["normal"] = bench.normal(args.normal_s)
            out["zone_change"] = bench.zone_change(args.deploys)
            out["node_down"] = bench.node_down(args.repeat)
            for p in ("p1", "p2"):
                out[f"{p}_down_warm"] = bench.outage([p], args.fault_s, cold=False)
                out[f"{p}_down_cold"] = bench.outage([p], args.fault_s, cold=True)
        else:
            out["p1_down_warm"] = bench.outage(["p1"], args.fault_s, cold=False)
        out["all_down_warm"] = bench.outage([p.name for p in bench.dns.providers], args.fault_s, cold=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--ttls", default="1,10,30,300", help="record TTLs, one lab each (the smallest runs all)")
    parser.add_argument("--rate", type=float, default=10.0, help="queries per second per client (1..200)")
    parser.add_argument("--fault-s", type=float, default=15.0, help="length of each outage (5..120 s)")
    parser.add_argument("--normal-s", type=float, default=10.0, help="the normal window (2..120 s)")
    parser.add_argument("--deploys", type=int, default=10, help="zone changes measured (1..100)")
    parser.add_argument("--repeat", type=int, default=3, help="anycast node-down runs per provider (1..20)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.ttls = sorted({int(x) for x in args.ttls.split(",") if x})
    if not (args.ttls and all(1 <= t <= 86400 for t in args.ttls) and 1 <= args.rate <= 200
            and 5 <= args.fault_s <= 120 and 2 <= args.normal_s <= 120 and 1 <= args.deploys <= 100
            and 1 <= args.repeat <= 20):
        parser.error("ttls 1..86400, rate 1..200, fault-s 5..120, normal-s 2..120, deploys 1..100, repeat 1..20")
    result = {"topology": "global.yaml", "rate_per_client": args.rate, "names": NAMES,
              "runs": [run_ttl(ttl, args) for ttl in args.ttls]}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
