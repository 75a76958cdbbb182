"""The controller's control socket: other processes (``anylab fail``, ``anylab measure``) ask the process
that owns a lab to act on it, so every process of the lab keeps one owner.

One JSON request per connection on ``<run dir>/control.sock``, one JSON reply:
``{"op": "fail", "scenario": S, "target": T, "count": N, "period": P}``, ``{"op": "restore", "target": T}``,
``{"op": "restore_all"}``, ``{"op": "withdraw"|"announce", "pop": P}``, ``{"op": "faults"}``,
``{"op": "scale", "pop": P, "servers": N}``, ``{"op": "dr", "action": "failover"|"standdown", "at": T}``,
``{"op": "link", "a": A, "b": B, "changes": {Shape field: value}}``.
Replies carry ``ok``, and ``t`` (CLOCK_MONOTONIC of the action) or ``error`` and ``usage`` (bad request).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import AnylabError, UsageError

if TYPE_CHECKING:
    from lab.run.lab import Lab

SOCKET = "control.sock"


def handle(lab: Lab, req: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request; never raises (errors become the reply)."""
    op = req.get("op")
    try:
        if op == "fail":
            t = lab.fail(str(req.get("scenario")), str(req.get("target")), int(req.get("count", 3)),
                         float(req.get("period", 1.0)))
            return {"ok": True, "t": t}
        if op == "restore":
            return {"ok": True, "t": lab.restore(str(req.get("target")))}
        if op == "restore_all":
            return {"ok": True, "restored": lab.injector.restore_all()}
        if op in ("withdraw", "announce"):
            return {"ok": True, "t": lab.set_announced(str(req.get("pop")), op == "announce")}
        if op == "scale":
            return {"ok": True, **lab.scale(str(req.get("pop")), int(req.get("servers", 0)))}
        if op == "link":
            changes = req.get("changes")
            if not isinstance(changes, dict):
                raise UsageError("link: changes must be an object")
            return {"ok": True, **lab.set_link(str(req.get("a")), str(req.get("b")), _link_fields(changes))}
        if op == "dr":
            action = req.get("action")
            if action == "failover":
                at = req.get("at")
                return {"ok": True, **lab.dr_failover(None if at is None else float(at))}
            if action == "standdown":
                return {"ok": True, **lab.dr_standdown()}
            raise UsageError(f"dr: unknown action {action!r}; use failover or standdown")
        if op == "faults":
            return {"ok": True, "faults": sorted(lab.injector.active)}
        raise UsageError(f"unknown op {op!r}")
    except UsageError as exc:
        return {"ok": False, "usage": True, "error": str(exc)}
    except (AnylabError, ValueError, TypeError) as exc:
        return {"ok": False, "usage": False, "error": str(exc)}


_LINK_FIELDS = {"delay_ms": float, "jitter_ms": float, "jitter_distribution": str, "loss_pct": float,
                "loss_burst": float, "bandwidth_mbit": float, "queue": int}


def _link_fields(changes: dict[str, Any]) -> dict[str, Any]:
    """A link change from another process, checked field by field; raises UsageError."""
    out: dict[str, Any] = {}
    for k, v in changes.items():
        kind = _LINK_FIELDS.get(k)
        if kind is None:
            raise UsageError(f"link: unknown field {k!r}; use {', '.join(_LINK_FIELDS)}")
        if v is None and k in ("bandwidth_mbit", "queue"):
            out[k] = None
        elif kind is str and isinstance(v, str) and v in ("uniform", "normal"):
            out[k] = v
        elif kind is not str and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
            out[k] = kind(v)
        else:
            raise UsageError(f"link: {k}={v!r} is not valid")
    return out


def serve(lab: Lab, stop: threading.Event) -> threading.Thread:
    """Answer requests on the lab's control socket in a thread until ``stop`` is set."""
    path = lab.run_dir / SOCKET
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)

    def loop() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(None)
                    try:
                        req = json.loads(conn.makefile("rb").readline() or b"{}")
                        reply = handle(lab, req if isinstance(req, dict) else {})
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                    except (OSError, ValueError):
                        continue

    thread = threading.Thread(target=loop, name="anylab-control", daemon=True)
    thread.start()
    return thread


def call(run_dir: Path, op: str, timeout: float = 600.0, **args: Any) -> dict[str, Any]:
    """Send one request to the controller of the lab in ``run_dir``.

    Raises UsageError for a bad request or when no controller answers (the lab is not up), AnylabError
    when the controller could not do it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(run_dir / SOCKET))
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            reply: dict[str, Any] = json.loads(sock.makefile("rb").readline() or b"{}")
    except (OSError, ValueError) as exc:
        raise UsageError(f"the lab in {run_dir} does not answer ({exc}); is it up? ('anylab status')") from exc
    if not reply.get("ok"):
        error = str(reply.get("error", "no answer"))
        raise UsageError(error) if reply.get("usage") else AnylabError(error)
    return reply
