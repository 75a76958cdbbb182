"""The platform's public status page, as the lab serves it to its clients: ``GET /status`` answers the JSON
the lab last wrote to ``--state`` (``{"status": "operational"|"degraded"|"major_outage", "regions":
{region: status}, "message", "updated"}``), ``GET /`` the same as a line of text. What the runbook's
containment and restoration change (:mod:`lab.measure.drill`); a client reads it over the lab network.

The file is the lab's, replaced atomically; one that cannot be read or is not an object is answered as
``{"status": "unknown"}`` (the page never shows half a state). Anything but ``GET`` is refused.

Run as ``python -m lab.record.status_page --listen ADDRESS:PORT --state FILE``.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.files import write_atomic
from lab.record import http_tool

STATUSES = ("operational", "degraded", "major_outage")
PORT = 8080


def page(state: Path) -> dict[str, Any]:
    """What the page shows now."""
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return {"status": "unknown"}
    return data if isinstance(data, dict) and data.get("status") in STATUSES else {"status": "unknown"}


def publish(state: Path, status: str, regions: dict[str, str], message: str) -> float:
    """Show ``status`` (one of :data:`STATUSES`), each region's, and ``message`` from now on; returns when
    (CLOCK_MONOTONIC). Raises ValueError for a status the page does not know."""
    if status not in STATUSES or not set(regions.values()) <= set(STATUSES):
        raise ValueError(f"a status is one of {', '.join(STATUSES)}")
    t = monotonic()
    write_atomic(state, json.dumps({"status": status, "regions": regions, "message": message, "updated": t}))
    return t


def serve(address: str, port: int, state: Path) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            shown = page(state)
            if self.path == "/status":
                body, kind = json.dumps(shown).encode(), "application/json"
            elif self.path == "/":
                regions = ", ".join(f"{r}: {s}" for r, s in sorted(shown.get("regions", {}).items()))
                body, kind = f"{shown['status']} ({regions}) {shown.get('message', '')}\n".encode(), "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return ThreadingHTTPServer((address, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--state", required=True, type=Path)
    args = parser.parse_args()
    address, port = http_tool.listen_address(parser, args.listen)
    http_tool.run(serve(address, port, args.state))


if __name__ == "__main__":
    main()
