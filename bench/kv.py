#!/usr/bin/env python3
"""Benchmark (not a test): replicated KV on ``global.yaml`` with a region killed mid-run.

A writer at one PoP server (``--writer``, region na) puts ``--rate`` keys per second for ``--seconds``;
``--kill`` (a region) goes down at a third of the run and comes back at two thirds. Then the bench waits
until every PoP server has every write (bounded), and reports:

- ``writes``, ``acked`` (committed: on two regions' masters), ``accepted`` (queued at the writer's
  replica: its master was away), ``acked_lost`` (acknowledged writes some PoP server never got), and
  ``accepted_to_committed_s`` (how long the queued ones waited);
- ``propagation_s``: acknowledgement → the write applied at every PoP server outside the killed region
  (from each replica's ``kv-applied.jsonl``, CLOCK_MONOTONIC) — and ``killed_region_catch_up_s``: the
  region's restore → its replicas holding every write;
- ``write_ms`` (the writer's put, replica → master → peer master → back) and ``read_local_ms`` (a get at
  a PoP server's replica), p50/p99.

    sudo .venv/bin/python bench/kv.py [--seconds 20] [--rate 20] [--kill eu]

``--nemesis wipe`` destroys instead: the writer's own region's storage node is cut off from the other
regions' (``storage-partition``) at a quarter of the run, so its master is the one that would acknowledge;
at half the run that master's disk is deleted (``kv-master-wipe``) and it comes back empty at once, still
cut off; the partition heals at three quarters. Then every acknowledged write is looked for on the masters
that were never wiped (their own disks, not the wiped one's, and without waiting for it to be rebuilt):
``acked_lost`` counts those that are on none of them, ``acked_missing`` those not yet on all of them after a
bounded wait. ``accepted`` writes (not acknowledged) that did not survive are counted apart
(``accepted_lost``): the design promises nothing for them, but the bench says how many.

``--nemesis clock`` jumps a master's clock instead (its HLC's physical input, on its operator socket; the
host's clock is not touched): one writer alternates between sjc-s1 (region na) and fra-s1 (region eu) over a
few keys, each put after the one before was answered, so that "acknowledged later" is a real order, and puts
a key of its own after each (never written again: nothing hides its loss). kv-na's clock goes 30 s ahead at
a quarter of the run, back and then 30 s behind at half, back at three quarters; the bench then waits
(bounded) for both writers' queues to drain and reads every key on every master: ``acked_overwritten``
counts keys whose final value is a write that was answered before the last acknowledged write to that key,
``diverged`` keys on which the masters disagree, ``acked_missing`` acknowledged own keys some master does
not have.

``--weaken`` runs the same against a master weakened behind the test-only switch (``ANYLAB_WEAKEN=kv``:
acknowledge after its own fsync): its losses are the proof that ``acked_lost: 0`` could have come out
otherwise. ``--both`` runs the weakened lab and then the real one and prints both, side by side.

    sudo .venv/bin/python bench/kv.py --nemesis wipe --both [--seconds 40] [--rate 100] [--writers 4]
    sudo .venv/bin/python bench/kv.py --nemesis clock [--seconds 40] [--rate 20] [--keys 20]

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.clock import monotonic  # noqa: E402
from core.wait import wait_for  # noqa: E402
from kv.client import KvClient  # noqa: E402
from kv.store import KvError  # noqa: E402
from lab.run.lab import Lab  # noqa: E402
from lab.run.launchers import WEAKEN_ENV  # noqa: E402

NS = "bench"



def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def applied_times(lab: Lab, server: str) -> dict[str, float]:
    """Key → when this replica first applied it."""
    out: dict[str, float] = {}
    path = lab.node_dir(server) / "kv-applied.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["ns"] == NS:
                for k in rec["keys"]:
                    out.setdefault(k, rec["t"])
    return out


def run(seconds: float, rate: float, kill: str, writer_pop: str) -> dict[str, Any]:
    with Lab.from_file(PROJECT / "topologies" / "global.yaml", name="bkv") as lab:
        writer = KvClient(lab.node_dir(lab.topo.pop(writer_pop).servers[0]) / "kv.sock", timeout=10)
        replies: dict[str, tuple[float, float, dict[str, Any]]] = {}
        t0 = monotonic()
        killed: dict[str, float] = {}
        errors: list[str] = []
        # The schedule of the run, on its own clock: down at 1/3, back at 2/3 (times relative to t0).
        chaos = on_schedule(t0, seconds, [(1 / 3, "down", lambda: lab.fail("region-down", kill)),
                                          (2 / 3, "up", lambda: lab.restore(kill))], killed, errors)
        i = 0
        while monotonic() - t0 < seconds:
            key = f"k{i:06d}"
            t_start = monotonic()
            try:
                reply = writer.put(NS, key, str(i).encode())
            except KvError as exc:
                reply = {"error": str(exc)}
            replies[key] = (t_start, monotonic(), reply)
            i += 1
            time.sleep(max(0.0, t0 + i / rate - monotonic()))  # the writer's pace
        chaos.join()
        acked = [k for k, (_s, _e, r) in replies.items() if r.get("committed") is True]
        accepted = [k for k, (_s, _e, r) in replies.items() if r.get("accepted") and not r.get("committed")]
        servers = [s.name for s in lab.topo.servers]
        dead = {s.name for s in lab.topo.servers if s.region == kill}

        def all_there() -> bool:
            return all(set(acked + accepted) <= set(applied_times(lab, s)) for s in servers)

        try:
            wait_for(all_there, timeout=120, what="every write at every PoP server", interval=0.5)
        except Exception as exc:  # report what is missing rather than nothing
            print(f"bench: {exc}", file=sys.stderr)
        applied = {s: applied_times(lab, s) for s in servers}
        lost = [k for k in acked if any(k not in applied[s] for s in servers)]
        propagation = []
        for k in acked:
            t_ack = replies[k][1]
            ts = [applied[s][k] for s in servers if s not in dead and k in applied[s]]
            if ts:
                propagation.append(max(0.0, max(ts) - t_ack))
        catch_up = max((applied[s][k] for s in dead for k in acked + accepted if k in applied[s]), default=None)
        drained: dict[str, float] = {}
        events = lab.node_dir(lab.topo.pop(writer_pop).servers[0]) / "kv-events.jsonl"
        for line in events.read_text().splitlines() if events.exists() else []:
            e = json.loads(line)
            if e.get("event") == "drained" and e.get("outcome") == "committed":
                drained[str(e.get("key"))] = float(e["t"])
        queued = [drained[k] - replies[k][1] for k in accepted if k in drained]
        reader = KvClient(lab.node_dir(lab.topo.pop("fra").servers[0]) / "kv.sock", timeout=10)
        reads = []
        for k in acked[:300]:
            t = monotonic()
            reader.get(NS, k)
            reads.append((monotonic() - t) * 1000)
        writes = [(e - s) * 1000 for s, e, r in replies.values() if r.get("committed") is True]
        return {
            "topology": "global", "writer": writer_pop, "killed_region": kill, "seconds": seconds, "rate_hz": rate,
            "writes": len(replies), "acked": len(acked), "accepted": len(accepted),
            "refused": sum("error" in r for _s, _e, r in replies.values()), "acked_lost": len(lost),
            "propagation_s": {"p50": pct(propagation, 0.5), "p99": pct(propagation, 0.99),
                              "max": round(max(propagation), 4) if propagation else None, "n": len(propagation)},
            "killed_region_catch_up_s": round(catch_up - (t0 + killed["up"]), 3) if catch_up and "up" in killed
            else None, "errors": errors,
            "accepted_to_committed_s": {"p50": pct(queued, 0.5), "max": round(max(queued), 3) if queued else None,
                                        "n": len(queued)},
            "read_local_ms": {"p50": pct(reads, 0.5), "p99": pct(reads, 0.99)},
            "write_ms": {"p50": pct(writes, 0.5), "p99": pct(writes, 0.99), "max": round(max(writes), 1)},
            "goals": {"acked_lost": 0, "propagation_p99_s": 0.5},
        }


def on_schedule(t0: float, seconds: float, steps: list[tuple[float, str, Callable[[], float]]],
                marks: dict[str, float], errors: list[str]) -> threading.Thread:
    """A started thread doing each step at its share of the run (``t0 + share × seconds``, in order), the time
    each returned (relative to ``t0``) in ``marks``; a failing step is put in ``errors`` and ends the schedule
    (never a hung bench)."""

    def run() -> None:
        try:
            for share, name, step in steps:
                time.sleep(max(0.0, t0 + share * seconds - monotonic()))
                marks[name] = step() - t0
        except Exception as exc:  # reported in the JSON
            errors.append(str(exc))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def keys_on(lab: Lab, master: str) -> set[str]:
    """Every live key of the bench's namespace on one master (its own disk, through its socket)."""
    client = KvClient(lab.node_dir(master) / "kv.sock", timeout=10)
    out: set[str] = set()
    cursor: str | None = None
    while True:
        page = client.list(NS, cursor=cursor)
        out.update(k["name"] for k in page["keys"])
        cursor = page.get("cursor")
        if page.get("list_complete") or not cursor:
            return out


