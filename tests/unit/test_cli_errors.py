"""The command line answers every failure with one line: bad input exit 2 before anything starts, a lab
error exit 1, and an unexpected error exit 1 with its traceback in a file (``--debug`` prints it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from lab.cli import main as cli
from tests.conftest import PROJECT, TOPOLOGIES


def anylab(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli.main", *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "ANYLAB_RUN_ROOT": str(root)}, check=False)


@pytest.mark.parametrize(("args", "line"), [
    (["graph", "-o", "/nonexistent/dir/x.mmd", str(TOPOLOGIES / "two_pops.yaml")],
     "error: -o /nonexistent/dir/x.mmd: the directory /nonexistent/dir does not exist; create it first"),
    (["graph", "-o", "x.txt"], "error: -o x.txt: give a file ending in .png, .svg or .mmd"),
    (["deploy", "w", "BINARY"], "error: BINARY: byte 0 is not UTF-8 text; a worker is a Python file"),
    (["up", "--kind", "gobgp"], "error: --kind gobgp: use bird or frr"),
    # the request is checked before the lab is looked up (no lab is up here)
    (["fail", "nosuch", "sjc"], "error: unknown scenario 'nosuch'; use one of: service-crash, drain, speaker-crash, "
     "server-silent, server-crash, link-down, link-degrade, link-lossy, pop-down, region-down, region-loss, "
     "pops-down, flap, "
     "control-down, control-cut, cp-down, cp-cut, etcd-leader-kill, artifact-store-wipe, kv-master-crash, "
     "do-crash, do-cut, storage-partition, kv-master-wipe, do-host-wipe, kv-global-loss, catastrophic, "
     "clock-ahead, clock-behind, "
     "origin-down, origin-slow, origin-errors, "
     "dns-provider-down, dns-node-down, dns-primary-down, dns-region-withdraw, resolver-down"),
    (["restore-backup", "dns"], "error: cannot restore 'dns'; use one of: kv, do, control"),
    (["restore-backup", "kv", "--at", "-5"], "error: --at -5.0: give a CLOCK_MONOTONIC time in seconds"),
    (["kv", "frob", "ns"],
     "error: use: anylab kv put NS KEY VALUE | get NS KEY | delete NS KEY | list NS [--prefix P]"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], line: str) -> None:
    binary = tmp_path / "w.py"
    binary.write_bytes(b"\xff\xfe\x00")
    args = [str(binary) if a == "BINARY" else a for a in args]
    res = anylab(*args, root=tmp_path / "root")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [line.replace("BINARY", str(binary))]
    assert not (tmp_path / "root").exists()


def test_ls_without_labs(tmp_path: Path) -> None:
    res = anylab("ls", root=tmp_path / "root")
    assert res.returncode == 0 and "no labs in" in res.stdout
    res = anylab("ls", "--json", root=tmp_path / "root")
    assert res.returncode == 0 and res.stdout.strip() == "[]"


def test_version(tmp_path: Path) -> None:
    res = anylab("--version", root=tmp_path)
    assert res.returncode == 0 and re.fullmatch(r"anylab \S+\n", res.stdout)


def test_an_unexpected_error_is_one_line_with_its_traceback_in_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    broken = typer.Typer()

    @broken.command()
    def boom() -> None:
        raise RuntimeError("something the lab did not expect\nsecond line")

    @broken.command()
    def other() -> None:
        """A second command, so that 'boom' is a subcommand as in anylab."""

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setattr(cli, "RUN_ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["anylab", "boom"])
    monkeypatch.delenv("ANYLAB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: unexpected RuntimeError: something the lab did not expect (")
    log = Path(re.findall(r"the traceback is in (\S+)\)", err[0])[0])
    assert log.parent == tmp_path and "Traceback" in log.read_text() and "boom" in log.read_text()
