"""The sandbox an isolate runs tenant code in, built from what Linux and Debian provide.

Two steps, so that the dear one is paid before a request waits:

- :func:`prepare` runs in a spare isolate before it is given any code: it keeps only its channel to the
  edge (every other inherited descriptor — the edge's listening sockets, logs, its control sockets — is
  closed; stdout and stderr go to ``/dev/null``), makes the process die with its parent
  (``PR_SET_PDEATHSIG``), and enters network, mount, IPC and UTS namespaces of its own (no network at all:
  its subrequests go over its channel to the edge, which allows only what :mod:`tenant.egress` says)
  whose root is an empty
  read-only tmpfs holding only what the interpreter needs, bind-mounted read-only: ``/usr`` (the
  interpreter, its standard library, Debian's modules) and the project with its venv. No ``/proc`` (no
  view of the process table), no ``/dev``, no ``/etc``, no ``/run`` (the lab's run directory with the
  control plane's tokens and every other deployment's code is not there). It also builds the seccomp
  filter (libseccomp's Python binding, Debian's ``python3-seccomp``).
- :func:`enter` runs once the deployment is known: no supplementary groups, the deployment's own
  unprivileged uid and gid (:func:`tenant_id`), resource limits (no core files, no file writes, 64
  descriptors), ``PR_SET_NO_NEW_PRIVS``, then the filter. From then on, for the rest of the process's life:
  no fork, vfork, exec or new namespace; threads only (``clone`` with ``CLONE_THREAD``); no raw, packet or
  netlink sockets (only Unix, IPv4 and IPv6 stream and datagram ones); signals only to itself; none of
  ptrace, process_vm_*, mount, pivot_root, chroot, bpf, perf_event_open, keyctl, module loading, kexec,
  reboot, swap, clock setting, userfaultfd; and (from :func:`prepare` on) no io_uring. A refused call
  fails with EPERM (ENOSYS for ``clone3``, so that glibc falls back to ``clone``), never kills the
  isolate: the worker sees an exception and its neighbours go on.

Why these and not a container runtime: the isolate is already a forked process with the interpreter
loaded (its cold start is a few milliseconds); namespaces, credentials, rlimits and a seccomp filter are
system calls it can make on itself in well under a millisecond, where a runtime would start a process.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import resource
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where the sandbox's root is assembled, inside the isolate's own mount namespace (a tmpfs mounted there
# is seen by nobody else).
STAGE = "/tmp"
ROOT = STAGE + "/root"
#: Tenant uids and gids: 100000 + a hash of the deployment's name into 900000 (far from Debian's system
#: and login ranges). Two deployments collide with probability ~n²/1.8e6 (0.5 % for 100); a collision
#: lets them share NPROC accounting, nothing else the filter allows.
UID_BASE = 100_000
UID_SPAN = 900_000

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SOCK_PACKET = 10  # the obsolete packet socket type (not in Python's socket module)

_libc = ctypes.CDLL(None, use_errno=True)

#: Calls a tenant never needs; refused with EPERM.
DENIED = (
    "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount",
    "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog", "acct",
    "quotactl", "iopl", "ioperm", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "tkill",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "memfd_secret", "fanotify_init", "lookup_dcookie",
    "move_pages", "migrate_pages", "mbind", "set_mempolicy", "setuid", "setgid", "setreuid", "setregid",
    "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid", "capset", "personality", "seccomp",
)
#: Address families a tenant may open (its subrequests, its channel): Unix, IPv4, IPv6.
ALLOWED_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


class SandboxError(Exception):
    """A step of the sandbox failed; the isolate must not run tenant code."""


def tenant_id(deployment: str) -> int:
    """The uid (and gid) a deployment's isolates run as, the same on every server."""
    digest = hashlib.sha256(deployment.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_SPAN


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def readable_paths() -> list[str]:
    """What the interpreter needs, read-only: /usr (Debian's merged /usr: /lib, /bin are links into it)
    and the project with its venv (the runtime's modules, imported lazily by some calls)."""
    project = str(Path(__file__).resolve().parents[1])
    paths = ["/usr", project]
    prefix = os.path.realpath(sys.prefix)
    if not prefix.startswith(project + "/") and prefix != project:
        paths.append(prefix)
    return paths


def _close_inherited(keep: set[int]) -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                continue  # the directory listing's own descriptor, closed already


def _enter_root(paths: list[str]) -> None:
    # A network namespace of its own: no interface but a loopback that is down. What worker code sends
    # goes over the isolate's channel to the edge, which checks it (tenant.egress).
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates back to the host
    _mount("anylab-isolate", STAGE, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755")
    os.mkdir(ROOT)
    _mount("anylab-isolate", ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for path in paths:
        target = ROOT + path
        os.makedirs(target, exist_ok=True)
        _mount(path, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for link, to in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")):
        if os.path.lexists("/" + link):
            os.symlink(to, f"{ROOT}/{link}")
    os.mkdir(ROOT + "/.old")
    _check(_libc.syscall(155, ROOT.encode(), (ROOT + "/.old").encode()), "pivot_root")  # SYS_pivot_root
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount /.old")
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _build_filter(pid: int) -> Any:
    import seccomp  # Debian's python3-seccomp, linked into the venv by scripts/setup.sh

    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    denied = seccomp.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            f.add_rule(denied, name)
        except (RuntimeError, ValueError):
            continue  # a call this kernel or libseccomp does not know: nothing to deny
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # glibc then falls back to clone (threads)
    f.add_rule(denied, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))  # a process, not a thread
    f.add_rule(denied, "kill", seccomp.Arg(0, seccomp.NE, pid))
    f.add_rule(denied, "tgkill", seccomp.Arg(0, seccomp.NE, pid))
    f.add_rule(denied, "rt_sigqueueinfo", seccomp.Arg(0, seccomp.NE, pid))
    f.add_rule(denied, "rt_tgsigqueueinfo", seccomp.Arg(0, seccomp.NE, pid))
    for family in range(0, max(ALLOWED_FAMILIES)):  # the families below the largest allowed, one by one
        if family not in ALLOWED_FAMILIES:
            f.add_rule(denied, "socket", seccomp.Arg(0, seccomp.EQ, family))
    f.add_rule(denied, "socket", seccomp.Arg(0, seccomp.GT, max(ALLOWED_FAMILIES)))
    f.add_rule(denied, "socket", seccomp.Arg(1, seccomp.MASKED_EQ, 0xF, socket.SOCK_RAW))
    f.add_rule(denied, "socket", seccomp.Arg(1, seccomp.MASKED_EQ, 0xF, SOCK_PACKET))
    f.add_rule(denied, "socketpair", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
    return f


def _refuse_io_uring() -> None:
    """Before the spare makes its event loop: no io_uring (ENOSYS). libuv (uvloop's) otherwise sets up a
    ring at loop creation, and operations submitted through a ring are not system calls the later filter
    sees — a worker could open sockets or files through it. Without one, libuv uses plain epoll."""
    import seccomp

    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), name)
    f.load()


@dataclass
class Prepared:
    """A spare's sandbox, ready for its deployment: its pid, its filter (built, not loaded) and a
    descriptor of its own ``/proc/self/statm`` (the only view of /proc it keeps, for its memory limit)."""

    pid: int
    filter: Any
    statm: int
    #: The spawner: the isolate dies with it (its parent-death signal).
    parent: int = 0

    def vm_size(self) -> int:
        """The process's virtual memory size in bytes, now."""
        return int(os.pread(self.statm, 64, 0).split()[0]) * os.sysconf("SC_PAGE_SIZE")


def prepare(channel: socket.socket) -> Prepared:
    """The first step, in a spare before it has code (see the module's docstring). Raises SandboxError."""
    try:
        _close_inherited({channel.fileno()})
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
        statm = os.open("/proc/self/statm", os.O_RDONLY)
        _enter_root(readable_paths())
        _refuse_io_uring()
        return Prepared(os.getpid(), _build_filter(os.getpid()), statm, os.getppid())
    except OSError as exc:
        raise SandboxError(f"sandbox: {exc}") from exc


def enter(prepared: Prepared, deployment: str) -> None:
    """The second step, once the deployment is known: its uid, the limits, no new privileges, the filter.
    Irreversible. Raises SandboxError."""
    uid = tenant_id(deployment)
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # The kernel clears the parent-death signal when the uid changes: set it again, and go now if the
        # parent (the spawner) is already gone — else a spinning isolate outlived a killed edge.
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
        if os.getppid() != prepared.parent:
            os._exit(0)
        for limit, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NOFILE, 64)):
            resource.setrlimit(limit, (value, value))
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "PR_SET_DUMPABLE")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        prepared.filter.load()
    except (OSError, RuntimeError, ValueError) as exc:
        raise SandboxError(f"sandbox: {exc}") from exc
