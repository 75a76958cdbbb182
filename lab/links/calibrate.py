"""Calibration: what each shaped link achieves, measured on the running lab, kept beside every result.

For every shaped link, both directions at once: ``count`` datagrams at ``rate`` from an end's interface
address to the other's (UDP port :data:`CAL_PORT`), each stamped with CLOCK_MONOTONIC and read on arrival
in one process (sockets made in each namespace, :func:`core.netns.socket_in`) running SCHED_FIFO, as
the probers do: the instrument must not be slower than what it measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from core import netns
from core.clock import monotonic
from core.errors import AnylabError
from core.stats import quantile, wilson
from lab.links.plan import Link
from model.topology import Shape

CAL_PORT = 7099
#: Datagrams per direction and their rate: 100 at 100/s, every shaped link of a lab at once.
CAL_COUNT, CAL_RATE = 100, 100.0
CAL_RT_PRIORITY = 10
_STAMP = struct.Struct("!HId")  # direction index, sequence, send time


def summarise(delays_s: Sequence[float], sent: int, shape: Shape | None) -> dict[str, Any]:
    """One direction's calibration: achieved delay quantiles (ms), error against the asked delay, the
    loss seen and its 99 % interval (pure)."""
    ms = [d * 1e3 for d in delays_s]
    asked = shape.delay_ms if shape is not None else 0.0
    lost = sent - len(ms)
    lo, hi = wilson(lost, sent)
    out: dict[str, Any] = {"sent": sent, "received": len(ms), "loss_pct": round(100 * lost / sent, 2) if sent else None,
                           "loss_ci99_pct": [round(100 * lo, 2), round(100 * hi, 2)]}
    if ms:
        p50, p99 = quantile(ms, 0.5), quantile(ms, 0.99)
        assert p50 is not None and p99 is not None
        out.update({"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "min_ms": round(min(ms), 3),
                    "max_ms": round(max(ms), 3), "p50_err_ms": round(p50 - asked, 3),
                    "p99_err_ms": round(p99 - asked, 3)})
    return out


def calibrate(links: Sequence[Link], shapes: Mapping[str, Shape | None], netns_of: Mapping[str, str],
              count: int = CAL_COUNT, rate: float = CAL_RATE) -> dict[str, Any]:
    """Measure each link of ``links`` (both directions) under its shape now; link key → asked shape and
    per-direction :func:`summarise`. The measuring runs in a process of its own at real-time priority
    (``python -m lab.links.calibrate``: the caller may be busy). Raises AnylabError."""
    plan = [{"key": lk.key, "dir": label, "src_ns": netns_of[src.node], "src": str(src.address.ip),
             "dst_ns": netns_of[dst.node], "dst": str(dst.address.ip)}
            for lk in links for src, dst, label in ((lk.owner, lk.far, "out"), (lk.far, lk.owner, "in"))]
    longest = max((s.delay_ms + 4 * s.jitter_ms for lk in links if (s := shapes.get(lk.key)) is not None),
                  default=0.0) / 1e3
    request = json.dumps({"directions": plan, "count": count, "rate": rate, "wait": longest + 0.5})
    try:
        res = subprocess.run([sys.executable, "-m", "lab.links.calibrate"], input=request, capture_output=True,
                             text=True, timeout=count / rate + longest + 60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AnylabError(f"link calibration could not run: {exc}") from exc
    if res.returncode != 0:
        raise AnylabError(f"link calibration failed: {res.stderr.strip()[-300:]}")
    delays: list[list[float]] = json.loads(res.stdout)["delays_s"]
    out: dict[str, Any] = {}
    for d, got in zip(plan, delays, strict=True):
        key = str(d["key"])
        entry = out.setdefault(key, {"shape": _shape_dict(shapes.get(key))})
        entry[str(d["dir"])] = summarise(got, count, shapes.get(key))
    return out


def measure(directions: list[dict[str, str]], count: int, rate: float, wait_s: float) -> list[list[float]]:
    """Send ``count`` stamped datagrams at ``rate`` each way listed, read them where they arrive;
    each direction's one-way delays (s). Raises AnylabError if a socket cannot be made."""
    dirs: list[tuple[socket.socket, socket.socket, tuple[str, int]]] = []
    try:
        for d in directions:
            tx = netns.socket_in(d["src_ns"], socket.AF_INET, socket.SOCK_DGRAM)
            rx = netns.socket_in(d["dst_ns"], socket.AF_INET, socket.SOCK_DGRAM)
            dirs.append((tx, rx, (d["dst"], CAL_PORT)))
            rx.bind((d["dst"], CAL_PORT))
            rx.setblocking(False)
            tx.bind((d["src"], 0))
        got: list[dict[int, float]] = [{} for _ in dirs]
        receivers = {d[1].fileno(): i for i, d in enumerate(dirs)}
        t0 = monotonic()
        seq = 0
        end = None
        while end is None or monotonic() < end:
            due = t0 + seq / rate
            if seq < count and monotonic() >= due:
                for i, (tx, _rx, dest) in enumerate(dirs):
                    with contextlib.suppress(OSError):  # a send that fails is counted as lost
                        tx.sendto(_STAMP.pack(i, seq, monotonic()), dest)
                seq += 1
                if seq == count:
                    end = monotonic() + wait_s
            wait = max(0.0, min(t0 + seq / rate - monotonic(), 0.01)) if seq < count else 0.01
            for fd in select.select(list(receivers), [], [], wait)[0]:
                _drain(dirs[receivers[fd]][1], got)
            if seq >= count and all(len(g) >= count for g in got):
                break
        return [list(g.values()) for g in got]
    finally:
        for tx, rx, _ in dirs:
            tx.close()
            rx.close()


def _drain(sock: socket.socket, got: list[dict[int, float]]) -> None:
    while True:
        try:
            buf = sock.recv(64)
        except BlockingIOError:
            return
        now = monotonic()
        if len(buf) >= _STAMP.size:
            i, seq, sent = _STAMP.unpack_from(buf)
            if 0 <= i < len(got):
                got[i].setdefault(seq, now - sent)


def _shape_dict(shape: Shape | None) -> dict[str, Any] | None:
    if shape is None:
        return None
    return {k: v for k, v in shape.__dict__.items() if v not in (None, 0.0, 1.0, "uniform", False)
            or k == "delay_ms"}


def main() -> int:
    """``python -m lab.links.calibrate``: a JSON request on stdin (from :func:`calibrate`), the delays on
    stdout."""
    req = json.loads(sys.stdin.read())
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (500_000, 1_000_000))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(CAL_RT_PRIORITY))
    except OSError:
        pass  # measured at normal priority: noisier, not wrong
    delays = measure(req["directions"], int(req["count"]), float(req["rate"]), float(req["wait"]))
    print(json.dumps({"delays_s": delays}))
    return 0


def worst(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The largest |error| over every calibrated direction (what a reader checks first)."""
    e50 = [abs(d["p50_err_ms"]) for v in calibration.values() for k, d in v.items() if k in ("out", "in")
           and "p50_err_ms" in d]
    e99 = [abs(d["p99_err_ms"]) for v in calibration.values() for k, d in v.items() if k in ("out", "in")
           and "p99_err_ms" in d]
    return {"links": len(calibration), "max_abs_p50_err_ms": max(e50, default=None),
            "max_abs_p99_err_ms": max(e99, default=None)}




if __name__ == "__main__":
    sys.exit(main())
