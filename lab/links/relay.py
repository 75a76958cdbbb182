"""The link relay: delay, jitter and bursty loss for the shaped links of one router, in user space.

This kernel has no netem, so delay cannot be a qdisc. The router's iptables send each shaped link's
packets (leaving: ``POSTROUTING -o``; arriving: ``PREROUTING -i``) to an NFQUEUE; this process takes each
packet's id, holds it until its deadline and then gives the kernel its verdict. The packet itself never
leaves the kernel (metadata-only copy), so a held packet costs one skb and one tuple here. Both
directions of every shaped link of the router are queued here: the link's other end (a server, a client,
a service node, or the higher-named router) runs no relay.

Why this design (measured in ``bench/links.py``): one queue per link direction keeps deadlines in arrival
order, so packets leave in order (a packet never overtakes its predecessor, as on a real link; jitter
is added before that rule, so at high rates the achieved distribution narrows and shifts — calibration
shows it) and one batch verdict releases every packet that is due. The process runs SCHED_FIFO (the
prober's priority plus one: what it measures passes through here) with the garbage collector off, and
waits in select(2), whose timeout has microsecond resolution (epoll's has milliseconds).

Pure core: :func:`deadline`, :func:`gilbert` and :func:`jitter_sample` (table-tested). The rest is I/O.
If the relay dies, its queues have no listener and the kernel drops their packets: a shaped link never
silently becomes a bare veth.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import select
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.clock import monotonic
from lab.links.nfqueue import QueueSocket, verdict

#: Packets due within this much are released together (one verdict message for them all).
RELEASE_EARLY_S = 50e-6
RELAY_RT_PRIORITY = 11
RELAY_RTTIME_US = (200_000, 400_000)
JITTER_DISTRIBUTIONS = ("uniform", "normal")
#: Most packets one direction may hold (NFQUEUE's own limit; beyond it the kernel drops).
DEFAULT_MAXLEN = 16384
#: Test-only weakening (ANYLAB_WEAKEN=links): wake-ups only on a 2 ms tick of the clock (a periodic timer,
#: as a HZ-based sleep gives) — the mistake this design avoids; bench/links.py must see it fail its goals.
WEAK_TICK_S = 0.002
WEAKEN_ENV = "ANYLAB_WEAKEN"


@dataclass(frozen=True)
class DirShape:
    """What one direction of a link does to a packet: its delay and jitter (seconds, jitter's
    distribution), and its loss when bursty (``loss`` a fraction; ``burst`` the mean run of losses)."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    distribution: str = "uniform"
    loss: float = 0.0
    burst: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.delay_s <= 10.0 and 0.0 <= self.jitter_s <= 10.0 and 0.0 <= self.loss < 1.0
                and self.burst >= 1.0 and self.distribution in JITTER_DISTRIBUTIONS):
            raise ValueError(f"not a shape: {self}")


def jitter_sample(shape: DirShape, rng: random.Random) -> float:
    """A jitter draw (seconds): uniform on ±jitter, or normal with σ = jitter."""
    if shape.jitter_s <= 0.0:
        return 0.0
    if shape.distribution == "normal":
        return rng.gauss(0.0, shape.jitter_s)
    return rng.uniform(-shape.jitter_s, shape.jitter_s)


def deadline(now: float, last: float, shape: DirShape, jitter: float) -> float:
    """When a packet taken at ``now`` may leave: after its delay plus jitter (never before ``now``) and
    never before the packet ahead of it (``last``): a link keeps its order."""
    return max(last, now + max(0.0, shape.delay_s + jitter))


def gilbert(bad: bool, u: float, shape: DirShape) -> tuple[bool, bool]:
    """One step of the two-state (Gilbert) loss model; returns (bad now, drop this packet).

    In the bad state every packet is lost; a bad run ends with probability r = 1/burst per packet, so
    runs average ``burst`` packets, and a good state turns bad with p = loss·r/(1−loss), so the long-run
    loss is p/(p+r) = ``loss``. ``u`` is a uniform draw in [0, 1)."""
    if shape.loss <= 0.0:
        return False, False
    r = 1.0 / shape.burst
    p = shape.loss * r / (1.0 - shape.loss)
    now_bad = (u >= r) if bad else (u < p)
    return now_bad, now_bad


