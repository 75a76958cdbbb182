"""Hostile topology input fails fast with one TopologyError: binary and UTF-16 files, FIFOs, files and
sections beyond the stated bounds, deep nesting, and topology scripts that hang, exit, crash or chatter."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core.clock import monotonic
from core.errors import TopologyError
from model import load as load_module
from model.load import MAX_DEPTH, MAX_ENTRIES, MAX_FILE_BYTES, build_topology, load_topology
from model.topo_script import run_topology_script
from tests.conftest import TOPOLOGIES


def refused(path: Path, words: str) -> str:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and ". Fix: " in message, message
    return message


def test_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    refused(path, "is not UTF-8 text")


def test_a_utf16_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes((TOPOLOGIES / "two_pops.yaml").read_text().encode("utf-16"))
    refused(path, "is not UTF-8 text")


def test_a_nul_byte(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: x\x00\n")
    refused(path, "holds a NUL byte")


def test_a_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    os.mkfifo(path)
    refused(path, "is not a regular file")


def test_a_directory(tmp_path: Path) -> None:
    refused(tmp_path, "is not a regular file")


def test_a_file_beyond_the_size_bound_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    with open(path, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: refused on its size alone
    refused(path, "MB at most")


def test_deep_nesting_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    t0 = monotonic()
    refused(path, f"nests deeper than {MAX_DEPTH} levels")
    assert monotonic() - t0 < 5.0
    deep: object = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TopologyError, match="nests deeper"):
        build_topology({"name": "x", "regions": deep})


def test_too_many_entries_fail_before_validation() -> None:
    t0 = monotonic()
    pops = [{"name": f"p{i}", "region": "na", "asn": 64601, "upstreams": ["r1"]} for i in range(100_000)]
    with pytest.raises(TopologyError, match=f"pops: has 100000 entries; the lab takes {MAX_ENTRIES['pops']} at most"):
        build_topology({"name": "x", "pops": pops})
    assert monotonic() - t0 < 2.0


def test_libyaml_reads_a_large_file_fast(tmp_path: Path) -> None:
    """The pure-Python loader took about two seconds per MB here; libyaml reads this ~2 MB file in well
    under one."""
    assert "CSafeLoader" in {c.__name__ for c in load_module._UniqueKeyLoader.__mro__}
    path = tmp_path / "big.yaml"
    base = (TOPOLOGIES / "two_pops.yaml").read_text()
    path.write_text(base + "\n".join(f"# {'x' * 60}" for _ in range(30_000)) + "\n")
    t0 = monotonic()
    load_topology(path)
    assert monotonic() - t0 < 1.5


SCRIPTS = {
    "sleeps": ("import time\ndef topology():\n    time.sleep(60)\n", "did not return within 2 s"),
    "exits": ("import sys\nsys.exit(0)\n", "called sys.exit(0) while being imported"),
    "raises": ("def topology():\n    raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
    "no_function": ("x = 1\n", "topology(): is not defined"),
    "chatters": ("print('hello')\ndef topology():\n    return {}\n", "ended without returning a topology"),
    "killed": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "ended without returning a topology"),
}


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_a_topology_script_is_bounded(tmp_path: Path, case: str) -> None:
    code, words = SCRIPTS[case]
    path = tmp_path / f"{case}.py"
    path.write_text(code)
    t0 = time.monotonic()
    with pytest.raises(TopologyError) as info:
        run_topology_script(path, timeout=2.0)
    assert words in str(info.value) and str(info.value).startswith(f"{path}: ")
    assert time.monotonic() - t0 < 10.0


def test_a_script_that_reads_stdin_does_not_hang(tmp_path: Path) -> None:
    path = tmp_path / "reads.py"
    path.write_text("import sys\nsys.stdin.read()\ndef topology():\n    return {'name': 'x'}\n")
    with pytest.raises(TopologyError, match="regions: Field required"):  # stdin is empty: it returns
        load_topology(path)
