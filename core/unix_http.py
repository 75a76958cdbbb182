"""HTTP over a Unix socket: how the operator's side (CLI, Lab, readiness probes) reaches the lab's
services without any route from the root namespace into the lab."""

from __future__ import annotations

import http.client
import socket


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(path: str, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 30.0) -> tuple[int, bytes]:
    """One request; returns status and body. Raises OSError/http.client.HTTPException when nothing
    answers on ``path``."""
    conn = UnixConnection(path, timeout)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
