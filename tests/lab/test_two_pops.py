"""two_pops.yaml end to end: preferred PoP, failover on withdrawal, and back.

Timing bound: a withdrawal reaches c1's router r1 through two bgpd hops (r2, then r1 switches to the
path via r3 that it already holds). FRR holds each update ~50 ms before relaying it (hard-coded
process-queue hold in bgpd) plus 10 ms in zebra, so the floor is ≈ 0.12 s; MARGIN_S covers a busy
2-core CI machine. Nothing here depends on the hold timer: a graceful withdrawal is sent at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.load.client_http import client_request
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES

BGPD_HOLD_S = 0.05
ZEBRA_HOLD_S = 0.01
HOPS = 2
MARGIN_S = 1.0
SHIFT_BOUND_S = HOPS * (BGPD_HOLD_S + ZEBRA_HOLD_S) + MARGIN_S


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "two_pops.yaml", name="ttwo") as running:
        yield running


def test_client_reaches_preferred_pop(lab: Lab) -> None:
    assert lab.catchment() == {"c1": "sjc"} == lab.predicted()
    assert all(s.up == s.total for s in lab.sessions())


def test_withdraw_moves_client_to_backup_and_back(lab: Lab) -> None:
    t = lab.withdraw("sjc")
    shift = lab.wait_shifted(["c1"], t)["c1"]
    assert (shift.from_pop, shift.to_pop) == ("sjc", "lax")
    assert shift.shift_s is not None and shift.shift_s < SHIFT_BOUND_S
    # sjc keeps answering until the route moves: a graceful withdrawal loses nothing.
    assert shift.lost == 0
    t = lab.announce("sjc")
    back = lab.wait_shifted(["c1"], t)["c1"]
    assert (back.from_pop, back.to_pop) == ("lax", "sjc")
    assert back.shift_s is not None and back.shift_s < SHIFT_BOUND_S


def http_get(lab: Lab, client: str, host: str) -> str:
    status, server, body = client_request(lab, client, host, "/hello", timeout=5)
    return f"{status} {server} {body}"


def test_deployed_worker_answers_through_anycast(lab: Lab) -> None:
    assert http_get(lab, "c1", "nobody.example").startswith("404 sjc/sjc-s1 ")
    lab.deploy("hello", "hello.example", "async def fetch(request, env, ctx):\n    return 'hi ' + env.WHO\n",
               {"WHO": "c1"})
    assert http_get(lab, "c1", "hello.example") == "200 sjc/sjc-s1 hi c1"


# --- The operator's command line against this lab (issue 18) -----------------------------------------

def anylab(command: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli.main", command, "--name", "ttwo", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_exec_runs_on_several_nodes_with_their_suites_client(lab: Lab) -> None:
    done = anylab("exec", "r1,r2", "--", "vtysh", "-c", "show bgp summary json")
    assert done.returncode == 0, done.stderr
    heads = [line for line in done.stdout.splitlines() if line.startswith("── ")]
    assert heads == ["── r1 ──", "── r2 ──"]
    assert done.stdout.count('"routerId"') >= 2
    status = anylab("exec", "sjc-s1", "--", "exabgpcli", "status")
    assert status.returncode == 0 and json.loads(status.stdout)["announced"] is True
    worst = anylab("exec", "routers", "--", "sh", "-c", "exit 3")
    assert worst.returncode == 3 and worst.stderr.strip().startswith("exit status: r1 3, r2 3, r3 3")


def test_capture_writes_a_pcap_of_bgp(lab: Lab, tmp_path: Path) -> None:
    """BGP keepalives (1 s with the lab profile) on r1's link to r2: three in at most 10 s."""
    out = tmp_path / "bgp.pcap"
    done = anylab("capture", "r1", "r1-eth0", "-w", str(out), "-c", "3", "--duration", "10", "-f", "tcp port 179")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"3 packets captured on r1 r1-eth0 into {out}"
    assert out.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")  # a pcap file's magic
    bad = anylab("capture", "r1", "r1-eth0", "-w", str(out), "-f", "tcp port banana")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --filter 'tcp port banana': ")


def test_status_watch_is_json_lines_and_stops_by_count(lab: Lab) -> None:
    done = anylab("status", "--json", "--watch", "0.2", "--count", "3")
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(docs) == 3 and all(d["catchment"] == {"c1": "sjc"} for d in docs)
