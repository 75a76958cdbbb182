"""The control plane's API and a PoP's syncer against it, on loopback and Unix sockets (no root): one real
etcd member (Debian's, started by the test) holds the state; two regions' APIs share it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control_plane.client import Client, ControlPlaneError
from control_plane.server import make_app, make_node
from control_plane.store import PREFIX, Pop
from core.daemon import write_private
from core.peer_auth import PeerKeys
from core.wait import wait_for
from lab.run.etcd import CA_FILE, CERT_FILE, KEY_FILE, make_tls, tls_context
from pop_agent.sync import LocalStore, Syncer
from tests.unit.peers import auth_block, signer

POPS = [Pop("sjc", "na", ("sjc-s1", "sjc-s2")), Pop("fra", "eu", ("fra-s1",)), Pop("sin", "apac", ("sin-s1",))]
TOKENS = {"admin": "admin-secret"}
KEYS = PeerKeys.make()
HELLO = "async def fetch(request, env, ctx):\n    return 'hello ' + env.WHO\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One etcd member on loopback for the module; every test starts with the control plane's keys gone."""
    root = tmp_path_factory.mktemp("etcd")
    client_port, peer_port = free_port(), free_port()
    url = f"https://127.0.0.1:{client_port}"
    tls = make_tls([("t", "127.0.0.1")])["t"]
    for name, text in ((CA_FILE, tls.ca), (CERT_FILE, tls.cert), (KEY_FILE, tls.key)):
        write_private(root / name, text)
    certs = ["--cert-file", str(root / CERT_FILE), "--key-file", str(root / KEY_FILE), "--trusted-ca-file",
             str(root / CA_FILE), "--client-cert-auth"]
    proc = subprocess.Popen(["etcd", "--name", "t", "--data-dir", str(root / "data"), "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"t=http://127.0.0.1:{peer_port}", *certs, "--logger", "zap",
                             "--log-outputs", str(root / "etcd.log")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ETCD_TLS.update({"ca": str(root / CA_FILE), "cert": str(root / CERT_FILE), "key": str(root / KEY_FILE)})

    def answers() -> bool:
        try:
            return b"etcdserver" in urllib.request.urlopen(url + "/version", timeout=1,
                                                           context=tls_context(root)).read()
        except OSError:
            return False

    try:
        wait_for(answers, timeout=20, what="etcd to answer", interval=0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


#: The test etcd's CA and the client certificate the regions use.
ETCD_TLS: dict[str, str] = {}


def wipe(url: str) -> None:
    key = base64.b64encode(PREFIX.encode()).decode()
    end = base64.b64encode(PREFIX[:-1].encode() + bytes([ord(PREFIX[-1]) + 1])).decode()
    req = urllib.request.Request(url + "/v3/kv/deleterange", json.dumps({"key": key, "range_end": end}).encode(),
                                 {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5, context=tls_context(Path(ETCD_TLS["ca"]).parent)).read()


class ControlPlane:
    """One region's real API in a thread: TCP on 127.0.0.1 (for syncers and the other region) and a Unix
    socket (for the client)."""

    def __init__(self, root: Path, region: str, etcd: str, port: int, peers: list[dict[str, Any]],
                 regions: int) -> None:
        self.root, self.region, self.port = root, region, port
        root.mkdir(parents=True, exist_ok=True)
        (root / "admin.token").write_text(TOKENS["admin"] + "\n")
        self.cfg = {"region": region, "node": f"cp-{region}", "state_dir": str(root / "state"),
                    "socket": str(root / "api.sock"), "listen": ["127.0.0.1", port],
                    "tokens": {"admin": str(root / "admin.token")},
                    "auth": auth_block(KEYS, root / "cp-", f"cp/{region}", ("pop", "do-host", "cp")),
                    "etcd": [etcd], "etcd_tls": dict(ETCD_TLS), "peers": peers, "regions": regions,
                    "pops": [{"name": p.name, "region": p.region, "servers": list(p.servers)} for p in POPS]}
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        started = threading.Event()
        self.done = asyncio.Event()

        async def serve() -> None:
            async with aiohttp.ClientSession() as session:
                self.node = make_node(self.cfg, session)
                runner = web.AppRunner(make_app(self.node), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
                await web.UnixSite(runner, str(self.root / "api.sock")).start()
                tasks = [asyncio.create_task(c) for c in (self.node.shared.follow(), self.node.shared.check_quorum(),
                                                          self.node.repair())]
                started.set()
                await self.done.wait()
                for t in tasks:
                    t.cancel()
                await runner.cleanup()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        assert started.wait(10)
        wait_for(lambda: self.node.shared.serving, timeout=10, what=f"cp-{self.region} to serve")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.done.set)
        assert self.thread is not None
        self.thread.join(10)
        (self.root / "api.sock").unlink(missing_ok=True)
        self.loop = asyncio.new_event_loop()


def regions(tmp_path: Path, etcd: str, names: list[str]) -> list[ControlPlane]:
    ports = {name: free_port() for name in names}
    return [ControlPlane(tmp_path / f"cp-{name}", name, etcd, ports[name],
                         [{"region": o, "address": "127.0.0.1", "port": ports[o]} for o in names if o != name],
                         len(names)) for name in names]


@pytest.fixture
def cp(tmp_path: Path, etcd: str) -> Iterator[ControlPlane]:
    wipe(etcd)
    (server,) = regions(tmp_path, etcd, ["na"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def two(tmp_path: Path, etcd: str) -> Iterator[list[ControlPlane]]:
    """Two regions' control planes sharing the etcd member, replicating artifacts to each other."""
    wipe(etcd)
    servers = regions(tmp_path, etcd, ["na", "eu"])
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        if s.thread is not None and s.thread.is_alive():
            s.stop()


def client(cp: ControlPlane | list[ControlPlane], token: str = TOKENS["admin"]) -> Client:
    return Client([c.root for c in cp] if isinstance(cp, list) else cp.root, token, timeout=5)


def test_upload_is_content_hashed_and_immutable(cp: ControlPlane) -> None:
    c = client(cp)
    first = c.upload("hello", {"code": HELLO, "host": "Hello.Example", "bindings": {"WHO": "a"}})
    again = c.upload("hello", {"code": HELLO, "host": "hello.example", "bindings": {"WHO": "a"}})
    other = c.upload("hello", {"code": HELLO, "host": "hello.example", "bindings": {"WHO": "b"}})
    assert first["new"] and not again["new"] and first["version"] == again["version"]
    assert other["version"] != first["version"] and first["sha256"].startswith(first["version"])
    assert len(first["version"]) == 12


@pytest.mark.parametrize(("token", "status"), [("", 401), ("wrong", 401)])
def test_tokens_are_checked(cp: ControlPlane, token: str, status: int) -> None:
    with pytest.raises(ControlPlaneError) as err:
        client(cp, token).upload("hello", {"code": HELLO, "host": "h.example"})
    assert err.value.status == status


def _raw(cp: ControlPlane, method: str, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", cp.port, timeout=5)
    try:
        conn.request(method, target, body=body, headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_what_a_pop_asks_must_be_signed_by_that_server_once(cp: ControlPlane) -> None:
    """Issue 19: the PoP paths take a server's signed request — not unsigned, not another lab's key, not
    the same request twice, not one changed on the way, not one server reporting for another; a peer on
    an admin path is 403. Every refusal is counted (``GET /v1/status``) and a good request still works."""
    report = json.dumps({"server": "sjc-s1", "pop": "sjc", "wait": 0}).encode()
    me, other_lab = signer(KEYS, "pop/sjc-s1"), signer(PeerKeys.make(), "pop/sjc-s1")
    authority = f"127.0.0.1:{cp.port}"
    good = me.headers("POST", authority, "/v1/sync", report)
    assert _raw(cp, "POST", "/v1/sync", report, good)[0] == 200
    tampered = report.replace(b'"wait": 0', b'"wait": 9')
    cases = {
        "missing": (report, {}, 401),
        "bad_signature": (report, other_lab.headers("POST", authority, "/v1/sync", report), 401),
        "replayed": (report, good, 401),
        "tampered": (tampered, me.headers("POST", authority, "/v1/sync", report), 401),
        "stale": (report, me.headers("POST", authority, "/v1/sync", report, t_ms=1_000), 401),
        "other server": (json.dumps({"server": "sjc-s2", "pop": "sjc"}).encode(),
                         me.headers("POST", authority, "/v1/sync",
                                    json.dumps({"server": "sjc-s2", "pop": "sjc"}).encode()), 403),
    }
    for what, (body, headers, status) in cases.items():
        got, answer = _raw(cp, "POST", "/v1/sync", body, headers)
        assert got == status, f"{what}: {got} {answer[:200]!r}"
    admin_path = me.headers("GET", authority, "/v1/deployments", b"")
    assert _raw(cp, "GET", "/v1/deployments", b"", admin_path)[0] == 403
    refused = client(cp).call("GET", "/v1/status")["auth_refused"]
    assert refused["missing"] == 0 and refused["bad_token"] == 1  # no header: taken as the operator's, no token
    assert refused["bad_signature"] == 2 and refused["replayed"] == 1 and refused["stale"] == 1
    assert refused["not_allowed"] == 1
    again = me.headers("POST", authority, "/v1/sync", report)
    assert _raw(cp, "POST", "/v1/sync", report, again)[0] == 200


def test_a_kv_namespace_is_bound_by_one_account_only(cp: ControlPlane) -> None:
    c = client(cp)
    mine = {"code": HELLO, "host": "a.example", "account": "acme", "bindings": {"KV": {"kv_namespace": "acme-data"}}}
    c.upload("a", mine)
    c.upload("b", {**mine, "host": "b.example"})  # the same account may bind it again
    with pytest.raises(ControlPlaneError) as err:
        c.upload("evil", {**mine, "host": "e.example", "account": "mallory"})
    assert err.value.status == 400 and "belongs to account 'acme'" in str(err.value)


@pytest.mark.parametrize(("upload", "words"), [
    ({"host": "h.example"}, "'code' is missing"),
    ({"code": HELLO}, "'host' is missing"),
    ({"code": HELLO, "host": "not a host"}, "not a host name"),
    ({"code": HELLO, "host": "h.example", "colour": 1}, "unknown field(s) colour"),
    ({"code": "async def fetch(:\n", "host": "h.example"}, "syntax error at line 1"),
    ({"code": "x = 1\n" * (11 * 1024 * 1024 // 6), "host": "h.example"}, "the limit is 10 MB (code_size)"),
    ({"code": HELLO, "host": "h.example", "limits": {"cpu_ms": -1}}, "positive"),
    ({"code": HELLO, "host": "h.example", "bindings": {"not ok": 1}}, "identifiers"),
    ([1, 2], "JSON object"),
])
def test_malformed_uploads_are_400_with_the_reason(cp: ControlPlane, upload: Any, words: str) -> None:
    with pytest.raises(ControlPlaneError) as err:
        client(cp).call("POST", "/v1/workers/hello", upload)
    assert err.value.status == 400 and words in str(err.value)


def test_body_that_is_not_json_is_400(cp: ControlPlane) -> None:
    import http.client
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(cp.root / "api.sock"))
    conn = http.client.HTTPConnection("control")
    conn.sock = sock
    conn.request("POST", "/v1/workers/hello", body=b"{nope", headers={"Authorization": "Bearer admin-secret"})
    resp = conn.getresponse()
    assert resp.status == 400 and "not JSON" in json.loads(resp.read())["error"]


def test_deploy_to_a_region_then_everywhere_then_roll_back(cp: ControlPlane) -> None:
    c = client(cp)
    v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    v2 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "2"}})["version"]
    assert c.deploy("hello", v1)["placement"] == {"sjc": v1, "fra": v1, "sin": v1}
    reply = c.deploy("hello", v2, regions=["eu"])
    assert reply["placement"] == {"sjc": v1, "fra": v2, "sin": v1} and set(reply["servers"]) == {
        "sjc-s1", "sjc-s2", "fra-s1", "sin-s1"}
    assert c.rollback("hello")["placement"] == {"sjc": v1, "fra": v1, "sin": v1}
    assert c.rollback("hello")["placement"] == {}  # before the first deploy: not deployed
    with pytest.raises(ControlPlaneError, match="no earlier deployment") as err:
        c.rollback("hello")
    assert err.value.status == 409
    listing = c.deployments()
    assert listing["workers"]["hello"]["versions"] == sorted([v1, v2])


def test_a_halted_region_keeps_what_it_runs_until_the_halt_is_lifted(cp: ControlPlane) -> None:
    c = client(cp)
    v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    v2 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "2"}})["version"]
    c.deploy("hello", v1)
    c.call("POST", "/v1/regions/eu/halt", {"halted": True})
    assert c.deploy("hello", v2)["placement"] == {"sjc": v2, "fra": v1, "sin": v2}  # eu (fra) left as it was
    with pytest.raises(ControlPlaneError, match="halted") as err:
        c.deploy("hello", v2, regions=["eu"])
    assert err.value.status == 409
    with pytest.raises(ControlPlaneError, match="unknown region 'mars'"):
        c.call("POST", "/v1/regions/mars/halt", {"halted": True})
    c.call("POST", "/v1/regions/eu/halt", {"halted": False})
    assert c.deploy("hello", v2, regions=["eu"])["placement"] == {"sjc": v2, "fra": v2, "sin": v2}


@pytest.mark.parametrize(("args", "status", "words"), [
    ({"version": "000000000000"}, 404, "upload the worker first"),
    ({"version": "V", "regions": ["mars"]}, 400, "unknown region 'mars'; there are: apac, eu, na"),
    ({"version": "V", "pops": ["lhr"]}, 400, "unknown PoP 'lhr'"),
])
def test_bad_deploys_are_refused(cp: ControlPlane, args: dict[str, Any], status: int, words: str) -> None:
    c = client(cp)
    version = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    body = {k: (version if v == "V" else v) for k, v in args.items()}
    with pytest.raises(ControlPlaneError) as err:
        c.call("POST", "/v1/deployments/hello", body)
    assert err.value.status == status and words in str(err.value)
    with pytest.raises(ControlPlaneError, match="belongs to worker 'hello'"):
        c.deploy("other", version)


def test_state_survives_a_restart(cp: ControlPlane) -> None:
    c = client(cp)
    v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    c.deploy("hello", v1, pops=["sjc"])
    cp.stop()
    with pytest.raises(ControlPlaneError, match="it is down: deployed workers keep serving"):
        c.deployments()
    cp.start()
    assert c.deployments()["workers"]["hello"]["placement"] == {"sjc": v1}


class Installed:
    def __init__(self) -> None:
        self.sets: list[dict[str, str]] = []

    def __call__(self, deployments: list[Any]) -> None:
        self.sets.append({d.name: d.version for d in deployments})


def run_syncer(cp: ControlPlane | list[ControlPlane], store: LocalStore, installed: Installed,
               **kw: Any) -> tuple[Syncer, Any]:
    """A syncer for sjc-s1 on its own loop in a thread; returns it and a stop function."""
    cps = cp if isinstance(cp, list) else [cp]
    syncer = Syncer(store, installed, controls=[("127.0.0.1", c.port) for c in cps], signer=signer(KEYS, "pop/sjc-s1"),
                    pop="sjc", server="sjc-s1", poll_wait=1.0, **kw)
    loop = asyncio.new_event_loop()

    async def until_cancelled() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await syncer.run()

    task = loop.create_task(until_cancelled())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        loop.close()

    return syncer, stop


def test_syncer_applies_deploys_and_serves_its_last_good_set_while_the_control_plane_is_down(
        cp: ControlPlane, tmp_path: Path) -> None:
    c = client(cp)
    store, installed = LocalStore(tmp_path / "pop"), Installed()
    syncer, stop = run_syncer(cp, store, installed)
    try:
        v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
        reply = c.deploy("hello", v1, pops=["sjc"])
        # The server reports it (other servers never synced here: only wait for sjc-s1).
        wait_for(lambda: c.deployments()["servers"].get("sjc-s1", {}).get("applied") == {"hello": v1},
                 timeout=10, what="sjc-s1 to report v1")
        assert installed.sets[-1] == {"hello": v1} and store.current() == {"hello": v1}
        assert c.deployments()["servers"]["sjc-s1"]["t_applied"] >= reply["t"]
        cp.stop()
        wait_for(lambda: syncer.state.reachable is False, timeout=10, what="the syncer to notice")
        assert store.current() == {"hello": v1} and installed.sets[-1] == {"hello": v1}  # Level 4
        assert json.loads((store.root / "sync.json").read_text())["reachable"] is False
        cp.start()
        v2 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "2"}})["version"]
        c.deploy("hello", v2)
        wait_for(lambda: installed.sets[-1] == {"hello": v2}, timeout=10, what="v2 installed after the outage")
    finally:
        stop()
    # A restarted server starts from the disk's last good set without asking anyone.
    assert [d.version for d in LocalStore(tmp_path / "pop").load(store.current())] == [v2]


def test_an_artifact_whose_only_copy_is_corrupt_is_not_served_and_the_old_set_kept(
        cp: ControlPlane, tmp_path: Path) -> None:
    c = client(cp)
    v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    c.deploy("hello", v1)
    store, installed = LocalStore(tmp_path / "pop"), Installed()
    syncer, stop = run_syncer(cp, store, installed, retry_delays=(0.01, 0.02, 0.04))
    try:
        wait_for(lambda: installed.sets and installed.sets[-1] == {"hello": v1}, timeout=10, what="v1")
        uploaded = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "2"}})
        v2 = uploaded["version"]
        # The region's only copy corrupted (one region: no other to repair it from).
        (cp.root / "state" / "artifacts" / uploaded["sha256"]).write_bytes(b'{"tampered": true}')
        attempts = syncer.state.fetch_attempts
        c.deploy("hello", v2)
        wait_for(lambda: syncer.state.error is not None, timeout=10, what="the refusal")
        assert "404" in str(syncer.state.error) and "held by no region" in str(syncer.state.error)
        assert syncer.state.fetch_attempts - attempts >= 4  # the first try and 3 retries
        assert store.current() == {"hello": v1} and installed.sets[-1] == {"hello": v1}
        assert not store.has(v2)
    finally:
        stop()