@dataclass
class Direction:
    """One queue's state: its shape, the packets it holds (deadline, id, drop), counters."""

    queue: int
    label: str
    shape: DirShape
    maxlen: int = DEFAULT_MAXLEN
    held: deque[tuple[float, int, bool]] = field(default_factory=deque)
    last: float = 0.0
    bad: bool = False
    passed: int = 0
    dropped: int = 0
    max_held: int = 0

    def take(self, now: float, ids: list[int], rng: random.Random) -> None:
        for pid in ids:
            self.bad, drop = gilbert(self.bad, rng.random(), self.shape)
            self.last = deadline(now, self.last, self.shape, jitter_sample(self.shape, rng))
            self.held.append((self.last, pid, drop))
        if len(self.held) > self.max_held:
            self.max_held = len(self.held)

    def due(self, now: float) -> tuple[list[int], int | None]:
        """Pop every packet due by ``now``: (ids to drop, highest id to accept up to)."""
        drops: list[int] = []
        top: int | None = None
        held = self.held
        while held and held[0][0] <= now:
            _, pid, drop = held.popleft()
            if drop:
                drops.append(pid)
                self.dropped += 1
            else:
                top = pid
                self.passed += 1
        return drops, top

    def stats(self) -> dict[str, Any]:
        return {"queue": self.queue, "link": self.label, "shape": asdict(self.shape), "passed": self.passed,
                "dropped": self.dropped, "held": len(self.held), "max_held": self.max_held}


def shape_from(fields: dict[str, Any], base: DirShape | None = None) -> DirShape:
    """``base`` (default: no shaping) with ``fields`` changed; raises ValueError/TypeError on a bad field."""
    base = base or DirShape()
    if not isinstance(fields, dict) or not set(fields) <= set(asdict(base)):
        raise ValueError(f"shape fields must be among {sorted(asdict(base))}")
    if not all(isinstance(v, str if k == "distribution" else (int, float)) and not isinstance(v, bool)
               for k, v in fields.items()):
        raise ValueError("a shape field has the wrong type")
    return replace(base, **fields)


def load_config(path: Path) -> tuple[list[Direction], int]:
    """The relay's config file: its directions and random seed. Raises ValueError/OSError/KeyError."""
    data = json.loads(path.read_text())
    dirs = []
    for q in data["queues"]:
        shape = shape_from(q["shape"])
        dirs.append(Direction(int(q["queue"]), str(q["label"]), shape, int(q.get("maxlen", DEFAULT_MAXLEN))))
    if len({d.queue for d in dirs}) != len(dirs):
        raise ValueError("a queue number appears twice")
    return dirs, int(data.get("seed", 0))


