"""The process that holds a lab started by ``anylab up`` until ``anylab down`` (SIGTERM) or Ctrl-C.

Run as ``python -m lab.run.controller --name NAME TOPOLOGY``; progress and failure are written to the lab's
``state.json`` (phase ``up`` or ``failed`` with the error) for the CLI to poll.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from bgp.routers import kind_names
from core.errors import AnylabError
from lab.run import controller_socket as control
from lab.run.lab import Lab
from lab.run.rundir import RUN_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="main")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--kind", choices=kind_names(), default=None, help="make every router this kind")
    parser.add_argument("--hosts", type=int, default=None, help="partition over N hosts")
    parser.add_argument("topology")
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    lab = Lab.from_file(args.topology, args.name, args.kind, hosts=args.hosts)
    try:
        lab.up(timeout=args.timeout)
    except AnylabError as exc:
        # The run directory is gone with the failed lab; leave the reason where the CLI looks.
        (RUN_ROOT / f"{args.name}.failed").write_text(json.dumps({"error": str(exc)}))
        print(f"anylab controller: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"anylab controller: lab '{args.name}' up in {lab.timings['converged']:.1f} s", flush=True)
    server = control.serve(lab, stop)
    stop.wait()
    lab.injector.cancel.set()  # a flap in progress ends at its next edge
    server.join()
    try:
        lab.down()
    except AnylabError as exc:
        print(f"anylab controller: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
