"""``anylab down --all`` removes what the labs of its run root own, and only that: a namespace with the lab
prefix that no lab there owns (another run root's, a bench's in progress) is listed and left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core import netns
from tests.conftest import PROJECT


def test_down_all_leaves_a_namespace_no_lab_of_its_run_root_owns(tmp_path: Path) -> None:
    foreign = f"anylab-t{os.getpid()}x-r1"  # a lab name this run root does not hold
    netns.add(foreign)
    try:
        res = subprocess.run([sys.executable, "-m", "lab.cli.main", "down", "--all"], cwd=PROJECT,
                             env={**os.environ, "ANYLAB_RUN_ROOT": str(tmp_path / "root")},
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert foreign in netns.names("anylab-")
        assert "left alone" in res.stdout and foreign in res.stdout
    finally:
        netns.delete(foreign)
