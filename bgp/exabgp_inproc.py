"""ExaBGP with its API process inside it: one process per PoP server instead of two.

ExaBGP runs its API "process" with ``subprocess.Popen`` and talks to it over its stdin/stdout. A second
Python interpreter per server costs ≈ 8 MB of PSS (measured at 300 PoPs); here :mod:`bgp.exabgp_api`
runs as a thread of ExaBGP's own process instead, behind a pair of pipes that look to ExaBGP exactly like
the child's stdin and stdout. Only ExaBGP processes forked by the lab's zygote run this way (the ``run``
line of the config is unchanged, so ``exabgp server CONF`` still starts a real child).

What stays true: the API state (``api-state.json``) and socket (``api.sock``) are the same; if the thread
ends (ExaBGP closed its stdin), ``poll()`` says so and ExaBGP respawns it as it would a child; a crash
of ExaBGP takes the API with it, as killing its process group did before.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from bgp.exabgp_api import ApiProcess

_REAL_POPEN = subprocess.Popen


class ThreadProcess:
    """The part of ``subprocess.Popen`` ExaBGP uses (stdin, stdout, pid, poll, terminate, kill, wait),
    running :class:`ApiProcess` for ``directory`` in a thread."""

    def __init__(self, directory: Path) -> None:
        to_api_r, to_api_w = os.pipe()
        from_api_r, from_api_w = os.pipe()
        self.stdin: IO[bytes] = os.fdopen(to_api_w, "wb", buffering=0)
        self.stdout: IO[bytes] = os.fdopen(from_api_r, "rb", buffering=0)
        self.pid = os.getpid()
        self.returncode: int | None = None
        api_in: IO[str] = os.fdopen(to_api_r, "r")
        api_out: IO[str] = os.fdopen(from_api_w, "w")

        def run() -> None:
            try:
                ApiProcess(directory, api_in, api_out).run()
                self.returncode = 0
            except BaseException:  # what a child's traceback would have said, in ExaBGP's log
                import traceback

                traceback.print_exc()
                self.returncode = 1
            finally:
                api_in.close()
                api_out.close()

        self.thread = threading.Thread(target=run, name="anylab-api", daemon=True)
        self.thread.start()

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else (self.returncode if self.returncode is not None else 1)

    def terminate(self) -> None:
        self.stdin.close()  # the API sees end of input and returns

    kill = terminate

    def wait(self, timeout: float | None = None) -> int:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise subprocess.TimeoutExpired("anylab-api", timeout or 0.0)
        return self.returncode if self.returncode is not None else 1


def api_directory(args: Any) -> Path | None:
    """The ``--dir`` of a ``run`` line that starts ``bgp.exabgp_api`` (None for anything else)."""
    argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    if "bgp.exabgp_api" not in argv or "--dir" not in argv[:-1]:
        return None
    return Path(argv[argv.index("--dir") + 1])


def _popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
    directory = api_directory(args)
    if directory is None:
        return _REAL_POPEN(args, *rest, **kwargs)
    return ThreadProcess(directory)


def main() -> int:
    """``exabgp`` with the API in-process (argv as ``exabgp``'s, e.g. ``server CONF``)."""
    subprocess.Popen = _popen  # type: ignore[assignment,misc]  # this process only: it is ExaBGP's
    from exabgp.application.main import main as exabgp_main  # type: ignore[import-untyped]

    sys.argv[0] = "exabgp"
    result = exabgp_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
