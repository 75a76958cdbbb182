"""Named network namespaces (``/run/netns/<name>``) and sockets opened inside them."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from pathlib import Path

from core.errors import AnylabError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
#: The C library, for the calls Python 3.11 does not wrap (setns, prctl).
libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def add(name: str) -> str:
    """Create an empty named namespace with ``lo`` up; returns its path. Raises AnylabError."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    return netns_path(name)


def attach(name: str, pid: int) -> str:
    """Give the namespace of process ``pid`` a name (so it outlives nothing, but can be found)."""
    ip("netns", "attach", name, str(pid))
    return netns_path(name)


def delete(name: str) -> None:
    """Remove a named namespace; it disappears once no process is left in it. One already gone (another
    cleanup got there first) is not an error. Raises AnylabError."""
    if not (NETNS_DIR / name).exists():
        return
    try:
        ip("netns", "delete", name)
    except AnylabError:
        if (NETNS_DIR / name).exists():
            raise


def names(prefix: str) -> list[str]:
    """Named namespaces whose name starts with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def ip(*args: str) -> None:
    """One ``ip`` command; raises AnylabError with its error output."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise AnylabError(f"ip {' '.join(args)}: {res.stderr.strip()}")


def enter_netns(netns: str) -> None:
    """Move the calling thread (in a single-threaded process: the process) into the network namespace
    at path ``netns``; raises OSError."""
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def socket_in(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace at path ``netns``; the calling thread stays where it is.

    setns(2) moves only the calling thread, so a short-lived thread enters the namespace, creates the
    socket (which belongs to that namespace for life) and ends. Raises AnylabError.
    """
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            enter_netns(netns)
            result.append(socket.socket(family, kind, proto))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=enter, name=f"setns {netns}")
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise AnylabError(f"cannot open a socket in {netns}: {got}")
    return got


def connect_in(netns: str | None, address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``address:port`` made from inside ``netns`` (None: from here), its timeout set
    to ``timeout``; the caller closes it. Raises OSError (no connection) or AnylabError (no namespace)."""
    sock = socket_in(netns, socket.AF_INET, socket.SOCK_STREAM) if netns else socket.socket()
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    return sock