class Control:
    """The relay's Unix socket (mode 0600, the lab's run directory): one JSON request per connection —
    ``{"op": "stats"}`` or ``{"op": "set", "queue": N, "shape": {...}}`` — answered with one JSON line.
    Non-blocking, served from the relay's loop: a slow client cannot hold packets back."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.conns: dict[socket.socket, bytearray] = {}

    def fds(self) -> list[socket.socket]:
        return [self.sock, *self.conns]

    def serve(self, ready: list[Any], dirs: dict[int, Direction], bind: Callable[[Direction], None]) -> None:
        for s in ready:
            if s is self.sock:
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                self.conns[conn] = bytearray()
            elif s in self.conns:
                self._read(s, dirs, bind)

    def _read(self, conn: socket.socket, dirs: dict[int, Direction], bind: Callable[[Direction], None]) -> None:
        buf = self.conns[conn]
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if chunk and b"\n" not in buf and len(buf) < 65536:
            return
        del self.conns[conn]
        try:
            answer = handle(json.loads(bytes(buf).split(b"\n", 1)[0]), dirs, bind)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            answer = {"error": f"bad request: {exc}"}
        try:
            conn.setblocking(True)
            conn.settimeout(0.05)
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        conn.close()


def handle(request: dict[str, Any], dirs: dict[int, Direction],
           bind: Callable[[Direction], None] | None = None) -> dict[str, Any]:
    """Answer one control request: ``stats``; ``set`` a queue's shape; ``add`` a queue (bound through
    ``bind``; an existing one is only set). Raises ValueError/TypeError/KeyError on a bad one, OSError
    if a queue cannot be bound."""
    op = request["op"]
    if op == "stats":
        return {"queues": [d.stats() for d in dirs.values()]}
    if op in ("set", "add"):
        q = int(request["queue"])
        if q not in dirs and op == "add" and bind is not None:
            if not 0 <= q < 65536:
                raise ValueError(f"queue {q} is not a queue number")
            bind(Direction(q, str(request.get("label", q)), shape_from(request["shape"])))
        d = dirs[q]
        d.shape = shape_from(request["shape"], d.shape)
        return {"ok": True, "queue": d.queue, "shape": asdict(d.shape)}
    raise ValueError(f"unknown op {op!r}")


def prioritise() -> str:
    """SCHED_FIFO (bounded by RLIMIT_RTTIME) if allowed; returns what it got."""
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, RELAY_RTTIME_US)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RELAY_RT_PRIORITY))
        return "fifo"
    except OSError:
        return "none"


def run(dirs: list[Direction], seed: int, control_path: Path, realtime: bool = True) -> None:
    """Bind every queue, then relay until SIGTERM/SIGINT. Raises OSError if a queue cannot be bound."""
    weak = os.environ.get(WEAKEN_ENV) == "links"
    rng = random.Random(seed)
    socks: dict[int, QueueSocket] = {}
    by_queue: dict[int, Direction] = {}
    by_fd: dict[int, tuple[QueueSocket, Direction]] = {}
    queue_fds: list[int] = []
    poller = select.poll() if weak else None

    def bind(d: Direction) -> None:
        sock = QueueSocket(d.queue, d.maxlen)
        socks[d.queue], by_queue[d.queue], by_fd[sock.fileno()] = sock, d, (sock, d)
        queue_fds.append(sock.fileno())
        if poller is not None:
            poller.register(sock.fileno(), select.POLLIN)

    for d in dirs:
        bind(d)
    control = Control(control_path)
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # select(2) is retried after a signal (PEP 475): without a wake-up, an idle relay never stops.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    if poller is not None:
        poller.register(wake_r, select.POLLIN)
    got = prioritise() if realtime else "none"
    print(json.dumps({"relay": "ready", "queues": len(dirs), "scheduling": got, "weakened": weak}), flush=True)
    gc.disable()  # nothing here makes cycles; a collection pause would be a delay spike
    while not stop:
        now = monotonic()
        nxt = min((d.held[0][0] for d in by_queue.values() if d.held), default=None)
        timeout = None if nxt is None else max(0.0, nxt - now - RELEASE_EARLY_S)
        try:
            if poller is not None:
                # the next tick after the deadline, and the control socket only between packets
                wake = None if timeout is None else (int((now + timeout) / WEAK_TICK_S) + 1) * WEAK_TICK_S
                events = poller.poll(100 if wake is None else max(0, int((wake - now) * 1000 + 0.999)))
                readable: list[Any] = [fd for fd, _ in events]
                extra: list[Any] = [*control.fds(), wake_r]
                readable += select.select(extra, [], [], 0)[0]
            else:
                waiting: list[Any] = [*queue_fds, *control.fds(), wake_r]
                readable = select.select(waiting, [], [], timeout)[0]
        except InterruptedError:
            continue
        now = monotonic()
        for r in readable:
            if r == wake_r:
                continue
            if isinstance(r, int):
                sock, d = by_fd[r]
                d.take(now, sock.drain(), rng)
        control.serve([r for r in readable if not isinstance(r, int)], by_queue, bind)
        # weakened: only what the last tick passed
        now = int(monotonic() / WEAK_TICK_S) * WEAK_TICK_S if weak else monotonic() + RELEASE_EARLY_S
        for q, d in by_queue.items():
            if d.held and d.held[0][0] <= now:
                drops, top = d.due(now)
                s = socks[q]
                for pid in drops:
                    s.send(verdict(q, pid, False, batch=False))
                if top is not None:
                    s.send(verdict(q, top, True, batch=True))
    for s in socks.values():
        s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.links.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--no-realtime", action="store_true")
    parser.add_argument("--check", action="store_true", help="check the config and exit (a dry run)")
    args = parser.parse_args(argv)
    try:
        dirs, seed = load_config(args.config)
        if args.check:
            print(f"relay: {len(dirs)} queues, config ok")
            return 0
        run(dirs, seed, args.control, realtime=not args.no_realtime)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