def run_wipe(seconds: float, rate: float, writers: int, writer_pop: str, weaken: bool) -> dict[str, Any]:
    """The destructive run (see the module's text); ``weaken``: against the test-only weakened master."""
    if weaken:
        os.environ[WEAKEN_ENV] = "kv"
    else:
        os.environ.pop(WEAKEN_ENV, None)
    try:
        with Lab.from_file(PROJECT / "topologies" / "global.yaml", name="bkvwipe") as lab:
            server = lab.topo.pop(writer_pop).servers[0]
            region = lab.topo.server(server).region
            (master,) = [k.name for k in lab.topo.kv_masters if k.region == region]
            survivors = [k.name for k in lab.topo.kv_masters if k.name != master]
            writer = KvClient(lab.node_dir(server) / "kv.sock", timeout=10)
            replies: dict[str, dict[str, Any]] = {}
            marks: dict[str, float] = {}
            errors: list[str] = []
            t0 = monotonic()

            # The schedule, on the run's clock: cut at 1/4, wipe (back at once, empty) at 1/2, heal at 3/4.
            chaos = on_schedule(t0, seconds, [
                (1 / 4, "partition", lambda: lab.fail("storage-partition", region)),
                (1 / 2, "wipe", lambda: lab.fail("kv-master-wipe", master)),
                (1 / 2, "back_empty", lambda: lab.restore(master)),
                (3 / 4, "heal", lambda: lab.restore(region))], marks, errors)
            timing: dict[str, tuple[float, float]] = {}

            def write(w: int) -> None:
                # One of ``writers`` threads, each at rate / writers, through the same replica.
                client = KvClient(writer.socket, timeout=10)
                i = 0
                while monotonic() - t0 < seconds:
                    key = f"w{w}-{i:06d}"
                    t_start = monotonic()
                    try:
                        replies[key] = client.put(NS, key, str(i).encode())
                    except KvError as exc:
                        replies[key] = {"error": str(exc)}
                    timing[key] = (t_start - t0, monotonic() - t_start)
                    i += 1
                    time.sleep(max(0.0, t0 + i * writers / rate - monotonic()))  # this writer's pace

            threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            chaos.join()
            bounds = [("before", 0.0), ("partitioned", marks.get("partition", seconds)),
                      ("wiped", marks.get("back_empty", seconds)), ("healed", marks.get("heal", seconds))]
            phases: dict[str, dict[str, Any]] = {}
            for n, (name, start) in enumerate(bounds):
                end = bounds[n + 1][1] if n + 1 < len(bounds) else seconds + 1e9
                ks = [k for k, (ts, _d) in timing.items() if start <= ts < end]
                phases[name] = {"writes": len(ks), "acked": sum(replies[k].get("committed") is True for k in ks),
                                "put_ms_p50": pct([timing[k][1] * 1000 for k in ks], 0.5),
                                "put_ms_max": round(max((timing[k][1] * 1000 for k in ks), default=0.0), 1)}
            acked = {k for k, r in replies.items() if r.get("committed") is True}
            accepted = {k for k, r in replies.items() if r.get("accepted") and not r.get("committed")}
            seen: dict[str, set[str]] = {}

            def everywhere() -> bool:
                for m in survivors:
                    seen[m] = keys_on(lab, m)
                return all(acked <= seen[m] for m in survivors)

            try:
                wait_for(everywhere, timeout=30, what="every acknowledged write on every master never wiped",
                         interval=0.5)
            except Exception as exc:  # the count below says what is missing
                errors.append(str(exc))
            anywhere = set().union(*seen.values()) if seen else set()
            lost = sorted(acked - anywhere)
            return {
                "weakened": weaken, "writer": server, "acking_master": master, "survivors": survivors,
                "seconds": seconds, "rate_hz": rate, "writers": writers,
                "marks_s": {k: round(v, 3) for k, v in marks.items()},
                "writes": len(replies), "acked": len(acked), "accepted": len(accepted),
                "refused": sum("error" in r for r in replies.values()), "phases": phases,
                "acked_lost": len(lost), "acked_lost_first": lost[:10],
                "acked_missing": sum(1 for k in acked if any(k not in seen.get(m, set()) for m in survivors)),
                "accepted_lost": len(accepted - anywhere), "errors": errors,
            }
    finally:
        os.environ.pop(WEAKEN_ENV, None)


