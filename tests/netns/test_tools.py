"""A lab tool's process (a load generator in a client's namespace) is recorded and dies with its caller
(issue 20: they outlived a SIGKILLed ``measure`` for their whole duration, unrecorded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import netns
from core.proc import recorded_procs
from core.records import proc_starttime
from core.wait import wait_for
from tests.conftest import PROJECT

NAME = f"anylab-t{os.getpid()}-c1"


@pytest.fixture
def space() -> Iterator[str]:
    path = netns.add(NAME)
    yield path
    netns.delete(NAME)


def test_a_tool_is_recorded_and_dies_with_its_caller(tmp_path: Path, space: str) -> None:
    code = ("import sys, time\nfrom pathlib import Path\nfrom core.proc import start_tool\n"
            f"p = start_tool(Path({str(tmp_path)!r}), ['sleep', '60'], node='c1', name='load', netns={space!r})\n"
            "print(p.pid, flush=True)\ntime.sleep(60)\n")
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=PROJECT, text=True)
    try:
        assert caller.stdout is not None
        pid = int(caller.stdout.readline())
        (record,) = [json.loads(x) for x in (tmp_path / "pids.jsonl").read_text().splitlines()]
        assert (record["pid"], record["node"], record["name"]) == (pid, "c1", "load")
        assert [p.pid for p in recorded_procs(tmp_path)] == [pid]  # what 'anylab down' would stop
        wait_for(lambda: os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(space).st_ino, timeout=5.0,
                 what="the tool in the client's namespace (nsenter enters it, then execs)")
    finally:
        caller.kill()
        caller.wait()
    wait_for(lambda: proc_starttime(pid) is None, timeout=5.0, what="the tool to die with its caller")
    assert recorded_procs(tmp_path) == []
