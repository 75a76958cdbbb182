"""Isolates: one OS process per deployment, forked from a warm spawner, held to the design's limits.

(The spawner is the edge worker's own fork server for tenant code; the lab's :mod:`core.zygote` forks
the PoP servers' daemons and is unrelated.)

- :class:`IsolateSpawner` is a process started once, with the runtime already imported. It keeps one
  forked spare waiting; asked to spawn, it gives the spare the deployment's code, hands a socket connected to
  it back over its control socket (SCM_RIGHTS) and forks the next spare. The kernel reaps them.
- An isolate compiles the deployment's code (errors are reported at spawn), caps its address space
  (``RLIMIT_AS``: its size at birth + the memory limit), then serves requests one at a time over its
  socket: a frame of JSON (method, url, headers) and one of body bytes in, the same out.
- :class:`Isolate` is the supervisor's handle. It enforces what the isolate cannot enforce on itself:
  CPU time per request (read from ``/proc/<pid>/stat``, the isolate is killed past the limit, even in a
  C loop that never returns to Python) and wall time, and turns every failure into an HTTP answer with an
  error code naming the limit (``cpu_limit``, ``wall_limit``, ``memory_limit``, ``worker_exception``,
  ``isolate_crashed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import socket
import struct
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import uvloop

from core.clock import monotonic
from core.errors import AnylabError
from core.http_client import NotConnected, http_request
from tenant import sandbox
from tenant.egress import Egress
from tenant.worker_api import (
    Ctx,
    Env,
    Request,
    Response,
    SubrequestLimitExceeded,
    SubrequestRefused,
    set_outbound,
    to_response,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The largest frame header the supervisor takes from an isolate (a request's or answer's JSON head).
MAX_HEADER = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Makes one storage operation of a Durable Object's isolate (its frame's fields) and returns the value;
#: raises StorageRefused with the reason the isolate is told.
Store = Callable[[dict[str, Any]], Awaitable[Any]]


class StorageRefused(Exception):
    """A storage operation the host will not make (the reason goes back to the isolate)."""


@dataclass(frozen=True)
class Limits:
    """Per-deployment limits (the design's "Vertical Scaling Limits")."""

    memory_mb: int = 128
    cpu_ms: int = 50
    wall_s: float = 30.0
    subrequests: int = 50
    code_bytes: int = 10 * 1024 * 1024


class DeployError(AnylabError):
    """A deployment's code cannot run: too large, does not compile, or has no ``fetch``."""


# -- framing ------------------------------------------------------------------------------------


def send_msg(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    head = json.dumps(header).encode()
    sock.sendall(struct.pack("!II", len(head), len(body)) + head + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """One message; raises EOFError when the peer is gone."""
    hlen, blen = struct.unpack("!II", _recv_exact(sock, 8))
    header: dict[str, Any] = json.loads(_recv_exact(sock, hlen))
    return header, _recv_exact(sock, blen) if blen else b""


# -- inside the isolate -------------------------------------------------------------------------


def check_code(code: str, limits: Limits) -> Any:
    """Compile a deployment's code; raises DeployError (size, syntax) naming the problem."""
    size = len(code.encode())
    if size > limits.code_bytes:
        raise DeployError(f"code is {size / 1e6:.1f} MB; the limit is {limits.code_bytes / 1e6:.0f} MB (code_size)")
    try:
        return compile(code, "<worker>", "exec")
    except SyntaxError as exc:
        raise DeployError(f"syntax error at line {exc.lineno}: {exc.msg} (load_error)") from None


def _vm_size(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[0]) * PAGE


def isolate_main(sock: socket.socket, code: str, bindings: dict[str, Any], limits: Limits,
                 loop: asyncio.AbstractEventLoop, vm_size: Callable[[], int] = _vm_size,
                 through_edge: bool = False, do_class: str | None = None) -> None:
    """Run in the forked child: load the code, get ready to serve, report, then serve until the socket
    closes. ``vm_size`` reads the process's size (a sandboxed isolate has no /proc of its own); with
    ``through_edge`` (a sandboxed isolate: no network of its own) every subrequest goes to the edge. With
    ``do_class`` the isolate runs one Durable Object of that class (:class:`ObjectState`) instead of the
    deployment's ``fetch``."""
    try:
        namespace: dict[str, Any] = {"__name__": "worker" if do_class is None else "durable_object",
                                     "Response": Response}
        exec(check_code(code, limits), namespace)
        handler = namespace.get("fetch") if do_class is None else namespace.get(do_class)
        if do_class is not None and not isinstance(handler, type):
            raise DeployError(f"the code defines no class {do_class} (no_such_class)")
        if do_class is None and not asyncio.iscoroutinefunction(handler):
            raise DeployError("the code defines no 'async def fetch(request, env, ctx)' (load_error)")
    except DeployError as exc:
        send_msg(sock, {"ok": False, "error": str(exc)})
        return
    except Exception as exc:  # the module's own top-level code failed
        send_msg(sock, {"ok": False, "error": f"loading raised {type(exc).__name__}: {exc} (load_error)"})
        return
    budget = vm_size() + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    sock.setblocking(False)
    serving = _Serve(handler, Env(bindings, limits.subrequests), limits, do_class is not None)
    if through_edge:
        set_outbound(serving.subrequest)
    loop.run_until_complete(loop.create_unix_connection(lambda: serving, sock=sock))
    serving.send({"ok": True})  # ready: the first request is not kept waiting for any set-up
    loop.run_forever()  # until the supervisor closes the socket


class _Serve(asyncio.Protocol):
    """The isolate's side of its socket: one event loop for the isolate's life, a task per request
    (a loop per request, as ``run_until_complete`` makes, costs more than the handler)."""

    def __init__(self, handler: Any, env: Env, limits: Limits, durable: bool = False) -> None:
        self.handler, self.env, self.limits = handler, env, limits
        #: A Durable Object's isolate: ``handler`` is its class, ``instance`` the object once made.
        self.durable = durable
        self.instance: Any = None
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.background: set[asyncio.Future[Any]] = set()
        #: Subrequests sent to the edge, by number, waiting for its reply.
        self.pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self.numbered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        asyncio.get_event_loop().stop()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            hlen, blen = struct.unpack_from("!II", self.buf)
            if len(self.buf) < 8 + hlen + blen:
                return
            header = json.loads(bytes(self.buf[8:8 + hlen]))
            body = bytes(self.buf[8 + hlen:8 + hlen + blen])
            del self.buf[:8 + hlen + blen]
            if "sub_reply" in header or "store_reply" in header:  # an answer to this isolate's own request
                waiting = self.pending.pop(int(header.get("sub_reply", header.get("store_reply", 0))), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result((header, body))
                continue
            task = asyncio.ensure_future(self.serve(header, body))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        head = json.dumps(header).encode()
        assert self.transport is not None
        self.transport.write(struct.pack("!II", len(head), len(body)) + head + body)

    async def ask(self, kind: str, fields: dict[str, Any], body: bytes = b"",
                  timeout: float | None = None) -> tuple[dict[str, Any], bytes]:
        """One numbered request of this isolate to its supervisor (``kind``: ``sub`` or ``store``) and its
        answer (``sub_reply`` / ``store_reply`` with the same number); raises TimeoutError past ``timeout``."""
        self.numbered += 1
        number = self.numbered
        waiting = asyncio.get_running_loop().create_future()
        self.pending[number] = waiting
        self.send({kind: number, **fields}, body)
        try:
            return await asyncio.wait_for(waiting, timeout)
        finally:
            self.pending.pop(number, None)

    async def subrequest(self, host: str, port: int, method: str, path: str, body: bytes = b"",
                         headers: dict[str, str] | None = None, connect_s: float = 5.0,
                         answer_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """A request made by the edge on this isolate's behalf (:func:`tenant.worker_api.set_outbound`):
        raises SubrequestRefused for a destination the edge refuses, and NotConnected / TimeoutError /
        ConnectionResetError as the HTTP client would."""
        reply, data = await self.ask("sub", {"host": host, "port": port, "method": method, "path": path,
                                             "headers": headers or {}, "connect_s": connect_s, "answer_s": answer_s},
                                     body, connect_s + answer_s + 1.0)
        error, detail = reply.get("error"), str(reply.get("detail", ""))
        if error == "refused":
            raise SubrequestRefused(detail)
        if error == "not_connected":
            raise NotConnected(detail)
        if error == "timeout":
            raise TimeoutError(detail)
        if error:
            raise ConnectionResetError(detail)
        return int(reply["status"]), dict(reply.get("headers") or {}), data

    async def store(self, op: str, **args: Any) -> Any:
        """One storage operation of this isolate's Durable Object, made by its host; raises StorageError
        with the host's reason (``fenced``: this host no longer owns the object)."""
        reply, _data = await self.ask("store", {"op": op, **args})
        if reply.get("error"):
            raise StorageError(str(reply["error"]))
        return reply.get("value")

    async def serve(self, header: dict[str, Any], body: bytes) -> None:
        t_start = monotonic()
        self.env.reset()
        ctx = Ctx()
        req = Request(header["method"], header["url"], header.get("headers", {}), body)
        try:
            if self.durable:
                if self.instance is None:
                    do = dict(header.get("do") or {})
                    self.instance = self.handler(ObjectState(str(do.get("id", "")), ObjectStorage(self)), self.env)
                result = await (self.instance.alarm() if (header.get("do") or {}).get("alarm")
                                else self.instance.fetch(req))
                resp = to_response("" if result is None else result)
            else:
                resp = to_response(await self.handler(req, self.env, ctx))
            extra = {"breakers": self.env.breaker_report()} if self.env.protection.breakers else {}
            self.send({"ok": True, **resp.as_dict(), "t_handler": t_start, **extra}, resp.body)
        except MemoryError:
            self.send({"ok": False, "error": "memory_limit"})  # small: written at once
            os._exit(3)  # the heap may be unusable: start afresh
        except SubrequestLimitExceeded as exc:
            self.send({"ok": False, "error": "subrequest_limit", "detail": str(exc)})
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            extra = {"breakers": self.env.breaker_report()} if self.env.protection.breakers else {}
            self.send({"ok": False, "error": "worker_exception", "detail": detail, **extra})
        if ctx.pending:  # after the response, bounded by the wall limit
            task = asyncio.ensure_future(asyncio.wait(ctx.pending, timeout=self.limits.wall_s))
            self.background.add(task)
            task.add_done_callback(self.background.discard)


class StorageError(Exception):
    """A Durable Object's storage operation its host refused (``fenced``: no longer the owner)."""


class ObjectStorage:
    """``state.storage`` of a Durable Object in its isolate: every operation is made by the object's host
    (its SQLite store at the owner's epoch) over the isolate's channel."""

    def __init__(self, serve: _Serve) -> None:
        self._serve = serve

    async def get(self, key: str) -> Any:
        return await self._serve.store("get", key=str(key))

    async def put(self, key: str, value: Any) -> None:
        json.dumps(value)  # refuse here what cannot be stored
        await self._serve.store("put", key=str(key), value=value)

    async def delete(self, key: str) -> None:
        await self._serve.store("delete", key=str(key))

    async def list(self, prefix: str = "") -> dict[str, Any]:
        return dict(await self._serve.store("list", prefix=str(prefix)) or {})

    def transaction(self) -> ObjectTransaction:
        """``async with storage.transaction() as tx``: ``await tx.get``, ``tx.put``, ``tx.delete``, all
        committed at once when the block ends without an exception (nothing, otherwise)."""
        return ObjectTransaction(self)

    async def set_alarm(self, at_monotonic: float) -> None:
        await self._serve.store("set_alarm", at=float(at_monotonic))

    async def get_alarm(self) -> float | None:
        at = await self._serve.store("get_alarm")
        return None if at is None else float(at)

    async def delete_alarm(self) -> None:
        await self._serve.store("set_alarm", at=None)


class ObjectTransaction:
    """Writes collected inside ``storage.transaction()``; reads see them."""

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage
        self.ops: list[tuple[str, str, Any]] = []

    async def __aenter__(self) -> ObjectTransaction:
        return self

    async def __aexit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is None and self.ops:
            await self.storage._serve.store("commit", ops=self.ops)

    async def get(self, key: str) -> Any:
        for op, k, v in reversed(self.ops):
            if k == key:
                return v if op == "put" else None
        return await self.storage.get(key)

    def put(self, key: str, value: Any) -> None:
        json.dumps(value)
        self.ops.append(("put", str(key), value))

    def delete(self, key: str) -> None:
        self.ops.append(("delete", str(key), None))


@dataclass
class ObjectState:
    """``state`` of a Durable Object: its id and storage."""

    id: str
    storage: ObjectStorage


_WARM_UP = "async def fetch(request, env, ctx):\n    return Response('warm', 200, {'a': 'b'})\n"


def _warm_up(loop: asyncio.AbstractEventLoop) -> None:
    """Walk the request path once in the spare, so that the copy-on-write page faults a forked
    interpreter takes on its first steps are paid before a deployment is waiting (about 3 ms)."""
    namespace: dict[str, Any] = {"__name__": "worker", "Response": Response}
    exec(check_code(_WARM_UP, Limits()), namespace)
    req = Request("GET", "/", {"host": "warm.example"}, b"")
    resp = to_response(loop.run_until_complete(namespace["fetch"](req, Env({}, 1), Ctx())))
    json.loads(json.dumps({"ok": True, **resp.as_dict()}))
    traceback.format_exception_only(ValueError, ValueError("warm"))


def spare_main(sock: socket.socket, sandboxed: bool) -> None:
    """A forked spare: enter its sandbox (:mod:`tenant.sandbox`, the part that needs no deployment), make
    its event loop, wait for the deployment it is to run, take the deployment's identity, then be its
    isolate. A sandbox that cannot be made is a refused deployment: tenant code never runs outside it."""
    prepared: sandbox.Prepared | None = None
    failed = ""
    if sandboxed:
        try:
            prepared = sandbox.prepare(sock)
        except sandbox.SandboxError as exc:
            failed = str(exc)
    loop = uvloop.new_event_loop()  # paid before a request needs it
    asyncio.set_event_loop(loop)
    _warm_up(loop)
    try:
        header, code = recv_msg(sock)
    except EOFError:
        return  # the spawner went away before it needed this spare
    if prepared is not None:
        try:
            sandbox.enter(prepared, str(header.get("tenant") or "anonymous"))
        except sandbox.SandboxError as exc:
            failed = str(exc)
    if failed:
        send_msg(sock, {"ok": False, "error": f"{failed} (sandbox_error)"})
        return
    isolate_main(sock, code.decode(), header["bindings"], Limits(**header["limits"]), loop,
                 prepared.vm_size if prepared is not None else _vm_size, through_edge=prepared is not None,
                 do_class=header.get("do_class"))


# -- the spawner -----------------------------------------------------------------------------------


class IsolateSpawner:
    """A warm process that forks isolates on request."""

    def __init__(self, sandboxed: bool = True) -> None:
        #: Tenant code in a sandbox (tenant.sandbox). False only for the benchmark's reference run and the
        #: test that shows what the sandbox stops.
        self.sandboxed = sandboxed
        self.ctrl: socket.socket | None = None
        self.pid = 0
        self.lock = threading.Lock()  # spawns come from several threads; one exchange at a time

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the spawner
            parent.close()
            try:
                self._serve(child, self.sandboxed)
            finally:
                os._exit(0)
        child.close()
        self.ctrl, self.pid = parent, pid

    @staticmethod
    def _fork_spare(ctrl: socket.socket, sandboxed: bool) -> tuple[int, socket.socket]:
        """Fork an isolate-to-be that waits for its code: the fork is paid before a request needs it."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ctrl.close()
            theirs.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                spare_main(mine, sandboxed)
            finally:
                os._exit(0)
        mine.close()
        return pid, theirs

    @classmethod
    def _serve(cls, ctrl: socket.socket, sandboxed: bool) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # isolates are reaped by the kernel
        gc.freeze()  # the collector leaves the inherited heap alone: no copy-on-write faults from it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        spare = cls._fork_spare(ctrl, sandboxed)
        while True:
            try:
                header, code = recv_msg(ctrl)
            except EOFError:
                return
            pid, sock = spare
            send_msg(sock, header, code)  # the spare's assignment
            socket.send_fds(ctrl, [json.dumps({"pid": pid}).encode()], [sock.fileno()])
            sock.close()
            spare = cls._fork_spare(ctrl, sandboxed)  # after the answer: off the request's path

    def spawn(self, code: str, bindings: dict[str, Any], limits: Limits, tenant: str = "anonymous",
              do_class: str | None = None) -> Isolate:
        """A new isolate running ``code`` as ``tenant`` (the deployment: its uid in the sandbox) — its
        ``fetch``, or with ``do_class`` one Durable Object of that class; raises DeployError if the code
        cannot load or the sandbox cannot be made."""
        if self.ctrl is None:
            raise AnylabError("the spawner is not running")
        with self.lock:
            send_msg(self.ctrl, {"bindings": bindings, "limits": limits.__dict__, "tenant": tenant,
                                 "do_class": do_class}, code.encode())
            msg, fds, _flags, _addr = socket.recv_fds(self.ctrl, 1024, 1)
        sock = socket.socket(fileno=fds[0])
        pid = int(json.loads(msg)["pid"])
        try:
            header, _ = recv_msg(sock)  # the isolate's verdict on the code, before it serves
        except EOFError:
            header = {"ok": False, "error": "the isolate died while loading the code (load_error)"}
        if not header.get("ok"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            sock.close()
            raise DeployError(str(header.get("error")))
        return Isolate(pid, sock, limits)

    def stop(self) -> None:
        if self.ctrl is not None:
            self.ctrl.close()  # the spawner's loop ends on EOF
            self.ctrl = None
        if self.pid:
            os.waitpid(self.pid, 0)
            self.pid = 0


# -- the supervisor's handle ----------------------------------------------------------------------


def _cpu_of_stat(stat: bytes) -> float:
    fields = stat.rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


@dataclass
class Result:
    response: Response
    error: str | None = None
    t_handler: float | None = None
    #: The isolate's circuit breakers, by dependency, when it has any.
    breakers: dict[str, Any] | None = None


class _Channel(asyncio.Protocol):
    """The supervisor's end of an isolate's socket: the answer to the pending request, and the isolate's
    subrequests, which it makes for it when ``egress`` allows them (refused otherwise, and counted)."""

    def __init__(self, egress: Egress | None, limits: Limits, on_refused: Callable[[], None] | None = None,
                 on_store: Store | None = None) -> None:
        self.on_refused, self.on_store = on_refused, on_store
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.egress, self.limits = egress, limits
        #: Subrequests since the current call began: the limit is kept here, not only in the isolate's
        #: own Env, which tenant code could bypass by writing frames to its channel itself.
        self.subrequests = 0
        self.tasks: set[asyncio.Future[Any]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            hlen, blen = struct.unpack_from("!II", self.buf)
            if hlen > MAX_HEADER or blen > self.limits.memory_mb * 1024 * 1024:
                # More than the isolate could hold: a broken or hostile isolate. Its socket is closed
                # (the call fails as isolate_crashed) rather than buffering what it claims to send.
                self.buf.clear()
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_exception(ValueError(f"a frame of {hlen} + {blen} bytes"))
                if self.transport is not None:
                    self.transport.close()
                return
            if len(self.buf) < 8 + hlen + blen:
                return
            try:
                header = json.loads(bytes(self.buf[8:8 + hlen]))
            except ValueError as exc:
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_exception(exc)
                del self.buf[:8 + hlen + blen]
                continue
            body = bytes(self.buf[8 + hlen:8 + hlen + blen])
            del self.buf[:8 + hlen + blen]
            if isinstance(header, dict) and "sub" in header:
                task = asyncio.ensure_future(self._subrequest(header, body))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(header, dict) and "store" in header:
                task = asyncio.ensure_future(self._store(header))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((header, body))

    def _reply(self, header: dict[str, Any], body: bytes = b"") -> None:
        if self.transport is not None and not self.transport.is_closing():
            head = json.dumps(header).encode()
            self.transport.write(struct.pack("!II", len(head), len(body)) + head + body)

    def _refuse(self, number: Any, why: str) -> None:
        if self.on_refused is not None:
            self.on_refused()
        self._reply({"sub_reply": number, "error": "refused", "detail": why})

    async def _store(self, header: dict[str, Any]) -> None:
        """A Durable Object's storage operation, made by ``on_store`` (none: refused)."""
        number = header.get("store")
        try:
            if self.on_store is None:
                raise StorageRefused("this isolate has no storage")
            self._reply({"store_reply": number, "value": await self.on_store(header)})
        except StorageRefused as exc:
            self._reply({"store_reply": number, "error": str(exc)})

    async def _subrequest(self, sub: dict[str, Any], body: bytes) -> None:
        number = sub.get("sub")
        try:
            host, port, method, path = str(sub["host"]), int(sub["port"]), str(sub["method"]), str(sub["path"])
            headers = {str(k): str(v) for k, v in dict(sub.get("headers") or {}).items()}
            connect_s = min(float(sub.get("connect_s", 5.0)), 30.0)
            answer_s = min(float(sub.get("answer_s", 30.0)), 60.0)
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse(number, f"malformed subrequest: {exc}")
            return
        self.subrequests += 1
        if self.subrequests > self.limits.subrequests:
            self._refuse(number, f"subrequest limit of {self.limits.subrequests} per request reached")
            return
        refusal, headers = (("no egress for this isolate", headers) if self.egress is None
                            else self.egress.check(host, port, method, path, headers, body))
        if refusal is not None:
            self._refuse(number, refusal)
            return
        try:
            status, answer_headers, answer = await http_request(host, port, method, path, body, headers, connect_s,
                                                                answer_s)
        except NotConnected as exc:
            self._reply({"sub_reply": number, "error": "not_connected", "detail": str(exc)})
        except TimeoutError as exc:
            self._reply({"sub_reply": number, "error": "timeout", "detail": repr(exc)})
        except (OSError, EOFError, ValueError) as exc:
            self._reply({"sub_reply": number, "error": "failed", "detail": repr(exc)})
        else:
            self._reply({"sub_reply": number, "status": status, "headers": answer_headers}, answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(EOFError("isolate closed its socket"))
        for task in self.tasks:
            task.cancel()


class Isolate:
    """One isolate process of one deployment, as the supervisor sees it.

    ``acall`` runs on the supervisor's event loop: the request goes out on the isolate's socket and a
    watchdog timer looks at the isolate's CPU time (``/proc/<pid>/stat``) only when the request has run
    as long as its CPU budget in wall time (CPU time never runs faster than the clock), so a request that
    answers within the budget costs one ``/proc`` read, at its start."""

    def __init__(self, pid: int, sock: socket.socket, limits: Limits) -> None:
        self.pid, self.sock, self.limits = pid, sock, limits
        #: Where this isolate's subrequests may go (the edge sets it from the deployment); None: nowhere.
        #: ``on_refused`` is called for each one refused (the edge counts them).
        self.egress: Egress | None = None
        self.on_refused: Callable[[], None] | None = None
        #: A Durable Object's isolate: makes its storage operations (the host sets it).
        self.on_store: Store | None = None
        self.dead = False
        self.verdict: str | None = None
        self.detail = ""
        self._channel: _Channel | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        try:
            self._stat: int | None = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        except OSError:
            self._stat = None  # already gone: the first call reports the crash
        sock.setblocking(False)

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            try:
                if self._channel is None or self._channel.transport is None:
                    raise RuntimeError("no transport")
                self._channel.transport.close()
            except RuntimeError:  # no transport, or its loop is closed already
                self.sock.close()
            if self._sync_loop is not None and not self._sync_loop.is_running():
                self._close_sync_loop()
            if self._stat is not None:
                os.close(self._stat)
                self._stat = None

    def cpu(self) -> float:
        """CPU seconds the isolate has used; raises OSError once it is gone."""
        if self._stat is None:
            raise ProcessLookupError(self.pid)
        return _cpu_of_stat(os.pread(self._stat, 1024, 0))

    def _fail(self, code: str, status: int, detail: str = "") -> Result:
        body = json.dumps({"error": code, "detail": detail}).encode()
        return Result(Response(body, status, {"content-type": "application/json", "x-anylab-error": code}), code)

    def _watch(self, loop: asyncio.AbstractEventLoop, t0: float, cpu0: float) -> None:
        """The watchdog: kill past the CPU or wall limit, else look again when the rest of the CPU budget
        could at the earliest be used up (at least every 10 ms, /proc's tick)."""
        if self.dead:
            return
        try:
            spent = self.cpu() - cpu0
        except OSError:
            return  # it died by itself: the read sees EOF
        wall = monotonic() - t0
        cpu_limit = self.limits.cpu_ms / 1000
        if spent >= cpu_limit:
            self.verdict, self.detail = "cpu_limit", f"used {spent * 1000:.0f} ms of CPU; limit {self.limits.cpu_ms} ms"
        elif wall >= self.limits.wall_s:
            self.verdict, self.detail = "wall_limit", f"no answer in {self.limits.wall_s:.0f} s"
        else:
            self._watchdog = loop.call_later(max(0.01, min(cpu_limit - spent, self.limits.wall_s - wall)),
                                             self._watch, loop, t0, cpu0)
            return
        # Only the signal: its socket's end closing wakes the pending read, which then cleans up.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def acall(self, req: Request, do: dict[str, Any] | None = None) -> Result:
        """Serve one request within the limits (``do``: the Durable Object event, ``{id, alarm?}``); never
        raises for what the worker does."""
        if self.dead:
            return self._fail("isolate_crashed", 503, "this isolate is gone")
        loop = asyncio.get_running_loop()
        if self._channel is None:
            _t, self._channel = await loop.create_unix_connection(
                lambda: _Channel(self.egress, self.limits, self.on_refused, self.on_store), sock=self.sock)
        channel = self._channel
        t0 = monotonic()
        try:
            cpu0 = self.cpu()
        except OSError:
            self.kill()
            return self._fail("isolate_crashed", 503, "the isolate is gone")
        self._watchdog = loop.call_later(self.limits.cpu_ms / 1000, self._watch, loop, t0, cpu0)
        try:
            if channel.lost or channel.transport is None:
                raise EOFError("isolate closed its socket")
            channel.waiter = loop.create_future()
            channel.subrequests = 0
            head = json.dumps({"method": req.method, "url": req.url, "headers": dict(req.headers),
                               **({"do": do} if do is not None else {})}).encode()
            channel.transport.write(struct.pack("!II", len(head), len(req.body)) + head + req.body)
            header, body = await channel.waiter
        except (EOFError, OSError, ValueError):
            self.kill()
            if self.verdict is not None:
                return self._fail(self.verdict, 503, self.detail)
            return self._fail("isolate_crashed", 503, "the isolate died while serving")
        finally:
            channel.waiter = None
            if self._watchdog is not None:
                self._watchdog.cancel()  # the current one: the watchdog re-arms itself under this name
        if not header.get("ok"):
            code = str(header.get("error"))
            if code == "memory_limit":
                self.kill()
                return self._fail(code, 503, f"over {self.limits.memory_mb} MB")
            failed = self._fail(code, 500, str(header.get("detail", "")))
            failed.breakers = header.get("breakers")
            return failed
        t = header.get("t_handler")
        return Result(Response(body, header["status"], header.get("headers")), None, float(t) if t else None,
                      header.get("breakers"))

    def call(self, req: Request) -> Result:
        """``acall`` for callers without an event loop (tests, tools): on a loop of this isolate's own."""
        if self._sync_loop is None:
            self._sync_loop = asyncio.new_event_loop()
        result = self._sync_loop.run_until_complete(self.acall(req))
        if self.dead:
            self._close_sync_loop()
        return result

    def _close_sync_loop(self) -> None:
        """Close the loop of ``call``, its tasks (subrequests the isolate asked for and did not wait for)
        cancelled and run to their end first: a task left pending on a closed loop closes its connection
        when it is collected, on that closed loop ("Event loop is closed", seen in the suite)."""
        loop = self._sync_loop
        if loop is None or loop.is_closed():
            return
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