def run_clock(seconds: float, rate: float, keys: int) -> dict[str, Any]:
    """The clock-jump run (see the module's text)."""
    with Lab.from_file(PROJECT / "topologies" / "global.yaml", name="bkvclock") as lab:
        writers = {pop: KvClient(lab.node_dir(lab.topo.pop(pop).servers[0]) / "kv.sock", timeout=10)
                   for pop in ("sjc", "fra")}
        masters = [k.name for k in lab.topo.kv_masters]
        log: list[dict[str, Any]] = []  # every put, in the order they were made (each after the last answer)
        own: dict[str, bool] = {}  # a key written once → acknowledged
        marks: dict[str, float] = {}
        errors: list[str] = []
        t0 = monotonic()

        chaos = on_schedule(t0, seconds, [
            (1 / 4, "ahead", lambda: lab.fail("clock-ahead", "kv-na")),
            (1 / 2, "undone", lambda: lab.restore("kv-na")),
            (1 / 2, "behind", lambda: lab.fail("clock-behind", "kv-na")),
            (3 / 4, "back", lambda: lab.restore("kv-na"))], marks, errors)
        i = 0
        while monotonic() - t0 < seconds:
            pop = ("sjc", "fra")[i % 2]
            key, value = f"c{(i // 2) % keys}", f"{i}"
            try:
                reply = writers[pop].put(NS, key, value.encode())
            except KvError as exc:
                reply = {"error": str(exc)}
            log.append({"i": i, "pop": pop, "key": key, "value": value, "t": monotonic() - t0,
                        "acked": reply.get("committed") is True,
                        "accepted": bool(reply.get("accepted")) and reply.get("committed") is not True})
            try:
                own[f"u{i:06d}"] = writers[pop].put(NS, f"u{i:06d}", value.encode()).get("committed") is True
            except KvError:
                own[f"u{i:06d}"] = False
            i += 1
            time.sleep(max(0.0, t0 + i / rate - monotonic()))
        chaos.join()

        def drained() -> bool:
            return all(w.status()["queue"] == 0 for w in writers.values())

        try:  # a write stamped 30 s ahead is refused by the peers until real time catches up with it
            wait_for(drained, timeout=60, what="both writers' queues to drain", interval=0.5)
        except Exception as exc:
            errors.append(str(exc))
        finals: dict[str, dict[str, str | None]] = {}

        def settled() -> bool:
            for k in {e["key"] for e in log}:
                got = {m: KvClient(lab.node_dir(m) / "kv.sock", timeout=10).get(NS, k) for m in masters}
                finals[k] = {m: (g["value"].decode() if g else None) for m, g in got.items()}
            return all(len(set(v.values())) == 1 for v in finals.values())

        try:
            wait_for(settled, timeout=30, what="every master to hold the same value of every key", interval=0.5)
        except Exception as exc:
            errors.append(str(exc))
        acked_own = {k for k, ok in own.items() if ok}
        holding: dict[str, set[str]] = {}

        def own_everywhere() -> bool:
            for m in masters:
                holding[m] = {k for k in keys_on(lab, m) if k.startswith("u")}
            return all(acked_own <= held for held in holding.values())

        try:
            wait_for(own_everywhere, timeout=30, what="every acknowledged own key on every master", interval=0.5)
        except Exception as exc:
            errors.append(str(exc))
        overwritten = []
        for k, values in finals.items():
            acked = [e for e in log if e["key"] == k and e["acked"]]
            if not acked:
                continue
            last = acked[-1]
            for m, v in values.items():
                writer_of = next((e for e in log if e["key"] == k and e["value"] == v), None)
                if writer_of is None or writer_of["i"] < last["i"]:
                    overwritten.append({"key": k, "master": m, "final": v, "last_acked": last["value"],
                                        "final_written_at_s": round(writer_of["t"], 2) if writer_of else None})
        return {
            "nemesis": "clock", "seconds": seconds, "rate_hz": rate, "keys": keys, "jump_s": 30.0,
            "marks_s": {k: round(v, 3) for k, v in marks.items()},
            "writes": len(log), "acked": sum(e["acked"] for e in log), "accepted": sum(e["accepted"] for e in log),
            "acked_by_pop": {p: sum(e["acked"] for e in log if e["pop"] == p) for p in ("sjc", "fra")},
            "acked_overwritten": len({o["key"] for o in overwritten}), "overwritten": overwritten[:10],
            "diverged": sum(1 for v in finals.values() if len(set(v.values())) > 1),
            "own_keys": len(own), "own_acked": len(acked_own),
            "acked_missing": {m: len(acked_own - holding.get(m, set())) for m in masters},
            "refused_future_hlc": {m: KvClient(lab.node_dir(m) / "kv.sock").status()["refused"]["future_hlc"]
                                   for m in masters},
            "errors": errors,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="20 (region-down), 40 (wipe)")
    parser.add_argument("--rate", type=float, default=None, help="writes per second: 20 (region-down), 100 (wipe)")
    parser.add_argument("--kill", default="eu")
    parser.add_argument("--writer", default="sjc", help="the writer's PoP")
    parser.add_argument("--nemesis", choices=("region-down", "wipe", "clock"), default="region-down")
    parser.add_argument("--keys", type=int, default=20, help="clock: how many keys the writer cycles through")
    parser.add_argument("--weaken", action="store_true", help="wipe: against the test-only weakened master")
    parser.add_argument("--both", action="store_true", help="wipe: the weakened run, then the real one")
    parser.add_argument("--writers", type=int, default=4, help="wipe: concurrent writers at the one PoP server")
    args = parser.parse_args()
    if args.nemesis == "region-down":
        if args.weaken or args.both:
            parser.error("--weaken and --both go with --nemesis wipe")
        print(json.dumps(run(args.seconds or 20.0, args.rate or 20.0, args.kill, args.writer), indent=1))
        return
    if args.nemesis == "clock":
        seconds, rate = args.seconds or 40.0, args.rate or 20.0
        if not (5 <= seconds <= 600 and 1 <= rate <= 200 and 1 <= args.keys <= 1000):
            parser.error("--seconds 5..600, --rate 1..200 and --keys 1..1000 (the run is bounded)")
        print(json.dumps(run_clock(seconds, rate, args.keys), indent=1))
        return
    seconds, rate = args.seconds or 40.0, args.rate or 100.0
    if not (5 <= seconds <= 600 and 1 <= rate <= 500 and 1 <= args.writers <= 16):
        parser.error("--seconds 5..600, --rate 1..500 and --writers 1..16 (the run is bounded)")
    runs = [True, False] if args.both else [args.weaken]
    results = [run_wipe(seconds, rate, args.writers, args.writer, weaken) for weaken in runs]
    print(json.dumps({"nemesis": "wipe", "topology": "global", "runs": results,
                      "goals": {"acked_lost": 0, "acked_min": 1000}}, indent=1))


if __name__ == "__main__":
    main()
