"""Hostile workers against the isolate's sandbox (tenant/sandbox.py), issue 19.

Each worker tries one thing a tenant must not do and answers what happened ("refused: …" or "DONE …").
Every one must be refused while a neighbour deployment keeps answering; the same workers in an isolate
without the sandbox (the reference the benchmark also uses) show that each attempt does work there, so
the refusals come from the sandbox and not from a broken test.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenant.isolate import IsolateSpawner, Limits
from tenant.sandbox import tenant_id
from tenant.worker_api import Request

pytestmark = pytest.mark.root

# A secret only root can read, where the lab keeps its own (the run root), made by the test.
SECRET_DIR = Path("/run/anylab-sandbox-test")
SECRET = SECRET_DIR / "admin.token"

TRY = '''
import os, socket, signal, ctypes, threading
LIBC = ctypes.CDLL(None, use_errno=True)
async def fetch(request, env, ctx):
    try:
        what = {body}
    except BaseException as exc:
        return "refused: " + type(exc).__name__ + " " + str(exc)
    return "DONE " + str(what)[:200]
'''

HOSTILE = {
    "read the lab's secrets": f"open({str(SECRET)!r}).read()",
    "read the host's files": "open('/etc/passwd').read()",
    "list the run root": "os.listdir('/run')",
    "write a file": "open('/x', 'w').write('x')",
    "walk /proc": "os.listdir('/proc')",
    "raw socket": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
    "packet socket": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
    "netlink socket": "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
    "signal the edge": "os.kill(os.getppid(), signal.SIGTERM)",
    "signal init": "os.kill(1, 0)",
    "signal the process group": "os.kill(0, signal.SIGTERM)",
    "fork": "os.fork()",
    "fork bomb": "[os.fork() for _ in range(1000)]",
    "run a program": "os.execv('/usr/bin/id', ['id'])",
    "become root": "os.setuid(0)",
    "ptrace through ctypes": "(LIBC.ptrace(16, 1, 0, 0), ctypes.get_errno())",  # PTRACE_ATTACH to init
    "mount through ctypes": "(LIBC.mount(b'none', b'/usr', b'tmpfs', 0, None), ctypes.get_errno())",
    "io_uring through ctypes": "(LIBC.syscall(425, 8, ctypes.create_string_buffer(120)), ctypes.get_errno())",
    "reach the KV replica directly": "socket.create_connection(('127.0.0.1', 8101), 1)",
    "reach a lab address directly": "socket.create_connection(('10.4.0.0', 8100), 1)",
}
# What a refusal looks like for each (the words that must be in the answer).
REFUSED = {
    "read the lab's secrets": "No such file or directory", "read the host's files": "No such file or directory",
    "list the run root": "No such file or directory", "write a file": "Read-only file system",
    "walk /proc": "No such file or directory", "raw socket": "Operation not permitted",
    "packet socket": "Operation not permitted", "netlink socket": "Operation not permitted",
    "signal the edge": "Operation not permitted", "signal init": "Operation not permitted",
    "signal the process group": "Operation not permitted", "fork": "Operation not permitted",
    "fork bomb": "Operation not permitted", "run a program": "Operation not permitted",
    "become root": "Operation not permitted", "ptrace through ctypes": "DONE (-1, 1)",  # EPERM
    "mount through ctypes": "DONE (-1, 1)", "io_uring through ctypes": "DONE (-1, 38)",  # ENOSYS
    "reach the KV replica directly": "Network is unreachable",  # its own network namespace: lo is down
    "reach a lab address directly": "Network is unreachable",
}
NEIGHBOUR = 'async def fetch(request, env, ctx):\n    return "neighbour ok"\n'


@pytest.fixture(scope="module", autouse=True)
def secret() -> Iterator[Path]:
    SECRET_DIR.mkdir(mode=0o700, exist_ok=True)
    SECRET.write_text("s3cret\n")
    yield SECRET
    SECRET.unlink()
    SECRET_DIR.rmdir()
    Path("/x").unlink(missing_ok=True)  # the reference run's write


def answer(spawner: IsolateSpawner, code: str, tenant: str) -> str:
    iso = spawner.spawn(code, {}, Limits(), tenant)
    try:
        result = iso.call(Request("GET", "/", {"host": "x.example"}, b""))
        return result.response.body.decode() if result.error is None else f"error {result.error}"
    finally:
        iso.kill()


def test_the_corpus_is_large() -> None:
    assert len(HOSTILE) >= 12 and set(HOSTILE) == set(REFUSED)


@pytest.mark.parametrize("attempt", sorted(HOSTILE))
def test_each_attempt_is_refused_and_the_neighbour_keeps_answering(spawner: IsolateSpawner, attempt: str) -> None:
    neighbour = spawner.spawn(NEIGHBOUR, {}, Limits(), "neighbour")
    try:
        got = answer(spawner, TRY.replace("{body}", HOSTILE[attempt]), "hostile")
        assert REFUSED[attempt] in got, got
        assert neighbour.call(Request("GET", "/", {"host": "n.example"}, b"")).response.body == b"neighbour ok"
    finally:
        neighbour.kill()


def test_nothing_the_edge_had_open_is_inherited() -> None:
    """Descriptors the spawner's parent held (here: a root-only file and a listening socket, as the edge
    holds its logs and port 80) are not open in a sandboxed isolate; stdin/out/err are /dev/null."""
    import socket

    held = open(SECRET)  # noqa: SIM115 (held open across the spawner's start on purpose)
    listener = socket.create_server(("127.0.0.1", 0))
    z = IsolateSpawner()
    z.start()
    try:
        iso = z.spawn(NEIGHBOUR, {}, Limits(), "w")
        fds = {fd: os.readlink(f"/proc/{iso.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{iso.pid}/fd")}
        iso.kill()
        inode = f"socket:[{os.fstat(listener.fileno()).st_ino}]"
        assert str(SECRET) not in fds.values() and inode not in fds.values(), fds
        assert [fds[str(fd)] for fd in (0, 1, 2)] == ["/dev/null"] * 3
    finally:
        z.stop()
        held.close()
        listener.close()


def test_the_isolate_runs_as_its_deployment_and_threads_still_work(spawner: IsolateSpawner) -> None:
    code = TRY.replace("{body}", "(os.getuid(), os.getgid(), os.getgroups(), "
                                 "(lambda t: (t.start(), t.join(), 'thread ok')[2])(threading.Thread(target=int)))")
    uid = tenant_id("w1")
    assert answer(spawner, code, "w1") == f"DONE ({uid}, {uid}, [], 'thread ok')"
    assert tenant_id("w1") != tenant_id("w2")


@pytest.mark.parametrize("attempt", ["read the lab's secrets", "walk /proc", "raw socket", "fork", "signal init",
                                     "write a file"])
def test_without_the_sandbox_the_same_attempts_succeed(attempt: str) -> None:
    """The reference: an isolate as it was before the sandbox (IsolateSpawner(sandboxed=False))."""
    bare = IsolateSpawner(sandboxed=False)
    bare.start()
    try:
        code = TRY.replace("{body}", HOSTILE[attempt] if attempt != "fork" else
                           "(lambda pid: pid == 0 and os._exit(0) or 'forked')(os.fork())")
        got = answer(bare, code, "hostile")
        assert got.startswith("DONE"), got
    finally:
        bare.stop()


# --- Egress: what worker code sends goes through the edge, which checks it -------------------------

ORIGIN_PAGE = b"from the origin"


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    """A tiny origin on the test's loopback (the edge's side of the channel can reach it; the isolate
    cannot, except through the edge)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(ORIGIN_PAGE)))
            self.end_headers()
            self.wfile.write(ORIGIN_PAGE)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


