"""A client's prober: sequence-numbered UDP probes to the anycast address at a fixed rate.

Every probe becomes one JSON line once answered or given up on (``timeout``)::

    {"seq": 17, "sent": 1234.567890, "recv": 1234.568012, "pop": "sjc", "server": "sjc-s1"}
    {"seq": 18, "sent": 1234.572890, "recv": null, "pop": null, "server": null}

Times are CLOCK_MONOTONIC seconds, the clock the controller stamps faults with, so shifts are
measured on one clock. One connected socket (one flow, so ECMP keeps it on one path). The file is
rotated to ``FILE.1`` past ``--max-bytes`` so a lab left up for days stays bounded.
Run as ``python -m lab.prober --target A --out FILE [--rate HZ] [--idle-rate HZ]``; SIGTERM ends it. With
an idle rate it probes at that rate until SIGUSR1 (a measurement begins: ``--rate``) and again after
SIGUSR2: at hundreds of PoPs, 1 kHz from every client all the time would take most of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import IO


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


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

    def receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # an ICMP error for an earlier probe; that probe will time out
            t = now()
            try:
                msg = json.loads(data)
                seq = int(msg["seq"])
            except (ValueError, KeyError, TypeError):
                continue
            sent = self.pending.pop(seq, None)
            if sent is not None:
                self.write(seq, sent, t, str(msg.get("pop")), str(msg.get("server")))

    def expire(self, t: float) -> None:
        for seq in [s for s, sent in self.pending.items() if t - sent > self.timeout]:
            self.write(seq, self.pending.pop(seq), None, None, None)

    def run(self) -> None:
        # select(2) takes microseconds; epoll (selectors' default) rounds waits up to whole
        # milliseconds, which would put every probe up to 1 ms late.
        # A signal (a rate change) must end the current wait: its handler only runs between select calls.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        fds = [self.sock, wake_r]
        seq = 0
        start = now()
        next_send = start
        last_flush = start
        period = self.period
        while self.running:
            t = now()
            if self.period != period:  # the rate changed: the next probe at the new one, from now
                period, next_send = self.period, min(next_send, t)
            if t >= next_send:
                seq += 1
                self.pending[seq] = t
                with contextlib.suppress(OSError):  # no route yet: counted as lost when it expires
                    self.sock.send(json.dumps({"seq": seq}).encode())
                next_send += self.period
                if next_send < t:  # fell behind (e.g. the machine stalled): skip, do not burst
                    next_send = t + self.period
            ready = select.select(fds, [], [], max(0.0, next_send - now()))[0]
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    wake_r.recv(64)
            if self.sock in ready:
                self.receive()
            t = now()
            if t - last_flush > 0.02:
                self.expire(t)
                self.out.flush()
                self.rotate_if_big()
                last_flush = t
        self.expire(float("inf"))
        self.out.close()

    def stop(self, *_: object) -> None:
        self.running = False

    def fast(self, *_: object) -> None:
        """SIGUSR1: probe at the measuring rate (the next probe goes out at once)."""
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
    args = parser.parse_args()
    prober = Prober(args.target, args.port, args.rate, args.out, args.timeout, args.max_bytes, args.idle_rate)
    signal.signal(signal.SIGTERM, prober.stop)
    signal.signal(signal.SIGINT, prober.stop)
    signal.signal(signal.SIGUSR1, prober.fast)
    signal.signal(signal.SIGUSR2, prober.idle)
    prober.run()


if __name__ == "__main__":
    main()
