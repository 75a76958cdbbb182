"""The nfnetlink_queue protocol, as much of it as a delay relay needs: bind a queue, take packet ids,
give verdicts. Written against ``linux/netfilter/nfnetlink_queue.h`` (no library: Debian has no Python
binding, and the relay needs only five messages).

Encoding and decoding are pure functions (unit-tested); :class:`QueueSocket` is the thin I/O around them.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
#: Pass GSO packets whole (the relay never looks inside; segmenting them would cost CPU for nothing).
NFQA_CFG_F_GSO = 4
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")


class NfqueueError(OSError):
    """The kernel refused a queue request (its errno and what was asked)."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def message(msg: int, queue: int, attrs: bytes, *, seq: int = 0, ack: bool = False) -> bytes:
    """A queue-subsystem netlink message for ``queue`` carrying ``attrs``."""
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def bind_messages(queue: int, maxlen: int) -> list[bytes]:
    """Bind ``queue``, copy metadata only, queue at most ``maxlen`` packets (more are dropped: a full
    link loses packets, as a full router queue does), whole GSO packets."""
    gso = struct.pack("!I", NFQA_CFG_F_GSO)
    attrs = [attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)),
             attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
             attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)),
             attr(NFQA_CFG_MASK, gso) + attr(NFQA_CFG_FLAGS, gso)]
    return [message(NFQNL_MSG_CONFIG, queue, a, ack=True, seq=i + 1) for i, a in enumerate(attrs)]


def verdict(queue: int, packet_id: int, accept: bool, *, batch: bool) -> bytes:
    """The verdict on one packet, or (``batch``) on every packet of the queue up to ``packet_id``."""
    hdr = attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id))
    return message(NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT, queue, hdr)


@dataclass(frozen=True)
class Parsed:
    """One message from the kernel: a queued packet's id, or an error/ack (``error`` 0 is an ack)."""

    packet_id: int | None = None
    error: int | None = None


def parse(buf: bytes) -> Iterator[Parsed]:
    """The messages in one datagram from the kernel; malformed tails are ignored (never raises)."""
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size or off + length > len(buf):
            return
        body = off + _NLMSGHDR.size
        if kind == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            yield Parsed(error=-struct.unpack_from("=i", buf, body)[0])
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = body + _NFGENMSG.size
            while a + _NLATTR.size <= off + length:
                alen, akind = _NLATTR.unpack_from(buf, a)
                if alen < _NLATTR.size:
                    break
                if akind & NLA_TYPE_MASK == NFQA_PACKET_HDR and alen >= _NLATTR.size + 4:
                    yield Parsed(packet_id=struct.unpack_from("!I", buf, a + _NLATTR.size)[0])
                    break
                a += _align(alen)
        off += _align(length)


class QueueSocket:
    """One bound queue: a non-blocking netlink socket in the namespace it was made in."""

    def __init__(self, queue: int, maxlen: int, rcvbuf: int = 8 << 20) -> None:
        """Bind ``queue``; raises NfqueueError if the kernel refuses (e.g. another process has it)."""
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            # A burst must not overflow the socket: root may exceed rmem_max.
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self.sock.bind((0, 0))
            for msg in bind_messages(queue, maxlen):
                self.sock.send(msg)
                for got in parse(self.sock.recv(65536)):
                    if got.error:
                        raise NfqueueError(got.error, f"queue {queue}: {os.strerror(got.error)}")
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> list[int]:
        """Every packet id waiting on the socket now (oldest first)."""
        ids: list[int] = []
        while True:
            try:
                buf = self.sock.recv(65536)
            except BlockingIOError:
                return ids
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                raise
            ids.extend(p.packet_id for p in parse(buf) if p.packet_id is not None)

    def send(self, msg: bytes) -> None:
        try:
            self.sock.send(msg)
        except BlockingIOError:  # the kernel's side is full: block for this one
            self.sock.setblocking(True)
            try:
                self.sock.send(msg)
            finally:
                self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()
