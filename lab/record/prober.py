"""A client's prober: sequence-numbered UDP probes to the anycast address at a fixed rate.

Every probe becomes one JSON line once answered or given up on (``timeout``)::

    {"seq": 17, "sent": 1234.567890, "recv": 1234.568012, "pop": "sjc", "server": "sjc-s1"}
    {"seq": 18, "sent": 1234.572890, "recv": null, "pop": null, "server": null}

Times are CLOCK_MONOTONIC seconds, the clock the controller stamps faults with, so shifts are
measured on one clock. One connected socket (one flow, so ECMP keeps it on one path). The file is
rotated to ``FILE.1`` past ``--max-bytes`` so a lab left up for days stays bounded.
Run as ``python -m lab.record.prober --target A --out FILE [--rate HZ] [--idle-rate HZ]``; SIGTERM ends it. With
an idle rate it probes at that rate until SIGUSR1 (a measurement begins: ``--rate``) and again after
SIGUSR2: at hundreds of PoPs, 1 kHz from every client all the time would take most of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import signal
import socket
import struct
import time
from pathlib import Path
from typing import IO

from core.clock import monotonic

SO_TIMESTAMPNS = 35
#: The instrument before what it measures. At 300 PoPs (≈ 1 400 tasks on 2 cores) a prober at 1 kHz lost
#: ≈ 30 slots a second to ≈ 6–8 ms scheduling stalls — 720–840 Hz, at nice 0 and at nice −10 alike; under
#: SCHED_FIFO it kept 1 000.0 Hz with no gap over 3 ms (measured with one prober). A prober waits in
#: select and takes ≈ 105 µs a probe, so real-time priority costs the lab a bounded share; RLIMIT_RTTIME
#: kills a prober that would run 200 ms without sleeping, and the kernel's real-time throttling
#: (sched_rt_runtime_us) still caps all real-time tasks. Without the privilege: nice −10, else as it is.
PROBER_RT_PRIORITY = 10
PROBER_RTTIME_US = (100_000, 200_000)  # SIGXCPU, then SIGKILL, after this much CPU without blocking
PROBER_NICE = -10


def prioritise(realtime: bool) -> str:
    """Give this process the prober's scheduling; returns what it got (``fifo``, ``nice``, ``none``)."""
    if realtime:
        try:
            resource.setrlimit(resource.RLIMIT_RTTIME, PROBER_RTTIME_US)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PROBER_RT_PRIORITY))
            return "fifo"
        except OSError:
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, PROBER_NICE)
        return "nice"
    except OSError:
        return "none"



def realtime_offset() -> float:
    """CLOCK_REALTIME − CLOCK_MONOTONIC now: turns the kernel's receive stamps into the lab's clock."""
    return time.clock_gettime(time.CLOCK_REALTIME) - monotonic()


def arrival(anc: list[tuple[int, int, bytes]], offset: float, default: float) -> float:
    """When the kernel received the datagram (SO_TIMESTAMPNS), on CLOCK_MONOTONIC: exact even when the
    prober reads it a little later."""
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            return min(default, float(sec + nsec / 1e9 - offset))
    return default


