"""What the lab's small HTTP tools (the alert receiver, the status page) share: their ``--listen`` and
running until stopped."""

from __future__ import annotations

import argparse
from http.server import HTTPServer


def listen_address(parser: argparse.ArgumentParser, value: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` → (address, port); a bad one is the parser's usage error (exit 2)."""
    address, _, port = value.rpartition(":")
    if not address or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--listen {value}: give ADDRESS:PORT")
    return address, int(port)


def run(server: HTTPServer) -> None:
    """Serve until SIGINT (then close the socket) or until killed (the lab stops its tools by PID)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
