"""Every command's --name is checked before anything touches the disk: a name that is not a lab name is
one line and exit 2, and nothing beside or above the run root is read or removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UsageError
from lab.run.rundir import check_name, run_dir_of

BAD = ["../victim", "", "..", ".", "a-b", "UPPER", "x/../../etc", "/etc", "a" * 17, "ok\n"]
COMMANDS = [["down"], ["status"], ["exec", "r1", "--", "true"], ["deployments"], ["kv", "get", "ns", "k"],
            ["fail", "drain", "sjc"], ["restore", "sjc"], ["scale", "sjc", "--servers", "2"], ["do", "list"],
            ["up", "topologies/two_pops.yaml"], ["measure", "drain", "sjc"], ["overload", "sjc"]]


@pytest.mark.parametrize("name", BAD)
def test_a_bad_name_builds_no_path(name: str) -> None:
    with pytest.raises(UsageError, match="bad lab name"):
        run_dir_of(name)
    with pytest.raises(UsageError):
        check_name(name)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c[0] != "do" else "do list")
@pytest.mark.parametrize("name", ["../victim", "", ".."])
def test_every_command_refuses_a_bad_name_and_touches_nothing(tmp_path: Path, command: list[str], name: str) -> None:
    root = tmp_path / "root"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine\n")
    res = subprocess.run([sys.executable, "-m", "lab.cli.main", command[0], "--name", name, *command[1:]],
                         env={**os.environ, "ANYLAB_RUN_ROOT": str(root)}, capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2], check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"error: bad lab name {name!r}: use 1 to 16 lower-case letters and digits "
                                       "(e.g. --name lab1)"]
    assert (victim / "keep").read_text() == "mine\n" and sorted(os.listdir(tmp_path)) == ["victim"]
