"""Topology scripts: ``topologies/*.py`` files that build a topology through the Python API.

A script defines ``topology() -> dict`` returning the same structure as a YAML file; run directly,
it prints that YAML (and ``anylab up topologies/x.py`` brings it up).

A script is code: it runs in a child process of its own, bounded in time and output, and hands its
topology back as JSON. A script that sleeps, reads a FIFO, exits or crashes costs the caller one clear
TopologyError, never a hang, a silent exit or a traceback. (It still runs with the caller's privileges:
``anylab up`` runs as root, so run only scripts you trust.)
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.errors import TopologyError

#: How long a script may take to return its topology, and how much JSON it may hand back.
SCRIPT_TIMEOUT_S = 30.0
MAX_OUTPUT_BYTES = 64 * 1024 * 1024

_RUNNER = """
import importlib.util, json, sys
path = sys.argv[1]
def answer(obj):
    sys.stdout.write(json.dumps(obj, default=str))
    sys.stdout.flush()
    sys.exit(0)
spec = importlib.util.spec_from_file_location("anylab_topology_script", path)
if spec is None or spec.loader is None:
    answer({"where": "(file)", "problem": "cannot be imported as a Python module",
            "fix": "give a .py file that defines topology()"})
module = importlib.util.module_from_spec(spec)
try:
    spec.loader.exec_module(module)
except BaseException as exc:
    if isinstance(exc, SystemExit):
        answer({"where": "(file)", "problem": f"called sys.exit({exc.code!r}) while being imported",
                "fix": "define topology() and do not exit at import"})
    answer({"where": "(file)", "problem": f"raised {type(exc).__name__}: {exc}",
            "fix": "fix the script so that importing it works"})
build = getattr(module, "topology", None)
if not callable(build):
    answer({"where": "topology()", "problem": "is not defined",
            "fix": "define a function topology() returning the topology as a dict"})
try:
    data = build()
except BaseException as exc:
    answer({"where": "topology()", "problem": f"raised {type(exc).__name__}: {exc}",
            "fix": "fix the script's topology() function"})
answer({"topology": data})
"""


def _run_bounded(argv: list[str], env: dict[str, str], timeout: float, source: str) -> tuple[bytes, bytes, int]:
    """Run ``argv`` to its end and return its standard output, the tail of its standard error and its exit
    status. Raises TopologyError past ``timeout`` or past MAX_OUTPUT_BYTES of output, so a script cannot
    make the caller wait or buffer without bound. The script runs in a session of its own, and its whole
    process group is killed when it is done, whatever it left running."""
    with tempfile.TemporaryFile() as err, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                           stderr=err, env=env, start_new_session=True) as child:
        assert child.stdout is not None
        deadline = monotonic() + timeout
        out = bytearray()
        problem: tuple[str, str] | None = None
        os.set_blocking(child.stdout.fileno(), False)
        with selectors.DefaultSelector() as sel:
            sel.register(child.stdout, selectors.EVENT_READ)
            while problem is None:
                left = deadline - monotonic()
                if left <= 0:
                    problem = (f"did not return within {timeout:.0f} s",
                               "make the script return its topology without waiting")
                elif sel.select(left):
                    chunk = child.stdout.read(1 << 16)
                    if not chunk:
                        break  # every holder of its output has closed it: the script has ended
                    out += chunk
                    if len(out) > MAX_OUTPUT_BYTES:
                        problem = (f"returned more than {MAX_OUTPUT_BYTES >> 20} MB of topology",
                                   "split the topology over several labs")
        if problem is None:
            try:
                status = child.wait(max(0.1, deadline - monotonic()))
            except subprocess.TimeoutExpired:
                problem = (f"did not return within {timeout:.0f} s",
                           "make the script return its topology without waiting")
        with contextlib.suppress(ProcessLookupError):  # whatever the script started goes with it
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        if problem is not None:
            raise TopologyError(source, "topology()", *problem)
        err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
        return bytes(out), err.read(), status


def run_topology_script(path: Path, timeout: float = SCRIPT_TIMEOUT_S) -> Any:
    """Run ``path``'s ``topology()`` in a child process and return what it returned (as JSON gives it
    back); raises TopologyError when the script fails, exits, hangs past ``timeout`` or says too much."""
    source = str(path)
    project = str(Path(__file__).resolve().parents[1])  # scripts import model.generate and friends
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p)}
    # -B: importing the script writes no __pycache__ beside it (validating leaves nothing behind).
    stdout, stderr, status = _run_bounded([sys.executable, "-B", "-c", _RUNNER, str(path.resolve())], env, timeout,
                                          source)
    try:
        reply = json.loads(stdout)
    except ValueError:
        last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {status}"]
        raise TopologyError(source, "(file)", f"ended without returning a topology ({last[0][:200]})",
                            "run it with python3 to see why") from None
    if not isinstance(reply, dict) or ("topology" not in reply and "problem" not in reply):
        raise TopologyError(source, "(file)", "ended without returning a topology",
                            "do not write to standard output while building the topology")
    if "problem" in reply:
        raise TopologyError(source, str(reply.get("where")), str(reply["problem"]), str(reply.get("fix")))
    return reply["topology"]
