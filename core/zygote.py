"""A fork server for the PoP servers' Python daemons: import once, fork into each server's namespace.

Every PoP server runs the same Python programs (edge worker, KV replica, health agent, ExaBGP). Started
one by one, each pays the interpreter's start and its imports (≈ 0.3 s of CPU, ≈ 20 MB each); at 300
PoPs that is minutes of CPU and gigabytes. The zygote imports them once, freezes its heap
(``gc.freeze``, so the collector does not write to the shared pages), and forks a child per daemon: the
child enters the server's network namespace (setns), takes its log as stdout/stderr, the daemon's
environment and command line, and calls the program's ``main()``. The children share the imported code
and data copy-on-write, which PSS divides between them.

A child is an ordinary lab process: recorded in ``pids.jsonl`` and stopped by PID like any other. The
zygote reaps it when it exits (it is the parent), so "gone" is seen at once. Run as
``python -m core.zygote --socket S --preload MOD[,MOD…]``; one JSON request per connection:
``{"module": M, "args": [...], "netns": PATH, "log": PATH, "env": {...}|null, "pids": PATH|null,
"record": {...}}`` → ``{"pid": N}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from core.netns import enter_netns, libc
from core.records import proc_starttime, write_record

PR_SET_NAME = 15


def _reap(_signum: int, _frame: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(request: dict[str, Any], listener: socket.socket, conn: socket.socket) -> None:
    """In the forked child: become the daemon. Never returns."""
    code = 1
    try:
        listener.close()
        conn.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        if request.get("netns"):
            enter_netns(request["netns"])
        # The command line stays the zygote's; the name top and ps -o comm show is the daemon's.
        name = str(request.get("record", {}).get("name", request["module"]))
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        if request.get("env") is not None:
            os.environ.clear()
            os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        # The heap stays frozen: collecting it would write to every shared page and unshare them.
        module = importlib.import_module(request["module"])
        sys.argv = [request["module"], *request["args"]]
        result = module.main()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: Path, preload: tuple[str, ...]) -> None:
    """Import ``preload``, then fork a daemon for every request on the Unix socket at ``path``."""
    for name in preload:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, _reap)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline())
                if request.get("module") not in preload:
                    raise ValueError(f"module {request.get('module')!r} is not preloaded: {', '.join(preload)}")
                pid = os.fork()
                if pid == 0:
                    _child(request, listener, conn)
                start = proc_starttime(pid)
                if request.get("pids") and start is not None:
                    write_record(Path(request["pids"]), {**request.get("record", {}), "pid": pid, "starttime": start})
                reply: dict[str, Any] = {"pid": pid}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):  # the asker gave up: the child is recorded by nobody
                conn.sendall(json.dumps(reply).encode() + b"\n")


def request_fork(path: Path, module: str, args: list[str], netns: str | None, log: Path,
                 env: dict[str, str] | None, pids: Path | None = None, record: dict[str, Any] | None = None,
                 timeout: float = 10.0) -> int:
    """Ask the zygote at ``path`` for a child running ``module.main()`` with ``args``; its pid. With
    ``pids`` the zygote appends ``record`` (plus pid and start time) to that ``pids.jsonl`` before it
    answers, so a child whose answer is lost is still the lab's.

    Raises OSError if the zygote does not answer, ValueError if it refuses.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"module": module, "args": args, "netns": netns, "log": str(log),
                                 "env": env, "pids": str(pids) if pids else None,
                                 "record": record or {}}).encode() + b"\n")
        reply = json.loads(sock.makefile("rb").readline() or b"{}")
    if "pid" not in reply:
        raise ValueError(str(reply.get("error", "no answer")))
    return int(reply["pid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--preload", required=True, help="the modules to import before any fork, comma-separated")
    args = parser.parse_args()
    serve(args.socket, tuple(m for m in args.preload.split(",") if m))


if __name__ == "__main__":
    main()