FETCH = '''
async def fetch(request, env, ctx):
    try:
        reply = await env.fetch(request.url)
        return "DONE " + reply.body.decode()
    except Exception as exc:
        return "refused: " + type(exc).__name__ + " " + str(exc)
'''


def test_an_origin_is_reached_through_the_edge_and_internal_services_are_refused(
        spawner: IsolateSpawner, origin: int) -> None:
    from tenant.egress import Egress

    iso = spawner.spawn(FETCH, {}, Limits(), "w")
    iso.egress = Egress.of("w", "w", {}, frozenset({("127.0.0.1", origin)}))
    counted: list[int] = []
    iso.on_refused = lambda: counted.append(1)
    try:
        ok = iso.call(Request("GET", f"http://127.0.0.1:{origin}/", {"host": "w.example"}, b""))
        assert ok.response.body == b"DONE " + ORIGIN_PAGE
        for url in ("http://127.0.0.1:8101/v1/kv/other/get", "http://10.3.0.1:8000/v1/deployments",
                    "http://127.0.0.1:1/"):
            got = iso.call(Request("GET", url, {"host": "w.example"}, b"")).response.body.decode()
            assert got.startswith("refused: SubrequestRefused "), got
        assert len(counted) == 3  # what the edge adds to its protect.json counters (egress_refused)
    finally:
        iso.kill()


