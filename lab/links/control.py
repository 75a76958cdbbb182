"""Talking to a running relay (``anylab-relay``, built from :file:`lab/links/relay.c`) over its Unix
socket, and writing its config. Requests and shapes are dicts here (the fields of
:class:`lab.links.relay.DirShape`); the relay speaks one text line each way (:func:`request_line`)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from core.errors import AnylabError

#: The relay program, built by ``./anylab setup`` next to the venv's Python.
RELAY_BIN = Path(sys.executable).parent / "anylab-relay"


def shape_fields(shape: dict[str, Any]) -> str:
    """A shape as the relay's numbers: delay_ns jitter_ns dist loss_ppm burst_milli. Raises
    KeyError/ValueError/TypeError if it is not one."""
    dist = {"uniform": 0, "normal": 1}[shape.get("distribution", "uniform")]
    return (f"{round(float(shape.get('delay_s', 0.0)) * 1e9)} {round(float(shape.get('jitter_s', 0.0)) * 1e9)} "
            f"{dist} {round(float(shape.get('loss', 0.0)) * 1e6)} {round(float(shape.get('burst', 1.0)) * 1e3)}")


def queue_line(q: dict[str, Any], maxlen: int = 16384) -> str:
    """One queue of a config (``queue``, ``label``, ``shape``) as the relay reads it."""
    label = "".join(ch if ch.isalnum() or ch in ":-_. " else "_" for ch in str(q.get("label", "")))[:90]
    return f"{int(q['queue'])} {maxlen} {shape_fields(q['shape'])} {label}"


def config_text(config: dict[str, Any]) -> str:
    """A relay config (``{"queues": [...]}``) as the relay's file."""
    return "".join(queue_line(q) + "\n" for q in config["queues"])


def request_line(request: dict[str, Any]) -> str:
    """A request (``{"op": "stats"|"set"|"add", ...}``) as the line the relay reads; raises KeyError,
    ValueError or TypeError for one that is not."""
    op = request["op"]
    if op == "stats":
        return "stats"
    if op == "set":
        return f"set {int(request['queue'])} {shape_fields(request['shape'])}"
    if op == "add":
        return f"add {queue_line(request)}"
    raise ValueError(f"unknown op {op!r}")


def relay_request(path: Path, request: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    """Send one request, return the relay's answer; raises AnylabError if it cannot be reached or
    refuses the request."""
    line = request_line(request)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(line.encode() + b"\n")
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
