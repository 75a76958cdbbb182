"""A namespace of its own for a daemon test: loopback up with the test's addresses on it (this kernel has
no dummy links), removed afterwards — and no daemon may outlive its stop()."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from core import netns
from core.daemon import Daemon
from core.errors import DaemonError
from core.proc import recorded_procs


@contextlib.contextmanager
def daemon_space(suffix: str, addresses: Iterable[str], run_dir: Path) -> Iterator[str]:
    """The path of a namespace ``anylab-t<pid>-<suffix>`` with ``addresses`` on lo; every process recorded
    in ``run_dir`` is stopped and the namespace deleted on the way out (then it fails if any was left)."""
    name = f"anylab-t{os.getpid()}-{suffix}"
    path = netns.add(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for address in addresses:
            subprocess.run(["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True)
        yield path
    finally:
        leftovers = recorded_procs(run_dir)
        for proc in leftovers:
            proc.stop()
        netns.delete(name)
        assert leftovers == [], "a daemon survived its stop()"


def refuses_a_bad_config(daemon: Daemon, config: str, anchor: str, insertion: str) -> None:
    """``daemon``'s own check passes on its rendered ``config`` (a suffix of its name), then refuses it —
    naming the daemon — once ``insertion`` follows ``anchor`` in it."""
    daemon.write_config()
    daemon.validate()
    path = daemon.path(config)
    path.write_text(path.read_text().replace(anchor, anchor + insertion, 1))
    with pytest.raises(DaemonError, match=daemon.name):
        daemon.validate()
