"""What happens inside the routers during a measurement, stamped with CLOCK_MONOTONIC on arrival.

One process (forked, so its timestamps do not wait for the measuring process's GIL) watches every
router namespace through two sockets opened inside it:

- a netlink socket (RTMGRP_IPV4_ROUTE) whose messages pyroute2 decodes: every FIB change of an anycast
  prefix, with its next hops;
- a packet socket (AF_PACKET, all interfaces) with a classic BPF filter for TCP port 179: every BGP
  message in or out of the router, decoded afterwards with scapy's BGP layer (UPDATE: withdrawn
  prefixes, announced prefixes and AS path; OPEN/NOTIFICATION as session events).

Everything is kept in memory for the length of one measurement (seconds to minutes).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from core.clock import monotonic
from core.errors import AnylabError
from core.netns import socket_in

RTMGRP_IPV4_ROUTE = 0x40
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
BGP_KEEPALIVE = 4
#: ``tcp port 179`` over IPv4 on Ethernet, as classic BPF (code, jt, jf, k); non-first fragments dropped.
BGP_FILTER = [
    (0x28, 0, 0, 12), (0x15, 0, 10, 0x0800), (0x30, 0, 0, 23), (0x15, 0, 8, 6), (0x28, 0, 0, 20),
    (0x45, 6, 0, 0x1FFF), (0xB1, 0, 0, 14), (0x48, 0, 0, 14), (0x15, 2, 0, 179), (0x48, 0, 0, 16),
    (0x15, 0, 1, 179), (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0),
]



@dataclass(frozen=True)
class FibChange:
    t: float
    router: str
    prefix: str
    event: str  # "add" or "del"
    nexthops: tuple[str, ...]


@dataclass(frozen=True)
class BgpMessage:
    """One BGP message seen on a router interface. ``direction`` is "in" or "out" from the router."""

    t: float
    router: str
    interface: str
    direction: str
    kind: str  # UPDATE, OPEN, NOTIFICATION
    withdrawn: tuple[str, ...] = ()
    announced: tuple[str, ...] = ()
    as_path: tuple[int, ...] = ()


def _attach_filter(sock: socket.socket) -> Any:
    prog = b"".join(struct.pack("HBBI", *ins) for ins in BGP_FILTER)
    buf = ctypes.create_string_buffer(prog)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(BGP_FILTER), ctypes.addressof(buf)))
    return buf  # the kernel copied it, but keep it alive until setsockopt returned


def _tcp_payload(frame: bytes) -> bytes | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 0x0F) * 4
    tcp = 14 + ihl
    if len(frame) < tcp + 20:
        return None
    total = struct.unpack("!H", frame[16:18])[0]
    data_off = (frame[tcp + 12] >> 4) * 4
    return frame[tcp + data_off:14 + total]


def decode_bgp(payload: bytes) -> list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...]]]:
    """BGP messages in one TCP payload as (kind, withdrawn, announced, as_path), via scapy's BGP layer
    (4-byte ASNs, as every speaker in the lab negotiates). Keepalives are left out; a message cut by a
    segment boundary is skipped."""
    import logging

    from scapy import error as _scapy_error  # noqa: F401  (sets scapy's loggers up before they are tuned)

    runtime = logging.getLogger("scapy.runtime")
    level = runtime.level
    runtime.setLevel(logging.ERROR)  # its import warns about the ASN size, which is set just below
    try:
        from scapy.contrib import bgp as scapy_bgp
        from scapy.contrib.bgp import BGPHeader, BGPNotification, BGPOpen, BGPUpdate
    finally:
        runtime.setLevel(level)
    scapy_bgp.bgp_module_conf.use_2_bytes_asn = False

    out: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = []
    offset = 0
    while offset + 19 <= len(payload):
        length = struct.unpack("!H", payload[offset + 16:offset + 18])[0]
        if length < 19 or offset + length > len(payload):
            break
        if payload[offset + 18] == BGP_KEEPALIVE:  # most of the traffic: skipped before scapy (≈ 1 ms each)
            offset += length
            continue
        msg = BGPHeader(payload[offset:offset + length])
        offset += length
        if msg.haslayer(BGPUpdate):
            upd = msg[BGPUpdate]
            withdrawn = tuple(str(w.prefix) for w in upd.withdrawn_routes)
            announced = tuple(str(n.prefix) for n in upd.nlri)
            path: tuple[int, ...] = ()
            for attr in upd.path_attr:
                if attr.type_code == 2 and attr.attribute is not None:
                    for seg in getattr(attr.attribute, "segments", []):
                        path += tuple(int(a) for a in seg.segment_value)
            out.append(("UPDATE", withdrawn, announced, path))
        elif msg.haslayer(BGPOpen):
            out.append(("OPEN", (), (), ()))
        elif msg.haslayer(BGPNotification):
            out.append(("NOTIFICATION", (), (), ()))
    return out


class RouterRecorder:
    """Records FIB changes of ``prefixes`` and BGP messages in every router namespace until stopped."""

    def __init__(self, netns_of: dict[str, str], prefixes: list[IPv4Network]) -> None:
        self.netns_of = netns_of
        self.prefixes = {(str(p.network_address), p.prefixlen) for p in prefixes}
        self.fib: list[FibChange] = []
        self.raw_bgp: list[tuple[float, str, str, str, bytes]] = []
        self._socks: dict[int, tuple[str, str, socket.socket]] = {}
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        #: CLOCK_MONOTONIC of the last FIB change seen (0: none yet), readable while recording.
        self._last_fib = ctx.Value("d", 0.0, lock=False)
        self._conn, self._child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=self._child, name="anylab-recorder", daemon=True)

    def start(self) -> None:
        """Start the recording process; returns once its sockets are open in every router namespace.
        Raises AnylabError if they cannot be opened."""
        self._proc.start()
        self._child_conn.close()  # the child's end: so a dead child reads as EOF here
        if not self._conn.poll(30.0):
            self._proc.kill()
            raise AnylabError("the router recorder did not start within 30 s")
        status = self._conn.recv()
        if status != "ready":
            self._proc.join(5.0)
            raise AnylabError(f"the router recorder could not start: {status}")

    def _child(self) -> None:
        # Ctrl-C is for the measuring process, which stops this one in order and restores the fault.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._open()
        except Exception as exc:
            self._child_conn.send(f"{type(exc).__name__}: {exc}")
            return
        self._child_conn.send("ready")
        self._loop()
        self._child_conn.send((self.fib, self.raw_bgp))

    def _open(self) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        # Imported before "ready": importing it takes ~0.15 s, during which nothing would be read.
        self._marshal = MarshalRtnl()
        self._offset = time.clock_gettime(time.CLOCK_REALTIME) - monotonic()
        for router, ns in self.netns_of.items():
            nl = socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, 0)
            nl.bind((0, RTMGRP_IPV4_ROUTE))
            pk = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            _attach_filter(pk)
            pk.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            for kind, sock in (("fib", nl), ("bgp", pk)):
                sock.setblocking(False)
                self._socks[sock.fileno()] = (router, kind, sock)
            # What arrived before the filter was attached. (Not select(): at 100 routers these
            # descriptors are past the 1 024 select() can watch.)
            with contextlib.suppress(BlockingIOError):
                while True:
                    pk.recv(65536)

    def _loop(self) -> None:
        marshal = self._marshal
        poller = select.epoll()
        for fd in self._socks:
            poller.register(fd, select.EPOLLIN)
        while not self._stop.is_set():
            for fd, _ in poller.poll(0.05):
                router, kind, sock = self._socks[fd]
                while True:
                    try:
                        data, anc, _flags, addr = sock.recvmsg(65536, 64)
                    except (BlockingIOError, InterruptedError):
                        break
                    t = monotonic()
                    for level, typ, raw in anc:
                        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(raw) >= 16:
                            # The kernel's receive time (CLOCK_REALTIME) on the monotonic clock.
                            sec, nsec = struct.unpack("qq", raw[:16])
                            t = sec + nsec / 1e9 - self._offset
                    if kind == "bgp":
                        payload = _tcp_payload(data)
                        if payload:
                            direction = "out" if addr[2] == PACKET_OUTGOING else "in"
                            self.raw_bgp.append((t, router, str(addr[0]), direction, payload))
                        continue
                    for msg in marshal.parse(data):
                        self._on_route(t, router, msg)
        poller.close()

    def _on_route(self, t: float, router: str, msg: Any) -> None:
        event = msg.get("event")
        if event not in ("RTM_NEWROUTE", "RTM_DELROUTE") or msg.get_attr("RTA_TABLE") != 254:
            return
        dst = msg.get_attr("RTA_DST")
        if (dst, msg["dst_len"]) not in self.prefixes:
            return
        hops: list[str] = []
        multipath = msg.get_attr("RTA_MULTIPATH")
        if multipath:
            hops = [str(nh.get_attr("RTA_GATEWAY")) for nh in multipath]
        elif msg.get_attr("RTA_GATEWAY"):
            hops = [str(msg.get_attr("RTA_GATEWAY"))]
        self.fib.append(FibChange(t, router, f"{dst}/{msg['dst_len']}", "add" if event == "RTM_NEWROUTE" else "del",
                                  tuple(sorted(hops))))
        self._last_fib.value = t

    def last_fib_change(self) -> float:
        """When any router's FIB last changed for a recorded prefix (0.0: not since the start)."""
        return float(self._last_fib.value)

    def stop(self) -> None:
        """Stop recording and collect what was recorded. Raises AnylabError if the recorder died."""
        self._stop.set()
        try:
            if not self._conn.poll(30.0):
                raise AnylabError("the router recorder did not hand over its records")
            self.fib, self.raw_bgp = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise AnylabError(f"the router recorder died: {exc}") from exc
        finally:
            self._proc.join(5.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()

    def bgp_messages(self) -> list[BgpMessage]:
        """The captured BGP messages, decoded (keepalives left out), in time order."""
        out = []
        for t, router, intf, direction, payload in sorted(self.raw_bgp, key=lambda m: m[0]):
            for kind, withdrawn, announced, path in decode_bgp(payload):
                out.append(BgpMessage(t, router, intf, direction, kind, withdrawn, announced, path))
        return out
