#!/usr/bin/env python3
"""Benchmark (not a test): how exactly a shaped link does what it is asked, beside vde-wirefilter.

Two namespaces joined twice: a veth pair shaped by anylab (the relay for delay, nftables for loss, HTB for
bandwidth: :mod:`lab.links`), and two TAPs joined through ``vde_switch``/``wirefilter`` (Debian's vde2),
the reference; and the relay twice: the C program the lab runs and its Python reference
(``lab.links.relay``, same design), to show what the language costs. Delay is measured one way per
direction (:mod:`lab.links.owd`: both ends read the same CLOCK_MONOTONIC), for each delay setting and
packet rate, both directions at once, on each mechanism.
The relay's CPU time over each run gives its cost per shaped link direction at that rate.

    sudo .venv/bin/python bench/links.py [--delays 1,5,20,50,100] [--rates 1000,10000] [--seconds 2]
        [--loss 1,10] [--bandwidth 10,100] [--skip-vde] [--out bench/results/links.json]

Goals (issue 21): |p50 − set| ≤ 0.5 ms and |p99 − set| ≤ 2 ms; loss inside the binomial 99 % interval;
bandwidth within 5 %. ``ANYLAB_WEAKEN=links`` runs the relays with wake-ups on a 2 ms tick: the goals must fail.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core import netns  # noqa: E402
from core.clock import monotonic  # noqa: E402
from core.errors import AnylabError  # noqa: E402
from core.proc import Proc, ProcessGroup  # noqa: E402
from core.stats import quantile, wilson  # noqa: E402
from core.wait import socket_accepts, wait_for  # noqa: E402
from lab.links import apply  # noqa: E402
from lab.links.control import RELAY_BIN, config_text, relay_request  # noqa: E402
from lab.run.rundir import RUN_ROOT, netns_prefix  # noqa: E402

NAME = "blinks"
PY = sys.executable
# Node A holds the relay (both directions of the veth); B is the far end. 10.99.1/24 veth, 10.99.2/24 TAP.
VETH = ("10.99.1.1", "10.99.1.2")
TAP = ("10.99.2.1", "10.99.2.2")
GOAL_P50_MS, GOAL_P99_MS, GOAL_BW = 0.5, 2.0, 0.05


def py_request(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the Python reference relay (JSON both ways)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        answer: dict[str, Any] = json.loads(s.makefile().readline())
    if "error" in answer:
        raise AnylabError(f"relay-py: {answer['error']}")
    return answer


def started(path: Path) -> bool:
    """Whether a tool writing to ``path`` said it is ready."""
    return path.exists() and b"ready" in path.read_bytes()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    """The two namespaces, their links and the processes started in them (all recorded, all stopped)."""

    def __init__(self, skip_vde: bool) -> None:
        self.run_dir = RUN_ROOT / NAME
        if self.run_dir.exists() or netns.names(netns_prefix(NAME)):
            raise AnylabError(f"{self.run_dir} or namespaces {netns_prefix(NAME)}* exist: "
                              f"run 'anylab down --name {NAME}' first")
        self.run_dir.mkdir(parents=True)
        self.procs = ProcessGroup(self.run_dir)
        self.ns = {n: netns.add(netns_prefix(NAME) + n) for n in ("a", "b")}
        self.skip_vde = skip_vde
        self.relay: Proc | None = None
        self.relay_kind = "relay"
        self.wirefilter: Proc | None = None

    def build(self) -> None:
        a, b = (netns_prefix(NAME) + n for n in ("a", "b"))
        netns.ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for n, intf, addr in ((a, "va", VETH[0]), (b, "vb", VETH[1])):
            netns.ip("-n", n, "address", "add", f"{addr}/24", "dev", intf)
            netns.ip("-n", n, "link", "set", intf, "up")
            netns.ip("-n", n, "link", "set", "lo", "up")
        self.use_relay("relay")
        apply.load_queues(self.ns["a"], [apply.Relayed("va", 0, 1)])
        if not self.skip_vde:
            for n in ("a", "b"):
                sw = self.run_dir / f"sw{n}"
                self.procs.spawn(["vde_switch", "--sock", str(sw)], node=n, name="vde_switch",
                                 log=self.run_dir / f"sw{n}.out", stdin=subprocess.PIPE)
                wait_for((sw / "ctl").exists, timeout=10, what="vde_switch")
                self.procs.spawn(["vde_plug2tap", "--sock", str(sw), f"t{n}"], node=n, name="vde_plug2tap",
                                 netns=self.ns[n], log=self.run_dir / f"tap{n}.out")
            for n, addr in (("a", TAP[0]), ("b", TAP[1])):
                wait_for(partial(self.has_link, n, f"t{n}"), timeout=10, what=f"tap t{n}")
                netns.ip("-n", netns_prefix(NAME) + n, "address", "add", f"{addr}/24", "dev", f"t{n}")
                netns.ip("-n", netns_prefix(NAME) + n, "link", "set", f"t{n}", "up")

    def has_link(self, n: str, intf: str) -> bool:
        res = subprocess.run(["ip", "-n", netns_prefix(NAME) + n, "link", "show", intf], capture_output=True,
                             check=False)
        return res.returncode == 0

    def use_relay(self, kind: str) -> None:
        """Run the C relay (``relay``, what the lab runs) or the Python reference (``relay-py``) on the
        veth's two queues (one process can hold a queue: the other is stopped first)."""
        if self.relay is not None:
            self.relay.stop()
            self.procs.procs.remove(self.relay)
        self.relay_kind = kind
        queues = {"queues": [{"queue": 0, "label": "va out", "shape": {}}, {"queue": 1, "label": "va in", "shape": {}}],
                  "seed": 1}
        sock = self.run_dir / "relay.sock"
        sock.unlink(missing_ok=True)
        if kind == "relay":
            (self.run_dir / "relay.conf").write_text(config_text(queues))
            argv = [str(RELAY_BIN), str(self.run_dir / "relay.conf"), str(sock)]
        else:
            (self.run_dir / "relay.json").write_text(json.dumps(queues))
            argv = [PY, "-m", "lab.links.relay", "--config", str(self.run_dir / "relay.json"), "--control", str(sock)]
        self.relay = self.procs.spawn(argv, node="a", name=kind, netns=self.ns["a"],
                                      log=self.run_dir / f"{kind}.out", env=dict(os.environ))
        wait_for(lambda: socket_accepts(sock), timeout=10, what=kind)

    def set_relay(self, delay_ms: float, jitter_ms: float = 0.0, loss: float = 0.0, burst: float = 1.0) -> None:
        shape = {"delay_s": delay_ms / 1e3, "jitter_s": jitter_ms / 1e3, "loss": loss, "burst": burst}
        for q in (0, 1):
            request = {"op": "set", "queue": q, "shape": shape}
            if self.relay_kind == "relay":
                relay_request(self.run_dir / "relay.sock", request)
            else:
                py_request(self.run_dir / "relay.sock", request)

    def set_wirefilter(self, delay_ms: float) -> None:
        if self.wirefilter is not None:
            self.wirefilter.stop()
            self.procs.procs.remove(self.wirefilter)
        self.wirefilter = self.procs.spawn(
            ["wirefilter", "-v", f"{self.run_dir / 'swa'}:{self.run_dir / 'swb'}", "-d", str(delay_ms)],
            node="a", name="wirefilter", log=self.run_dir / "wirefilter.out", stdin=subprocess.PIPE)
        # ready when a packet crosses: ARP resolves and one ping answers
        wait_for(lambda: self.ping(self.ns["a"], TAP[1]), timeout=10, what="wirefilter passes packets")

    @staticmethod
    def ping(ns: str, addr: str) -> bool:
        res = subprocess.run(["nsenter", f"--net={ns}", "--", "ping", "-c", "1", "-W", "1", addr],
                             capture_output=True, check=False)
        return res.returncode == 0

    def one_way(self, addrs: tuple[str, str], count: int, rate: float, port: int, wait_s: float) -> dict[str, Any]:
        """Both directions at once: count datagrams at rate each way; direction → its delays (ms)."""
        outs: dict[str, Path] = {}
        receivers = []
        for d, (dst, dst_addr) in {"a_to_b": ("b", addrs[1]), "b_to_a": ("a", addrs[0])}.items():
            outs[d] = self.run_dir / f"recv-{d}.json"
            outs[d].unlink(missing_ok=True)
            receivers.append(self.procs.spawn(
                [PY, "-m", "lab.links.owd", "recv", "--bind", dst_addr, "--port", str(port), "--count", str(count),
                 "--wait", str(wait_s)], node=dst, name="owd-recv", netns=self.ns[dst], log=outs[d]))
        for d, path in outs.items():
            wait_for(partial(started, path), timeout=10, what=f"receiver {d}")
        senders = [self.procs.spawn([PY, "-m", "lab.links.owd", "send", "--to", dst_addr, "--port", str(port),
                                     "--count", str(count), "--rate", str(rate)],
                                    node=src, name="owd-send", netns=self.ns[src], log=self.run_dir / f"send-{src}.out")
                   for src, dst_addr in (("a", addrs[1]), ("b", addrs[0]))]
        for p in [*senders, *receivers]:
            assert p.popen is not None
            p.popen.wait(timeout=count / rate + wait_s + 30)
            self.procs.procs.remove(p)
        result = {}
        for d, path in outs.items():
            lines = path.read_text().splitlines()
            result[d] = json.loads(lines[-1])
        return result

    def bulk(self, seconds: float, port: int) -> dict[str, float]:
        out = self.run_dir / "sink.json"
        out.unlink(missing_ok=True)
        sink = self.procs.spawn([PY, "-m", "lab.links.owd", "sink", "--bind", VETH[1], "--port", str(port),
                                 "--seconds", str(seconds)], node="b", name="sink", netns=self.ns["b"], log=out)
        wait_for(partial(started, out), timeout=10, what="sink")
        blast = self.procs.spawn([PY, "-m", "lab.links.owd", "blast", "--to", VETH[1], "--port", str(port),
                                  "--seconds", str(seconds)], node="a", name="blast", netns=self.ns["a"],
                                 log=self.run_dir / "blast.out")
        for p in (blast, sink):
            assert p.popen is not None
            p.popen.wait(timeout=seconds + 30)
            self.procs.procs.remove(p)
        result: dict[str, float] = json.loads(out.read_text().splitlines()[-1])
        return result

    def close(self, errors: list[str]) -> None:
        self.procs.stop_all(errors)
        for n in self.ns:
            try:
                netns.delete(netns_prefix(NAME) + n)
            except AnylabError as exc:
                errors.append(str(exc))
        shutil.rmtree(self.run_dir, ignore_errors=True)


