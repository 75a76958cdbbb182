"""The link relay in two namespaces joined by a veth: the delay it is asked for, each way, within the
issue's goals (p50 within 0.5 ms, p99 within 2 ms) — and the same measurement failing them against the
weakened relay (wake-ups on a 2 ms tick), so the check can fail; a dead relay drops, it never passes packets
unshaped; reloading a router's link rules loses nothing its relay holds (and a reload that unhooks the chains,
as a plain iptables-restore does, is shown to lose it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core import netns
from core.proc import ProcessGroup
from core.stats import quantile
from core.wait import socket_accepts, wait_for
from lab.links import apply
from lab.links.control import RELAY_BIN, config_text, relay_request
from tests.conftest import PROJECT

PREFIX = f"anylab-t{os.getpid()}l-"
A, B = "10.98.0.1", "10.98.0.2"
DELAY_MS = 1.0  # the smallest setting of the goals: a millisecond wait is twice the p50 budget
GOAL_P50_MS, GOAL_P99_MS = 0.5, 2.0


@dataclass
class Pair:
    a: str
    b: str
    procs: ProcessGroup
    run_dir: Path


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    a, b = netns.add(PREFIX + "a"), netns.add(PREFIX + "b")
    procs = ProcessGroup(tmp_path)
    try:
        netns.ip("-n", PREFIX + "a", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", PREFIX + "b")
        for ns, intf, addr in ((PREFIX + "a", "va", A), (PREFIX + "b", "vb", B)):
            netns.ip("-n", ns, "address", "add", f"{addr}/24", "dev", intf)
            netns.ip("-n", ns, "link", "set", intf, "up")
        yield Pair(a, b, procs, tmp_path)
    finally:
        errors: list[str] = []
        procs.stop_all(errors)
        netns.delete(PREFIX + "a")
        netns.delete(PREFIX + "b")
        assert errors == []


def start_relay(p: Pair, delay_ms: float, weaken: bool = False) -> int:
    config = {"queues": [{"queue": q, "label": f"va {d}", "shape": {"delay_s": delay_ms / 1e3}}
                         for q, d in ((0, "out"), (1, "in"))]}
    (p.run_dir / "relay.conf").write_text(config_text(config))
    env = dict(os.environ)
    env.pop("ANYLAB_WEAKEN", None)
    if weaken:
        env["ANYLAB_WEAKEN"] = "links"
    proc = p.procs.spawn([str(RELAY_BIN), str(p.run_dir / "relay.conf"), str(p.run_dir / "relay.sock")], node="a",
                         name="relay", netns=p.a, log=p.run_dir / "relay.out", env=env)
    wait_for(lambda: socket_accepts(p.run_dir / "relay.sock"), timeout=10, what="relay")
    apply.load_queues(p.a, [apply.Relayed("va", 0, 1)])
    return proc.pid


def one_way_ms(p: Pair, count: int = 1000, rate: float = 1000.0) -> list[float]:
    """A → B one-way delays (ms) of ``count`` datagrams at ``rate`` (the owd tool)."""
    out = p.run_dir / "recv.json"
    recv = p.procs.spawn([sys.executable, "-m", "lab.links.owd", "recv", "--bind", B, "--port", "9100", "--count",
                          str(count), "--wait", "2"], node="b", name="recv", netns=p.b, log=out)
    wait_for(lambda: out.exists() and b"ready" in out.read_bytes(), timeout=10, what="receiver")
    send = subprocess.run(["nsenter", f"--net={p.a}", "--", sys.executable, "-m", "lab.links.owd", "send", "--to", B,
                           "--port", "9100", "--count", str(count), "--rate", str(rate)], cwd=PROJECT,
                          capture_output=True, timeout=60, check=True)
    assert json.loads(send.stdout)["sent"] == count
    assert recv.popen is not None
    recv.popen.wait(timeout=30)
    delays: list[float] = json.loads(out.read_text().splitlines()[-1])["delays_ms"]
    return delays


def errors_ms(delays: list[float], asked: float) -> tuple[float, float]:
    p50, p99 = quantile(delays, 0.5), quantile(delays, 0.99)
    assert p50 is not None and p99 is not None
    return p50 - asked, p99 - asked


def test_the_relay_delays_each_way_within_the_goals(pair: Pair) -> None:
    start_relay(pair, DELAY_MS)
    delays = one_way_ms(pair)
    assert len(delays) == 1000
    e50, e99 = errors_ms(delays, DELAY_MS)
    assert abs(e50) <= GOAL_P50_MS and abs(e99) <= GOAL_P99_MS, (e50, e99)
    # and the other way (the owner's inbound queue), by the ping's round trip: 2 × delay, within 2 × goal
    res = subprocess.run(["nsenter", f"--net={pair.b}", "--", "ping", "-U", "-n", "-q", "-c", "50", "-i", "0.01",
                          A], capture_output=True, text=True, check=True)
    avg = float(res.stdout.rsplit("=", 1)[1].split("/")[1])
    assert abs(avg - 2 * DELAY_MS) <= 2 * GOAL_P50_MS, res.stdout
    stats = relay_request(pair.run_dir / "relay.sock", {"op": "stats"})
    assert {q["queue"]: q["passed"] > 0 for q in stats["queues"]} == {0: True, 1: True}


def test_the_same_check_fails_against_a_coarse_timer(pair: Pair) -> None:
    start_relay(pair, DELAY_MS, weaken=True)
    e50, _ = errors_ms(one_way_ms(pair, count=500), DELAY_MS)
    assert e50 > GOAL_P50_MS, f"the weakened relay met the goal (p50 error {e50:.3f} ms): the check cannot fail"


def test_a_dead_relay_drops_the_links_packets(pair: Pair) -> None:
    pid = start_relay(pair, 5.0)
    os.kill(pid, 9)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             timeout=5, what="the relay gone")
    res = subprocess.run(["nsenter", f"--net={pair.b}", "--", "ping", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1",
                          A], capture_output=True, text=True, check=False)
    assert " 0 received" in res.stdout, res.stdout  # no --queue-bypass: never a bare veth by accident


def received_while_reloading(pair: Pair, reload: Callable[[], object]) -> int:
    """How many of 1 000 datagrams (1 s) cross a 50 ms relayed link while ``reload`` runs every 50 ms."""
    start_relay(pair, 50.0)
    stop = threading.Event()

    def reloads() -> None:
        while not stop.wait(0.05):
            reload()

    worker = threading.Thread(target=reloads)
    worker.start()
    try:
        return len(one_way_ms(pair, count=1000, rate=1000.0))
    finally:
        stop.set()
        worker.join()


def test_reloading_the_link_rules_loses_nothing_the_relay_holds(pair: Pair) -> None:
    def reload() -> None:
        apply.load_queues(pair.a, [apply.Relayed("va", 0, 1)])
        apply.load_loss(pair.a, {})

    assert received_while_reloading(pair, reload) == 1000


def test_a_reload_that_unhooks_the_chains_loses_what_the_relay_holds(pair: Pair) -> None:
    # The reference the check above must be able to fail against: iptables-restore without --noflush
    # deletes and re-creates the mangle table, and the kernel drops every packet queued in the namespace.
    rules = apply.iptables_queues([apply.Relayed("va", 0, 1)])
    received = received_while_reloading(pair, lambda: apply.run_in(pair.a, ["iptables-restore", "-w", "5"], rules))
    assert received < 1000
