"""Polls with deadlines, process records, and the ExaBGP API line builder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bgp.exabgp_api import Route
from core.clock import monotonic
from core.errors import AnylabError, WaitTimeout
from core.proc import ProcessGroup, recorded_procs
from core.wait import wait_for


def test_wait_for_returns_first_truthy_value() -> None:
    values = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(values), timeout=1, what="x", interval=0) == "ready"


def test_wait_for_times_out_with_last_state() -> None:
    t0 = monotonic()
    with pytest.raises(WaitTimeout, match="waiting for the moon; last state: 'not yet'"):
        wait_for(lambda: None, timeout=0.1, what="the moon", describe=lambda: "'not yet'")
    assert monotonic() - t0 < 1.0


def test_wait_for_stops_at_once_on_lab_error() -> None:
    def probe() -> None:
        raise AnylabError("dead", node="n", daemon="d")

    with pytest.raises(AnylabError, match="n/d: dead"):
        wait_for(probe, timeout=10, what="x")


def test_process_group_records_and_stops(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    proc = group.spawn([sys.executable, "-c", "import time; time.sleep(60)"], node="n", name="sleeper")
    assert [p.pid for p in recorded_procs(tmp_path)] == [proc.pid]
    errors: list[str] = []
    group.stop_all(errors)
    assert errors == [] and not proc.alive() and recorded_procs(tmp_path) == []


def test_stop_escalates_to_kill(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('go', flush=True); time.sleep(60)"
    proc = group.spawn([sys.executable, "-c", code], node="n", name="stubborn", stdin=subprocess.DEVNULL,
                       log=tmp_path / "out")
    wait_for(lambda: (tmp_path / "out").read_text().startswith("go"), timeout=10, what="start")
    t0 = monotonic()
    proc.stop(timeout=0.2)
    assert not proc.alive() and monotonic() - t0 < 5


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"prefix": "203.0.113.1/32", "med": 0, "as_path": [64601]},
         "announce route 203.0.113.1/32 next-hop self med 0 as-path [ 64601 ]"),
        ({"prefix": "203.0.113.0/24", "med": 100, "as_path": [64601, 64601]},
         "announce route 203.0.113.0/24 next-hop self med 100 as-path [ 64601 64601 ]"),
    ],
)
def test_route_command(data: dict[str, object], line: str) -> None:
    assert Route.from_json(data).command("announce") == line


@pytest.mark.parametrize(
    "data",
    [
        {"prefix": "203.0.113.1/32; shutdown", "as_path": [1]},
        {"prefix": "203.0.113.1/32", "med": -1, "as_path": [1]},
        {"prefix": "203.0.113.1/32", "as_path": []},
        {"prefix": "203.0.113.1/32", "as_path": ["1 ]\nshutdown"]},
    ],
)
def test_route_rejects_values_that_could_inject(data: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError)):
        Route.from_json(data)
