"""One-way delay, measured: a sender stamps each UDP datagram with CLOCK_MONOTONIC (which every namespace
of the machine shares) and a receiver subtracts it from its own reading on arrival. A link's two ends are
namespaces of one machine, so each direction is measured on its own, not halved from a round trip.

    python -m lab.links.owd recv --bind ADDR --port P --count N --wait S       (prints JSON on stdout)
    python -m lab.links.owd send --to ADDR --port P --count N --rate PPS
    python -m lab.links.owd sink --bind ADDR --port P --seconds S   /  blast --to ADDR --port P --seconds S

The receiver runs SCHED_FIFO below the relay (it must not measure its own scheduling); the sender keeps
its average rate by sending every datagram that is due when it wakes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
import time
from typing import Any

from core.clock import monotonic

_STAMP = struct.Struct("!Id")  # sequence number, send time (s, CLOCK_MONOTONIC)
OWD_RT_PRIORITY = 10
PAYLOAD = 64


def send(sock: socket.socket, dest: tuple[str, int], count: int, rate: float, start: float | None = None) -> int:
    """Send ``count`` stamped datagrams to ``dest`` at ``rate`` per second from ``start`` (default now);
    returns how many the kernel took (a full socket buffer drops one, as a busy host would)."""
    t0 = monotonic() if start is None else start
    sent = 0
    pad = b"\0" * (PAYLOAD - _STAMP.size)
    for seq in range(count):
        due = t0 + seq / rate
        lag = due - monotonic()
        if lag > 100e-6:
            time.sleep(lag - 50e-6)
        try:
            sock.sendto(_STAMP.pack(seq, monotonic()) + pad, dest)
            sent += 1
        except OSError:
            pass
    return sent


def receive(sock: socket.socket, count: int, wait_s: float) -> dict[int, float]:
    """Sequence → one-way delay (s) of each datagram that arrives, until ``count`` have or none has for
    ``wait_s`` (duplicates keep their first delay)."""
    got: dict[int, float] = {}
    sock.settimeout(wait_s)
    buf = bytearray(2048)
    while len(got) < count:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            break
        now = monotonic()
        if n >= _STAMP.size:
            seq, sent = _STAMP.unpack_from(buf)
            got.setdefault(seq, now - sent)
    return got


def blast(dest: tuple[str, int], seconds: float) -> int:
    """Send as fast as TCP lets for ``seconds``; returns the bytes the kernel took."""
    sock = socket.create_connection(dest, timeout=5)
    chunk = b"\0" * 65536
    total, end = 0, monotonic() + seconds
    while monotonic() < end:
        total += sock.send(chunk)
    sock.close()
    return total


def sink(bind: tuple[str, int], seconds: float) -> dict[str, float]:
    """Accept one TCP connection and count what arrives; the rate over the middle of the transfer (its
    first and last fifth left out: slow start, the end)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(bind)
    srv.listen(1)
    print(json.dumps({"ready": True}), flush=True)
    srv.settimeout(10)
    conn, _ = srv.accept()
    conn.settimeout(5)
    marks: list[tuple[float, int]] = []
    total = 0
    while True:
        try:
            n = len(conn.recv(1 << 20))
        except TimeoutError:
            break
        if n == 0:
            break
        total += n
        marks.append((monotonic(), total))
    if len(marks) < 10:
        return {"bytes": total, "mbit_s": 0.0}
    t0, t1 = marks[0][0], marks[-1][0]
    a = next(m for m in marks if m[0] >= t0 + (t1 - t0) * 0.2)
    b = next(m for m in marks if m[0] >= t0 + (t1 - t0) * 0.8)
    return {"bytes": total, "mbit_s": (b[1] - a[1]) * 8 / (b[0] - a[0]) / 1e6 if b[0] > a[0] else 0.0}


def loss_runs(got: dict[int, float], count: int) -> int:
    """How many runs of consecutive sequence numbers in ``range(count)`` never arrived."""
    runs, missing = 0, False
    for seq in range(count):
        gone = seq not in got
        runs += gone and not missing
        missing = gone
    return runs


def _realtime() -> str:
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (200_000, 400_000))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(OWD_RT_PRIORITY))
        return "fifo"
    except OSError:
        return "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.links.owd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--wait", type=float, default=2.0)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    k = sub.add_parser("sink")
    k.add_argument("--bind", required=True)
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--seconds", type=float, required=True)
    b = sub.add_parser("blast")
    b.add_argument("--to", required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "sink":
        print(json.dumps(sink((args.bind, args.port), args.seconds)), flush=True)
        return 0
    if args.role == "blast":
        print(json.dumps({"bytes": blast((args.to, args.port), args.seconds)}), flush=True)
        return 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # A datagram held by a relay on the sender's own node is still charged to this socket: with the
    # default 208 KB a sender there blocks (and its stamps age) once ~100 ms at 10 kpps are held.
    sock.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)  # SO_SNDBUFFORCE
    if args.role == "recv":
        sock.bind((args.bind, args.port))
        scheduling = _realtime()
        print(json.dumps({"ready": True}), flush=True)
        got = receive(sock, args.count, args.wait)
        out: dict[str, Any] = {"received": len(got), "scheduling": scheduling, "loss_runs": loss_runs(got, args.count),
                               "delays_ms": [round(got[k] * 1e3, 4) for k in sorted(got)]}
        print(json.dumps(out), flush=True)
    else:
        print(json.dumps({"sent": send(sock, (args.to, args.port), args.count, args.rate)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
