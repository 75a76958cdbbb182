"""One daemon = one class: render_config, validate (dry run), start, ready (a probe, never a sleep), stop."""

from __future__ import annotations

import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.errors import DaemonError
from core.proc import Proc, ProcessGroup
from core.wait import wait_for


@dataclass(frozen=True)
class NodeEnv:
    """Where a daemon lives: its node, the node's network namespace file, its own directory."""

    node: str
    netns: str | None
    dir: Path
    procs: ProcessGroup
    python: str = sys.executable


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (a file left by an earlier run too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Daemon(ABC):
    """Base of every daemon the lab runs. Subclasses set ``name`` and ``dependencies``."""

    name: ClassVar[str]
    #: Names of daemons on the same node that must be ready before this one starts.
    dependencies: ClassVar[tuple[str, ...]] = ()
    ready_timeout: ClassVar[float] = 15.0
    #: The same program on every PoP server: forked from the lab's zygote when one runs.
    forkable: ClassVar[bool] = False

    def __init__(self, env: NodeEnv) -> None:
        self.env = env
        self.proc: Proc | None = None
        #: The lab's token for Prometheus's scrapes (:mod:`core.metrics`), given by the wiring to the daemons
        #: that serve metrics when the lab has monitoring; None: not scraped.
        self.metrics_token: str | None = None

    @property
    def node(self) -> str:
        return self.env.node

    def path(self, suffix: str) -> Path:
        """A file of this daemon in the node's directory, e.g. ``path('.conf')`` → ``D/bgpd.conf``."""
        return self.env.dir / f"{self.name}{suffix}"

    def error(self, message: str) -> DaemonError:
        return DaemonError(message, node=self.node, daemon=self.name)

    @abstractmethod
    def render_config(self) -> dict[Path, str]:
        """The files this daemon needs, by path; pure (no I/O). Raises DaemonError on bad input."""

    def secrets(self) -> dict[Path, str]:
        """The secret files this daemon needs (tokens, peer keys), by path; pure. Written mode 0600 by
        :meth:`write_config`, never shown by a dry run. None by default."""
        return {}

    def write_config(self) -> None:
        """Write the secret files (readable by root only, from the first byte), then render and write the
        config files (the node directory must exist)."""
        for path, text in self.secrets().items():
            write_private(path, text)
        for path, text in self.render_config().items():
            path.write_text(text)

    @abstractmethod
    def validate(self) -> None:
        """Dry-run the written config with the daemon itself; raises DaemonError with its output."""

    @classmethod
    def validate_batch(cls, daemons: Sequence[Daemon]) -> list[str] | None:
        """Dry-run many daemons of this class at once (their configs written); the errors, each naming
        its node and daemon. None: this class has no batch check, validate each on its own."""
        return None

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that runs the daemon in the foreground."""

    def spawn_env(self) -> dict[str, str] | None:
        """The environment the daemon runs with (None: the lab's own)."""
        return None

    def before_start(self) -> None:
        """Clear what a previous run of this daemon left in its directory (nothing by default)."""
        return None

    def start(self) -> None:
        """Start the daemon inside the node's namespace; raises DaemonError if it cannot start."""
        if self.proc is not None and self.proc.alive():
            raise self.error("already running")
        self.before_start()
        target = self.fork_target()
        if target is not None and self.env.procs.zygote is not None:
            self.proc = self.env.procs.fork(target[0], target[1], node=self.node, name=self.name,
                                            netns=self.env.netns, log=self.path(".out"), env=self.spawn_env())
            return
        self.proc = self.env.procs.spawn(self.argv(), node=self.node, name=self.name, netns=self.env.netns,
                                         log=self.path(".out"), env=self.spawn_env())

    def fork_target(self) -> tuple[str, list[str]] | None:
        """(module, arguments) when the lab's zygote may fork this daemon instead of starting
        ``argv()`` (:mod:`core.zygote`): a ``forkable`` daemon run as ``python -m MODULE ARGS``.
        None: always a new process."""
        argv = self.argv()
        if self.forkable and len(argv) >= 3 and argv[1] == "-m":
            return argv[2], argv[3:]
        return None

    @abstractmethod
    def ready(self) -> bool:
        """One readiness probe (socket / JSON query); False while not ready. Never sleeps."""

    def probe_ready(self) -> bool:
        """One readiness probe of a started daemon; raises DaemonError (with its log) if it died."""
        if self.proc is not None and not self.proc.alive():
            raise self.error(f"exited during start-up; log: {self.log_tail()}")
        return self.ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``ready()`` until true; raises WaitTimeout (with the daemon's log tail) or DaemonError
        if the process died."""
        wait_for(self.probe_ready, timeout=timeout or self.ready_timeout, what="readiness", node=self.node,
                 daemon=self.name, describe=self.log_tail)

    def stop(self) -> None:
        """terminate → wait → kill → wait; raises AnylabError if the process will not die."""
        if self.proc is not None:
            self.proc.stop()

    def log_tail(self, lines: int = 5) -> str:
        for suffix in (".log", ".out"):
            path = self.path(suffix)
            if path.exists() and path.stat().st_size:
                return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no output)"

    def run_check(self, argv: Sequence[str], what: str, timeout: float = 60.0,
                  env: dict[str, str] | None = None) -> str:
        """Run a dry-run command; raises DaemonError with its output unless it exits 0."""
        try:
            res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self.error(f"{what} could not run: {exc}") from exc
        if res.returncode != 0:
            out = (res.stdout + res.stderr).strip().replace("\n", " | ")
            raise self.error(f"{what} rejected {self.path('.conf')} (exit {res.returncode}): {out}")
        return res.stdout + res.stderr