@pytest.mark.parametrize(("host", "port", "method", "path", "body", "refusal"), [
    ("10.5.0.1", 80, "GET", "/", b"", None),  # the origin
    ("10.5.0.1", 81, "GET", "/", b"", "10.5.0.1:81 is not an origin"),
    ("10.3.0.1", 8000, "GET", "/v1/deployments", b"", "is not an origin"),  # the control plane
    ("127.0.0.1", 8101, "POST", "/v1/kv/mine/get", b"{}", None),
    ("127.0.0.1", 8101, "POST", "/v1/kv/theirs/get", b"{}", "KV namespace 'theirs' is not bound"),
    ("127.0.0.1", 8101, "GET", "/v1/status", b"", "is not a KV call"),
    ("127.0.0.1", 8101, "GET", "/v1/kv/mine/list?prefix=a", b"", None),
    ("127.0.0.1", 8101, "POST", "/v1/kv/mine/../theirs/get", b"{}", "is not a KV call"),  # dot segments
    ("127.0.0.1", 8101, "POST", "/v1/kv/mine/batch", b"{}", "is not a KV call"),
    ("127.0.0.1", 8101, "POST", "/v1/kv/mi%6Ee/get", b"{}", "'mi%6Ee' is not bound"),
    ("127.0.0.1", 8102, "POST", "/v1/do", b'{"key": "w/Counter/ab"}', None),
    ("127.0.0.1", 8102, "POST", "/v1/do", b'{"key": "other/Counter/ab"}', "class other/Counter is not bound"),
    ("127.0.0.1", 8102, "POST", "/v1/do", b'{"nokey": 1}', "without a key"),
    ("127.0.0.1", 8102, "GET", "/v1/status", b"", "is not a Durable Object call"),
])
def test_egress_rules(host: str, port: int, method: str, path: str, body: bytes, refusal: str | None) -> None:
    from tenant.egress import Egress

    egress = Egress.of("w", "acct-w", {"KV": {"kv_namespace": "mine"}, "C": {"durable_object": "Counter"}},
                       frozenset({("10.5.0.1", 80)}))
    got, headers = egress.check(host, port, method, path, {"X-Anylab-Account": "someone-else"}, body)
    assert (got is None) if refusal is None else (got is not None and refusal in got), got
    if port == 8101 and refusal is None:
        assert headers["X-Anylab-Account"] == "acct-w"  # the edge says whose account, not the worker


RAW = '''
import os, stat, struct, json, asyncio
async def fetch(request, env, ctx):
    fds = []
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                fds.append(fd)
        except OSError:
            pass
    for fd in fds:
        {body}
    await asyncio.sleep(5)
    return "not stopped"
'''


def test_a_frame_larger_than_the_isolate_could_hold_ends_it_at_once(spawner: IsolateSpawner) -> None:
    """The supervisor does not buffer what an isolate claims it will send: without the bound this call
    waited out the 30 s wall limit (wall_limit); with it the isolate is gone at once."""
    from core.clock import monotonic

    iso = spawner.spawn(RAW.replace("{body}", "os.write(fd, struct.pack('!II', 1 << 31, 0))"), {}, Limits(), "raw")
    t0 = monotonic()
    try:
        result = iso.call(Request("GET", "/", {"host": "raw.example"}, b""))
    finally:
        iso.kill()
    assert result.error == "isolate_crashed" and monotonic() - t0 < 4.0  # the worker sleeps 5 s after writing


