"""./anylab checks its set-up fast and never installs for --help, --version or no command (issue 18)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.clock import monotonic

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], venv: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANYLAB_VENV=str(venv))
    return subprocess.run([str(ROOT / "anylab"), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["up", "--help"], ["kv", "get", "-h"]])
def test_help_on_a_machine_not_set_up_installs_nothing(tmp_path: Path, args: list[str]) -> None:
    venv = tmp_path / "venv"
    done = _run(args, venv)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "anylab is not set up on this machine yet: run 'sudo ./anylab setup' (Debian packages and a venv)"
    ]
    assert not venv.exists()


def test_setup_takes_no_arguments(tmp_path: Path) -> None:
    done = _run(["setup", "--force"], tmp_path / "venv")
    assert (done.returncode, done.stderr.strip()) == (2, "error: anylab setup takes no arguments")
    assert not (tmp_path / "venv").exists()


def test_the_check_is_fast_and_true_here() -> None:
    """The check ./anylab runs on every call: measured 60-70 ms here; 0.3 s is the bound (4x)."""
    start = monotonic()
    done = subprocess.run([str(ROOT / "scripts" / "setup.sh"), "--check"], capture_output=True, timeout=30)
    elapsed = monotonic() - start
    assert done.returncode == 0, done.stderr
    assert elapsed < 0.3


def test_the_check_sees_a_stale_venv(tmp_path: Path) -> None:
    """A venv whose stamp is not that of today's lock is not ready (so the check can fail)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "anylab").write_text("#!/bin/sh\n")
    (venv / "bin" / "anylab").chmod(0o755)
    (venv / ".anylab-stamp").write_text("0" * 64 + "\n")
    env = dict(os.environ, ANYLAB_VENV=str(venv))
    done = subprocess.run([str(ROOT / "scripts" / "setup.sh"), "--check"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 1