def test_an_upload_is_acknowledged_once_two_regions_hold_it_and_a_lost_copy_is_repaired(
        two: list[ControlPlane]) -> None:
    na, eu = two
    uploaded = client(na).upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})
    sha = uploaded["sha256"]
    assert (na.root / "state/artifacts" / sha).exists() and (eu.root / "state/artifacts" / sha).exists()
    (eu.root / "state/artifacts" / sha).unlink()  # a wiped store: eu repairs it from na
    wait_for(lambda: (eu.root / "state/artifacts" / sha).exists(), timeout=5, what="eu to repair its copy")
    assert eu.node.repaired >= 1
    eu.stop()
    with pytest.raises(ControlPlaneError) as err:  # one region only: not acknowledged, not in etcd
        client(na).upload("other", {"code": HELLO, "host": "o.example", "bindings": {"WHO": "2"}})
    assert err.value.status == 503 and "reached 1 region(s), 2 are needed" in str(err.value)
    assert "other" not in client(na).deployments()["uploaded"]


def test_a_request_sent_again_to_another_region_is_answered_not_done_twice(two: list[ControlPlane]) -> None:
    na, eu = two
    c = client(two)
    v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    first = c.call_one(na.root, "POST", "/v1/deployments/hello", {"version": v1}, request_id="req-00000001")
    again = c.call_one(eu.root, "POST", "/v1/deployments/hello", {"version": v1}, request_id="req-00000001")
    assert again["repeated"] and again["revision"] == first["revision"] and again["region"] == "na"
    assert c.deployments()["workers"]["hello"]["deploys"] == 1