@contextmanager
def bench(skip_vde: bool) -> Iterator[Bench]:
    b = Bench(skip_vde)
    errors: list[str] = []
    try:
        b.build()
        yield b
    finally:
        b.close(errors)
        if errors:
            print(json.dumps({"teardown_errors": errors}), file=sys.stderr)


def delay_stats(delays: list[float], asked: float, sent: int) -> dict[str, Any]:
    p50, p99 = quantile(delays, 0.5), quantile(delays, 0.99)
    out: dict[str, Any] = {"received": len(delays), "sent": sent}
    if p50 is None or p99 is None:
        return {**out, "ok": False}
    e50, e99 = p50 - asked, p99 - asked
    return {**out, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "max_ms": round(max(delays), 3),
            "min_ms": round(min(delays), 3), "p50_err_ms": round(e50, 3), "p99_err_ms": round(e99, 3),
            "ok": abs(e50) <= GOAL_P50_MS and abs(e99) <= GOAL_P99_MS and len(delays) == sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays", default="1,5,20,50,100")
    parser.add_argument("--rates", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--loss", default="1,10")
    parser.add_argument("--loss-packets", type=int, default=20000)
    parser.add_argument("--bandwidth", default="10,100")
    parser.add_argument("--skip-vde", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    delays = [float(x) for x in args.delays.split(",") if x]
    rates = [float(x) for x in args.rates.split(",") if x]
    out: dict[str, Any] = {"seconds_per_point": args.seconds, "weakened": os.environ.get("ANYLAB_WEAKEN") == "links",
                           "goals": {"p50_err_ms": GOAL_P50_MS, "p99_err_ms": GOAL_P99_MS, "bandwidth": GOAL_BW},
                           "delay": [], "loss": [], "bandwidth": []}
    with bench(args.skip_vde) as b:
        port = 9000
        for rate in rates:
            count = int(rate * args.seconds)
            for d in delays:
                mechs = ["relay", "relay-py"] + ([] if args.skip_vde else ["wirefilter"])
                for mech in mechs:
                    port += 1
                    if mech.startswith("relay"):
                        if b.relay_kind != mech:
                            b.use_relay(mech)
                        b.set_relay(d)
                        assert b.relay is not None
                        cpu0, t0 = cpu_s(b.relay.pid), monotonic()
                    else:
                        b.set_wirefilter(d)
                    got = b.one_way(TAP if mech == "wirefilter" else VETH, count, rate, port, wait_s=2.0 + d / 1e3)
                    row: dict[str, Any] = {"mechanism": mech, "delay_ms": d, "rate_pps": rate}
                    if mech.startswith("relay"):
                        assert b.relay is not None
                        # two directions of one link at `rate` each: the relay's share of one core
                        row["relay_cpu_per_direction"] = round((cpu_s(b.relay.pid) - cpu0) / (monotonic() - t0) / 2, 4)
                    for direction, r in got.items():
                        row[direction] = delay_stats(r["delays_ms"], d, count)
                    row["ok"] = all(row[k]["ok"] for k in ("a_to_b", "b_to_a"))
                    out["delay"].append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        b.use_relay("relay")
        b.set_relay(0.0)
        for pct in [float(x) for x in args.loss.split(",") if x]:
            for burst in (1.0, 4.0):
                port += 1
                if burst == 1.0:  # independent loss: the kernel (nftables), no relay in the way
                    apply.load_loss(b.ns["a"], {"va": pct / 100})
                    apply.load_loss(b.ns["b"], {"vb": pct / 100})
                else:  # bursty: the relay's Gilbert model
                    b.set_relay(0.0, loss=pct / 100, burst=burst)
                n = args.loss_packets
                got = b.one_way(VETH, n, 5000.0, port, wait_s=1.0)
                apply.load_loss(b.ns["a"], {})
                apply.load_loss(b.ns["b"], {})
                b.set_relay(0.0)
                for direction, r in got.items():
                    lost = n - r["received"]
                    # Losses in runs are correlated: a two-state chain with lag-1 correlation
                    # lam = 1 - p - r has the variance of n / ((1+lam)/(1-lam)) independent draws.
                    rr = 1 / burst
                    pp = pct / 100 * rr / (1 - pct / 100)
                    lam = 1 - pp - rr
                    n_eff = n if burst == 1.0 else max(1, round(n * (1 - lam) / (1 + lam)))
                    lo, hi = wilson(round(lost * n_eff / n), n_eff)
                    out["loss"].append({"loss_pct": pct, "burst": burst, "direction": direction, "sent": n,
                                        "lost": lost, "independent_draws": n_eff,
                                        "mean_run": round(lost / r["loss_runs"], 2) if r["loss_runs"] else None,
                                        "ci99_pct": [round(lo * 100, 3), round(hi * 100, 3)],
                                        "ok": lo <= pct / 100 <= hi})
                    print(json.dumps(out["loss"][-1]), file=sys.stderr, flush=True)
        for mbit in [float(x) for x in args.bandwidth.split(",") if x]:
            port += 1
            apply.load_bandwidth(b.ns["a"], "va", mbit, None)
            tx0 = tx_bytes(b.ns["a"], "va")
            t0 = monotonic()
            got_bw = b.bulk(6.0, port)
            link_mbit = (tx_bytes(b.ns["a"], "va") - tx0) * 8 / (monotonic() - t0) / 1e6
            apply.load_bandwidth(b.ns["a"], "va", None, None)
            # TCP's goodput is the rate less headers: 1448 payload bytes in 1514 on the wire.
            expect_goodput = mbit * 1448 / 1514
            out["bandwidth"].append({"mbit": mbit, "goodput_mbit": round(got_bw["mbit_s"], 2),
                                     "expected_goodput_mbit": round(expect_goodput, 2),
                                     "err": round(got_bw["mbit_s"] / expect_goodput - 1, 4),
                                     "link_mbit_incl_tail": round(link_mbit, 2),
                                     "ok": abs(got_bw["mbit_s"] / expect_goodput - 1) <= GOAL_BW})
            print(json.dumps(out["bandwidth"][-1]), file=sys.stderr, flush=True)
    out["ok"] = {k: all(r["ok"] for r in out[k] if r.get("mechanism", "relay") == "relay")
                 for k in ("delay", "loss", "bandwidth")}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def tx_bytes(ns: str, intf: str) -> int:
    res = subprocess.run(["ip", "-n", Path(ns).name, "-j", "-s", "link", "show", intf], capture_output=True,
                         text=True, check=True)
    return int(json.loads(res.stdout)[0]["stats64"]["tx"]["bytes"])


if __name__ == "__main__":
    t = time.time()
    main()