def test_the_subrequest_limit_holds_for_frames_written_by_hand(spawner: IsolateSpawner, origin: int) -> None:
    """60 subrequest frames written straight to the channel (past the isolate's own Env count): the edge
    makes 50 (Limits().subrequests) and refuses the rest."""
    from tenant.egress import Egress

    body = ("for i in range(60):\n"
            "            head = json.dumps({'sub': 1000 + i, 'host': '127.0.0.1', 'port': PORT, 'method': 'GET', "
            "'path': '/', 'headers': {}}).encode()\n"
            "            os.write(fd, struct.pack('!II', len(head), 0) + head)").replace("PORT", str(origin))
    iso = spawner.spawn(RAW.replace("{body}", body), {}, Limits(wall_s=3.0), "raw")
    counted: list[int] = []
    iso.egress = Egress.of("raw", "raw", {}, frozenset({("127.0.0.1", origin)}))
    iso.on_refused = lambda: counted.append(1)
    try:
        iso.call(Request("GET", "/", {"host": "raw.example"}, b""))
    finally:
        iso.kill()
    assert len(counted) == 60 - Limits().subrequests



def test_a_subrequest_still_waiting_when_the_isolate_dies_ends_with_it(spawner: IsolateSpawner,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A subrequest to an origin that never answers, pending when the wall limit kills the isolate: it is
    cancelled and run to its end before the isolate's loop closes. Left pending on the closed loop, it
    closed its connection when collected, on that loop: "Event loop is closed" (seen in the suite)."""
    import socket

    from tenant.egress import Egress

    unraisable: list[sys.UnraisableHookArgs] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with socket.socket() as silent:  # listens, never accepts: the connection is made, no answer comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        body = ("head = json.dumps({'sub': 1, 'host': '127.0.0.1', 'port': PORT, 'method': 'GET', 'path': '/', "
                "'headers': {}, 'answer_s': 30}).encode()\n"
                "        os.write(fd, struct.pack('!II', len(head), 0) + head)").replace("PORT", str(port))
        iso = spawner.spawn(RAW.replace("{body}", body), {}, Limits(wall_s=1.0), "raw")
        iso.egress = Egress.of("raw", "raw", {}, frozenset({("127.0.0.1", port)}))
        try:
            result = iso.call(Request("GET", "/", {"host": "raw.example"}, b""))
        finally:
            iso.kill()
        del iso
        gc.collect()
    assert result.error is not None  # the wall limit ended it, the subrequest still waiting
    assert not [u for u in unraisable if "Event loop is closed" in repr(u.exc_value)], unraisable


SPINNER_SUPERVISOR = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tenant.isolate import IsolateSpawner, Limits, send_msg
z = IsolateSpawner(sandboxed=sys.argv[2] == "1")
z.start()
iso = z.spawn("async def fetch(request, env, ctx):\\n    while True:\\n        pass\\n", {},
              Limits(cpu_ms=600000, wall_s=600.0), "spinner")
send_msg(iso.sock, {"method": "GET", "url": "/", "headers": {}})  # it spins from now on
print(iso.pid, flush=True)
time.sleep(600)
"""


def test_a_spinning_isolate_dies_with_its_supervisor() -> None:
    """Issue 20: an isolate whose request spins (no CPU limit left to kill it) does not outlive a
    SIGKILLed supervisor (the edge): the spawner sees its control socket close and exits, and the
    isolate's parent-death signal kills it."""
    import signal
    import subprocess
    import sys
    import time

    project = str(Path(__file__).resolve().parents[2])
    supervisor = subprocess.Popen([sys.executable, "-c", SPINNER_SUPERVISOR, project, "1"], stdout=subprocess.PIPE,
                                  text=True)
    try:
        assert supervisor.stdout is not None
        pid = int(supervisor.stdout.readline())
        os.kill(pid, 0)  # spinning
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        deadline = time.monotonic() + 5.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # polled, with a deadline: the kernel delivers the signal at its pace
        alive = Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        if alive:
            os.kill(pid, signal.SIGKILL)  # the test's own cleanup of what it started
        assert not alive, f"isolate {pid} outlived its supervisor"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
