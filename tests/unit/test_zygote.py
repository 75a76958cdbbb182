"""The zygote forks preloaded programs on request, records them before answering, and reaps them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.records import proc_starttime
from core.wait import socket_accepts, wait_for
from core.zygote import request_fork
from tests.conftest import PROJECT

CHILD = "tests.unit.zygote_child"


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "zygote.sock"
    proc = subprocess.Popen([sys.executable, "-m", "core.zygote", "--socket", str(sock), "--preload", CHILD],
                            cwd=PROJECT)
    try:
        wait_for(lambda: socket_accepts(sock), timeout=30, what="the zygote")
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def test_child_runs_main_with_args_env_and_name_and_is_recorded_then_reaped(zygote: Path, tmp_path: Path) -> None:
    log, pids, go = tmp_path / "child.out", tmp_path / "pids.jsonl", tmp_path / "go"
    pid = request_fork(zygote, CHILD, ["3", str(go)], None, log, {"ANYLAB_TEST": "yes"}, pids,
                       {"node": "n1", "name": "probe-child"})
    record = json.loads(pids.read_text())
    assert record["pid"] == pid and record["node"] == "n1" and record["name"] == "probe-child"
    assert record["starttime"] == proc_starttime(pid)
    go.touch()
    wait_for(lambda: proc_starttime(pid) is None, timeout=10, what="the child to exit and be reaped")
    assert log.read_text().strip() == "argv=['3'] env=yes comm=probe-child"  # argv[2] is the go file


def test_a_module_not_preloaded_is_refused(zygote: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not preloaded"):
        request_fork(zygote, "os", [], None, tmp_path / "x.out", None)