def test_regions_writing_the_same_worker_at_once_lose_nothing(two: list[ControlPlane]) -> None:
    """Compare-and-swap: 10 deploys to different PoPs through both regions at once all land in the history."""
    na, eu = two
    c = client(two)
    v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})["version"]
    v2 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "2"}})["version"]
    errors: list[Exception] = []

    def deploy(region: ControlPlane, version: str, pop: str) -> None:
        try:
            for _ in range(5):
                client(region).deploy("hello", version, pops=[pop])
        except ControlPlaneError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deploy, args=(na, v1, "sjc")),
               threading.Thread(target=deploy, args=(eu, v2, "fra"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    info = c.deployments()["workers"]["hello"]
    assert info["deploys"] == 10 and info["placement"] == {"sjc": v1, "fra": v2}


def test_a_syncer_fails_over_to_another_region_and_comes_back_home(two: list[ControlPlane], tmp_path: Path) -> None:
    na, eu = two
    c = client(two)
    store, installed = LocalStore(tmp_path / "pop"), Installed()
    syncer, stop = run_syncer(two, store, installed, retry_delays=(0.01, 0.02, 0.04))
    try:
        wait_for(lambda: syncer.state.following == f"127.0.0.1:{na.port}" and syncer.state.reachable, timeout=10,
                 what="sjc-s1 following na")
        v1 = c.upload("hello", {"code": HELLO, "host": "h.example", "bindings": {"WHO": "1"}})
        na.stop()  # its home region's API is gone: the next poll fails, retried 3 times, then eu
        c.deploy("hello", v1["version"])
        assert c.used == eu.root  # the operator's client passed over na too
        wait_for(lambda: installed.sets and installed.sets[-1] == {"hello": v1["version"]}, timeout=10,
                 what="v1 from eu")
        assert syncer.state.following == f"127.0.0.1:{eu.port}" and syncer.state.failovers == 1
        assert syncer.state.reachable  # another region answered: not Level 4
        na.start()
        wait_for(lambda: syncer.state.following == f"127.0.0.1:{na.port}", timeout=10, what="sjc-s1 back home")
    finally:
        stop()


def test_etcd_takes_no_client_without_the_labs_certificate(etcd: str) -> None:
    """What a PoP server, which can route to a control plane node, would try: the CA trusted but no
    certificate of its own, or one from another lab's CA — etcd refuses both at the handshake."""
    import ssl

    no_cert = ssl.create_default_context(cafile=ETCD_TLS["ca"])
    other = make_tls([("x", "127.0.0.1")])["x"]
    other_dir = Path(ETCD_TLS["ca"]).parent / "other"
    other_dir.mkdir(exist_ok=True)
    for name, text in ((CA_FILE, other.ca), (CERT_FILE, other.cert), (KEY_FILE, other.key)):
        write_private(other_dir / name, text)
    wrong_ca = ssl.create_default_context(cafile=ETCD_TLS["ca"])
    wrong_ca.load_cert_chain(str(other_dir / CERT_FILE), str(other_dir / KEY_FILE))
    for context in (no_cert, wrong_ca):
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            urllib.request.urlopen(etcd + "/v3/kv/range", b'{"key": "Lw=="}', timeout=5, context=context).read()
    good = urllib.request.urlopen(etcd + "/v3/kv/range", b'{"key": "Lw=="}', timeout=5,
                                  context=tls_context(Path(ETCD_TLS["ca"]).parent))
    assert good.status == 200
