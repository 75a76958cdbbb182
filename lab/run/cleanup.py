"""Removing what a lab left, whether its controller is alive, killed or gone: by the lab's name, its
process records (stopped by PID, checked against their start time) and its namespace prefix — never by
process name."""

from __future__ import annotations

import os
import shutil

from core import netns
from core.errors import AnylabError
from core.proc import recorded_procs, stop_many
from core.wait import wait_for
from lab.run.rundir import (
    LAB_NAME_RE,
    NETNS_PREFIX,
    RUN_ROOT,
    controller_alive,
    lab_names,
    netns_prefix,
    read_state,
    run_dir_of,
)


def cleanup(name: str, controller_timeout: float | None = None) -> list[str]:
    """Remove everything lab ``name`` left: ask a live controller to stop (waiting 60 s plus 0.2 s a
    node by default), stop the recorded processes (by PID, checked against their start time), delete
    its namespaces and run directory. Returns the errors met (it keeps going past them)."""
    errors: list[str] = []
    run_dir = run_dir_of(name)
    state = read_state(name) or {}
    if controller_timeout is None:
        controller_timeout = 60.0 + 0.2 * len(netns.names(netns_prefix(name)))
    pid = state.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and controller_alive(state):
        os.kill(pid, 15)
        try:
            wait_for(lambda: not controller_alive(state), timeout=controller_timeout,
                     what=f"controller {pid} to stop")
        except AnylabError as exc:
            errors.append(str(exc))
    stop_many(list(reversed(recorded_procs(run_dir))), errors)
    for ns in netns.names(netns_prefix(name)):
        try:
            netns.delete(ns)
        except AnylabError as exc:
            errors.append(str(exc))
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    for leftover in (f"{name}.controller.log", f"{name}.failed"):
        (RUN_ROOT / leftover).unlink(missing_ok=True)
    return errors


def cleanup_all() -> tuple[list[str], list[str]]:
    """``anylab down --all``: every lab this run root holds, with all it left (see :func:`cleanup`).
    Returns the errors met and the namespaces with the lab prefix that belong to no lab found here —
    another run root's, or a bench's in progress: those are listed, never deleted."""
    errors: list[str] = []
    for name in lab_names():
        errors += cleanup(name)
    for pattern in ("*.controller.log", "*.failed"):
        for leftover in RUN_ROOT.glob(pattern) if RUN_ROOT.is_dir() else []:
            lab = leftover.name.split(".", 1)[0]
            if LAB_NAME_RE.fullmatch(lab) and not (RUN_ROOT / lab).exists():
                leftover.unlink(missing_ok=True)
    return errors, netns.names(NETNS_PREFIX)