class Prober:
    def __init__(self, target: str, port: int, rate: float, out: Path, timeout: float, max_bytes: int,
                 idle_rate: float | None = None) -> None:
        self.fast_period = 1.0 / rate
        self.idle_period = 1.0 / idle_rate if idle_rate else self.fast_period
        self.period = self.idle_period
        self.timeout = timeout
        self.out_path = out
        self.max_bytes = max_bytes
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.sock.connect((target, port))
        self.pending: dict[int, float] = {}
        self.out: IO[str] = open(out, "a")  # noqa: SIM115
        self.running = True

    def write(self, seq: int, sent: float, recv: float | None, pop: str | None, server: str | None) -> None:
        # Formatted by hand: at 500 probes/s json.dumps is a good part of the prober's CPU.
        if recv is None:
            self.out.write(f'{{"seq": {seq}, "sent": {sent:.6f}, "recv": null, "pop": null, "server": null}}\n')
        else:
            self.out.write(f'{{"seq": {seq}, "sent": {sent:.6f}, "recv": {recv:.6f}, "pop": {json.dumps(pop)}, '
                           f'"server": {json.dumps(server)}}}\n')

    def rotate_if_big(self) -> None:
        if self.out.tell() > self.max_bytes:
            self.out.close()
            os.replace(self.out_path, self.out_path.with_name(self.out_path.name + ".1"))
            self.out = open(self.out_path, "a")  # noqa: SIM115

    def receive(self, data: bytes, t: float) -> None:
        try:
            msg = json.loads(data)
            seq = int(msg["seq"])
        except (ValueError, KeyError, TypeError):
            return
        sent = self.pending.pop(seq, None)
        if sent is not None:
            self.write(seq, sent, t, str(msg.get("pop")), str(msg.get("server")))

    def expire(self, t: float) -> None:
        # ``pending`` is in sending order (answered probes leave from anywhere): the oldest come first.
        while self.pending:
            seq, sent = next(iter(self.pending.items()))
            if t - sent <= self.timeout:
                return
            del self.pending[seq]
            self.write(seq, sent, None, None, None)

    def run(self) -> None:
        # Four system calls a probe — send, a select that returns with the answer, its recvmsg, a select
        # that runs out at the next slot — as few as a probe can take at µs precision: every call costs
        # tens of microseconds in a nested VM. (A blocking recv with SO_RCVTIMEO would save one, but the
        # kernel rounds that timeout up to a jiffy, 4 ms here; epoll rounds to whole milliseconds.)
        seq = 0
        start = monotonic()
        next_send = start
        last_flush = start
        period = self.period
        offset = realtime_offset()
        fds = [self.sock]
        while self.running:
            t = monotonic()
            if self.period != period:  # the rate changed (a signal): the next probe from now
                period, next_send = self.period, min(next_send, t)
            if t >= next_send:
                seq += 1
                self.pending[seq] = t
                with contextlib.suppress(OSError):  # no route yet: counted as lost when it expires
                    self.sock.send(b'{"seq": %d}' % seq)
                next_send += period
                if next_send < t:  # fell behind (e.g. the machine stalled): skip, do not burst
                    next_send = t + period
            if select.select(fds, [], [], max(0.0, next_send - monotonic()))[0]:
                try:
                    data, anc, _flags, _addr = self.sock.recvmsg(2048, 64)
                except OSError:  # nothing after all, or an ICMP error for an earlier probe
                    data = b""
                if data:
                    self.receive(data, arrival(anc, offset, monotonic()))
            t = monotonic()
            if t - last_flush > 0.02:
                offset = realtime_offset()
                self.expire(t)
                self.out.flush()
                self.rotate_if_big()
                last_flush = t
        self.expire(float("inf"))
        self.out.close()

    def stop(self, *_: object) -> None:
        self.running = False

    def fast(self, *_: object) -> None:
        """SIGUSR1: probe at the measuring rate (from the next probe: within one idle period)."""
        self.period = self.fast_period

    def idle(self, *_: object) -> None:
        """SIGUSR2: back to the idle rate."""
        self.period = self.idle_period


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=7)
    parser.add_argument("--rate", type=float, default=200.0, help="probes per second while measuring")
    parser.add_argument("--idle-rate", type=float, help="probes per second otherwise (SIGUSR1: --rate, SIGUSR2: "
                        "this; default: always --rate)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a probe counts as lost")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-bytes", type=int, default=16 << 20)
    parser.add_argument("--no-realtime", action="store_true", help="do not ask for SCHED_FIFO (nice −10 only)")
    args = parser.parse_args()
    print(f"prober: scheduling {prioritise(not args.no_realtime)}", flush=True)
    prober = Prober(args.target, args.port, args.rate, args.out, args.timeout, args.max_bytes, args.idle_rate)
    signal.signal(signal.SIGTERM, prober.stop)
    signal.signal(signal.SIGINT, prober.stop)
    signal.signal(signal.SIGUSR1, prober.fast)
    signal.signal(signal.SIGUSR2, prober.idle)
    prober.run()


if __name__ == "__main__":
    main()
