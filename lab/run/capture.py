"""Packet capture on a node's interface to a pcap file (or stdout) for Wireshark: tcpdump inside the
node's namespace, bounded by a packet count and a duration, stopped by the lab (SIGINT, so tcpdump
flushes and prints its counts) when the duration ends."""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.errors import AnylabError, UsageError

TCPDUMP = "/usr/bin/tcpdump"
MAX_PACKETS = 1_000_000
MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class CaptureSpec:
    """One bounded capture: where, what, into which file ("-": stdout), and when it stops."""

    netns_file: str
    interface: str
    output: str
    count: int
    seconds: float
    bpf: str | None = None

    def check(self) -> None:
        """Raises UsageError for bounds out of range or an output file whose directory is missing."""
        if not 1 <= self.count <= MAX_PACKETS:
            raise UsageError(f"--count {self.count}: give 1 to {MAX_PACKETS} packets")
        if not 0 < self.seconds <= MAX_SECONDS:
            raise UsageError(f"--duration {self.seconds:g}: give more than 0 and at most {MAX_SECONDS:g} seconds")
        if self.output != "-":
            out = Path(self.output)
            if not out.parent.is_dir():
                raise UsageError(f"-w {out}: the directory {out.parent} does not exist; create it first")
            if out.is_dir():
                raise UsageError(f"-w {out}: is a directory; give a file such as {out / 'capture.pcap'}")

    def argv(self) -> list[str]:
        # -U: each packet written as it comes (a reader on a pipe sees it at once); -Z root: the file is
        # opened as root (tcpdump would otherwise drop to its own user first and fail in root's directories).
        base = ["nsenter", f"--net={self.netns_file}", "--", TCPDUMP, "-i", self.interface, "-w", self.output,
                "-c", str(self.count), "-U", "-Z", "root", "-n"]
        return base + ([self.bpf] if self.bpf else [])


def check_filter(spec: CaptureSpec) -> None:
    """Compile the filter in the node's namespace without capturing (``tcpdump -d``); raises UsageError
    with tcpdump's own words when it does not compile."""
    if not spec.bpf:
        return
    res = subprocess.run(["nsenter", f"--net={spec.netns_file}", "--", TCPDUMP, "-i", spec.interface, "-d", spec.bpf],
                         capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit status {res.returncode}"
        raise UsageError(f"--filter {spec.bpf!r}: {why}")


def capture(spec: CaptureSpec) -> int:
    """Run the capture to its end (count reached or duration over); the number of packets tcpdump says it
    captured. Raises AnylabError when tcpdump fails or reports no count."""
    spec.check()
    check_filter(spec)
    proc = subprocess.Popen(spec.argv(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=spec.seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # tcpdump's own way to stop: flush, print the counts, exit 0
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AnylabError("tcpdump did not stop within 10 s of SIGINT; killed") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    found = re.search(r"(\d+) packets? captured", err or "")
    if proc.returncode not in (0, -signal.SIGINT) or found is None:
        tail = " | ".join((err or "").strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
        raise AnylabError(f"tcpdump on {spec.interface} failed: {tail}")
    return int(found.group(1))
