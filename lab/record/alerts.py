"""The lab's alert receiver: Alertmanager's webhook delivers here, and every notification becomes one JSON
line in ``--out``: ``{"t" (CLOCK_MONOTONIC when received), "status": "firing"|"resolved", "alerts":
[{"alertname", "status", "phase", "severity", "instance", "starts_at", "ends_at", "labels"}]}`` (``labels``:
all of the alert's, e.g. its ``pop`` and ``region``).

What arrives is checked before it is kept: a body over :data:`MAX_BODY`, not JSON, or not Alertmanager's
webhook shape (version 4) is answered 400 and not recorded.

Run as ``python -m lab.record.alerts --listen ADDRESS:PORT --out FILE``.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

from core.clock import monotonic
from lab.record import http_tool

MAX_BODY = 1024 * 1024
#: An alert's labels kept at most (the lab's rules give five or six).
MAX_LABELS = 32
PATH = "/alerts"


def notification(body: bytes) -> dict[str, Any]:
    """The record of one webhook body; raises ValueError for anything but Alertmanager's webhook (v4)."""
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("version") != "4" or not isinstance(data.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook (version 4) notification")
    alerts = []
    for a in data["alerts"]:
        if not isinstance(a, dict) or not isinstance(a.get("labels"), dict):
            raise ValueError("an alert without labels")
        labels = a["labels"]
        if len(labels) > MAX_LABELS or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ValueError(f"an alert's labels must be at most {MAX_LABELS} strings")
        alerts.append({"alertname": str(labels.get("alertname", "")), "status": str(a.get("status", "")),
                       "phase": str(labels.get("phase", "")), "severity": str(labels.get("severity", "")),
                       "instance": str(labels.get("instance", "")), "starts_at": str(a.get("startsAt", "")),
                       "ends_at": str(a.get("endsAt", "")), "labels": dict(labels)})
    return {"t": round(monotonic(), 6), "status": str(data.get("status", "")), "alerts": alerts}


def serve(address: str, port: int, out: IO[str]) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            declared = self.headers.get("Content-Length") or "0"
            length = int(declared) if declared.isdigit() else 0
            if self.path != PATH or not 0 < length <= MAX_BODY:
                self.send_error(400 if self.path == PATH else 404)
                return
            try:
                record = notification(self.rfile.read(length))
            except ValueError as exc:
                self.send_error(400, str(exc)[:200])
                return
            with lock:
                out.write(json.dumps(record) + "\n")
                out.flush()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return  # every notification is in the records; no access log

    return ThreadingHTTPServer((address, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    address, port = http_tool.listen_address(parser, args.listen)
    with open(args.out, "a", buffering=1) as out:
        http_tool.run(serve(address, port, out))


if __name__ == "__main__":
    main()
