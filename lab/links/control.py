"""Talking to a running relay (:mod:`lab.links.relay`) over its Unix socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from core.errors import AnylabError


def relay_request(path: Path, request: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    """Send one request, return the relay's answer; raises AnylabError if it cannot be reached or
    refuses the request."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise AnylabError(f"link relay at {path}: {exc}") from exc
    try:
        answer: dict[str, Any] = json.loads(buf)
    except ValueError as exc:
        raise AnylabError(f"link relay at {path} answered {buf[:80]!r}") from exc
    if "error" in answer:
        raise AnylabError(f"link relay at {path}: {answer['error']}")
    return answer
