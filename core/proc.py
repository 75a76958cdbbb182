"""Own your processes: every process the lab starts is recorded (pid + start time) in the run
directory, so that it is stopped by PID, and only it, even after the controller was SIGKILLed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from core.clock import monotonic
from core.errors import AnylabError
from core.netns import libc
from core.records import PIDS_FILE, is_same_process, proc_starttime, write_record


@dataclass
class Proc:
    """A process the lab started: Popen when we are its parent, else only pid + start time."""

    node: str
    name: str
    pid: int
    starttime: int
    popen: subprocess.Popen[bytes] | None = None
    #: The polite signal: SIGTERM for daemons, SIGHUP for Mininet's interactive node shells.
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_same_process(self.pid, self.starttime)

    def stop(self, timeout: float = 5.0) -> None:
        """terminate → wait(timeout) → kill → wait. Raises AnylabError if it survives SIGKILL."""
        for sig, wait in ((self.stop_signal, timeout), (signal.SIGKILL, 5.0)):
            if not self.alive():
                return
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
            if self.popen is not None:
                try:
                    self.popen.wait(wait)
                    return
                except subprocess.TimeoutExpired:
                    continue
            deadline = monotonic() + wait
            while self.alive() and monotonic() < deadline:
                time.sleep(0.01)  # not our child: poll /proc until it is gone or the deadline passes
        if self.alive():
            raise AnylabError(f"process {self.pid} did not exit after SIGKILL", node=self.node, daemon=self.name)


    def kill(self) -> None:
        """SIGKILL (a crash, as a fault injects it), then wait until it is gone. Raises AnylabError."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
        self.stop(timeout=0.0)


class ProcessGroup:
    """The processes of one lab, in start order, mirrored to ``run_dir/pids.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: list[Proc] = []
        #: The socket of the lab's fork server once it runs (see :mod:`core.zygote`).
        self.zygote: Path | None = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        node: str,
        name: str,
        netns: str | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> Proc:
        """Start ``argv`` (inside network namespace file ``netns`` if given) and record it.

        stdout/stderr go to ``log`` (appended). Raises AnylabError if it cannot be started.
        """
        full = ["nsenter", f"--net={netns}", "--", *argv] if netns else list(argv)
        out: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            popen = subprocess.Popen(full, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise AnylabError(f"cannot start {argv[0]}: {exc}", node=node, daemon=name) from exc
        finally:
            if not isinstance(out, int):
                out.close()
        return self.adopt(node, name, popen.pid, popen)

    def fork(self, module: str, args: Sequence[str], *, node: str, name: str, netns: str | None,
             log: Path, env: dict[str, str] | None = None) -> Proc:
        """Have the lab's zygote (:mod:`core.zygote`) fork ``module.main()`` with ``args`` into ``netns``
        and record it. Raises AnylabError if there is no zygote or it cannot."""
        if self.zygote is None:
            raise AnylabError("no zygote is running to fork from", node=node, daemon=name)
        from core.zygote import request_fork

        record = {"node": node, "name": name, "signal": int(signal.SIGTERM)}
        try:
            pid = request_fork(self.zygote, module, list(args), netns, log, env, self.run_dir / PIDS_FILE, record)
        except (OSError, ValueError) as exc:
            raise AnylabError(f"zygote cannot fork {module}: {exc}", node=node, daemon=name) from exc
        # The zygote recorded it in pids.jsonl before answering: a child is never left unrecorded.
        return self.adopt(node, name, pid, record=False)

    def adopt(self, node: str, name: str, pid: int, popen: subprocess.Popen[bytes] | None = None,
              stop_signal: int = signal.SIGTERM, record: bool = True) -> Proc:
        """Record a process started elsewhere (e.g. a Mininet node shell) as the lab's (in
        ``pids.jsonl`` too unless ``record`` is False: the zygote wrote it there already)."""
        start = proc_starttime(pid)
        if start is None:
            raise AnylabError(f"process {pid} exited at once", node=node, daemon=name)
        proc = Proc(node, name, pid, start, popen, stop_signal)
        self.procs.append(proc)
        if record:
            write_record(self.run_dir / PIDS_FILE, {"node": node, "name": name, "pid": pid, "starttime": start,
                                                    "signal": int(stop_signal)})
        return proc

    def stop_all(self, errors: list[str]) -> None:
        """Stop every process (see :func:`stop_many`); failures are appended to ``errors``."""
        stop_many(list(reversed(self.procs)), errors)
        self.procs.clear()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it exits (kept across exec). Only
    a call into the C library here: the child of a threaded parent may not import or allocate much."""
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)  # a tool that could outlive its caller is not started at all


def start_tool(run_dir: Path, argv: Sequence[str], *, node: str, name: str, netns: str,
               stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a lab tool's process for the caller (a load generator in a client's namespace ``netns``): it
    dies with the caller's thread (``PR_SET_PDEATHSIG``, so a SIGKILLed ``measure`` takes its load with it)
    and is recorded in ``run_dir``'s ``pids.jsonl`` (so ``anylab down`` stops it whatever happened). The
    caller waits for it or stops it. Raises AnylabError if it cannot be started."""
    try:
        popen = subprocess.Popen(["nsenter", f"--net={netns}", "--", *argv], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=stderr, close_fds=True,
                                 preexec_fn=_die_with_parent)
    except OSError as exc:
        raise AnylabError(f"cannot start {argv[0]}: {exc}", node=node, daemon=name) from exc
    start = proc_starttime(popen.pid)
    if start is not None:  # gone already: nothing left to stop
        write_record(run_dir / PIDS_FILE, {"node": node, "name": name, "pid": popen.pid, "starttime": start,
                                           "signal": int(signal.SIGTERM)})
    return popen


def tools_running(popens: Mapping[str, subprocess.Popen[bytes]], name: str) -> None:
    """Raises AnylabError naming each tool of ``popens`` (node → process) that has exited, with its exit
    status: a wait for what a tool produces must not outlast the tool (a refused argument exits at once)."""
    gone = {node: p.returncode for node, p in popens.items() if p.poll() is not None}
    if gone:
        raise AnylabError(f"{name} exited: " + ", ".join(f"{n} (status {rc})" for n, rc in sorted(gone.items())))


def stop_tools(popens: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Stop tools :func:`start_tool` started: SIGTERM to all first, then each waited for ``timeout`` and
    killed if it is still there (a load's SIGTERM lets it finish what is under way)."""
    for popen in popens:
        popen.terminate()
    for popen in popens:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def stop_many(procs: list[Proc], errors: list[str], timeout: float = 5.0) -> None:
    """terminate → wait → kill → wait for many processes at once: every polite signal is sent (in the
    order given) before any wait, so a lab of thousands of processes stops in seconds, not in the sum of
    their exits. Failures are appended to ``errors``."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, proc.stop_signal)
    deadline = monotonic() + timeout
    for proc in procs:
        try:
            proc.stop(timeout=max(0.0, deadline - monotonic()))
        except AnylabError as exc:
            errors.append(str(exc))


def recorded_procs(run_dir: Path) -> list[Proc]:
    """The processes a (possibly dead) lab recorded, still alive and still the same process."""
    path = run_dir / PIDS_FILE
    if not path.exists():
        return []
    procs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a SIGKILL
        proc = Proc(rec["node"], rec["name"], int(rec["pid"]), int(rec["starttime"]),
                    stop_signal=int(rec.get("signal", signal.SIGTERM)))
        if proc.alive():
            procs.append(proc)
    return procs
