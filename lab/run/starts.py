"""Bringing daemons up: every config rendered and dry-run before anything starts, then each daemon
started as soon as what it depends on is ready."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.clock import monotonic
from core.daemon import Daemon
from core.errors import AnylabError, WaitTimeout
from core.proc import ProcessGroup
from core.wait import socket_accepts, wait_for


def validate_all(daemons: list[Daemon]) -> list[str]:
    """Write every daemon's config, then dry-run them: a class with a batch check (ExaBGP's) checks all
    of its daemons in one run, the others each on its own, in parallel (each is a subprocess). Returns
    the errors, every one of them."""
    errors: list[str] = []
    by_class: dict[type[Daemon], list[Daemon]] = {}
    for d in daemons:
        try:
            d.write_config()
        except AnylabError as exc:
            errors.append(str(exc))
            continue
        by_class.setdefault(type(d), []).append(d)
    single: list[Daemon] = []
    for cls, group in by_class.items():
        batch = cls.validate_batch(group) if len(group) > 1 else None
        if batch is None:
            single += group
        else:
            errors += batch

    def one(d: Daemon) -> str | None:
        try:
            d.validate()
        except AnylabError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return errors + [e for e in pool.map(one, single) if e]


def start_zygote(procs: ProcessGroup, run_dir: Path, preload: tuple[str, ...]) -> None:
    """Start the fork server the PoP servers' Python daemons come from (:mod:`core.zygote`), importing
    ``preload``, wait until it accepts requests and hand its socket to ``procs``; raises WaitTimeout
    with its output, AnylabError if it exits."""
    sock, log = run_dir / "zygote.sock", run_dir / "zygote.out"
    proc = procs.spawn([sys.executable, "-m", "core.zygote", "--socket", str(sock), "--preload", ",".join(preload)],
                       node="lab", name="zygote", log=log)

    def accepting() -> bool:
        if not proc.alive():
            raise AnylabError(f"the zygote exited: {log.read_text(errors='replace')[-500:]}", daemon="zygote")
        return socket_accepts(sock)

    wait_for(accepting, timeout=30.0, what="the zygote's socket", daemon="zygote",
             describe=lambda: log.read_text(errors="replace")[-300:] if log.exists() else "(no output)")
    procs.zygote = sock


def start_daemons(daemons: dict[str, list[Daemon]], nodes: set[str]) -> None:
    """Start every daemon of ``nodes``, each as soon as the daemons it depends on, on its own node, are
    ready — one server's health agent does not wait for the other 299 servers' edge workers. Readiness
    is probed round-robin over everything started; a daemon's deadline is its ``ready_timeout`` plus
    50 ms for every daemon started before it in the same run (they share the CPU: 1 500 daemons start at
    once at 300 PoPs).
    Raises DaemonError (a daemon died), WaitTimeout (one was not ready in time) or AnylabError (a
    dependency cycle)."""
    pending = {(node, d.name): d for node, ds in daemons.items() if node in nodes for d in ds}
    starting: dict[tuple[str, str], tuple[Daemon, float]] = {}
    done: set[tuple[str, str]] = set()
    count = 0
    while pending or starting:
        for key, d in [(k, d) for k, d in pending.items() if all((k[0], dep) in done for dep in d.dependencies)]:
            d.start()
            count += 1
            starting[key] = (d, monotonic() + d.ready_timeout + 0.05 * count)
            del pending[key]
        if not starting:
            raise AnylabError(f"dependency cycle among {sorted(pending)}")
        ready = [key for key, (d, _) in starting.items() if d.probe_ready()]
        for key in ready:
            done.add(key)
            del starting[key]
        late = [(key, d) for key, (d, deadline) in starting.items() if monotonic() > deadline]
        if late:
            key, d = late[0]
            raise WaitTimeout(f"not ready in time ({len(late)} daemons late); last output: {d.log_tail()}",
                              node=key[0], daemon=key[1])
        if not ready and starting:
            time.sleep(0.02)  # the probing interval: nothing became ready in this pass
