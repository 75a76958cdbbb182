"""The edge worker's HTTP front on a loopback port: routing by Host and path, keep-alive, the serving
server in every answer, 404 for unknown hosts, a hostile deployment beside a good one, atomic switch."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from core.clock import monotonic
from core.peer_auth import PeerKeys
from pop_agent.edge import Echo, Edge, HttpProtocol
from protect.limits import Peer, count
from tenant.deployment import Deployment
from tenant.isolate import DeployError, IsolateSpawner
from tenant.worker_api import KvNamespace, Request, Response, binding
from tests.unit.peers import signer

HELLO = "async def fetch(request, env, ctx):\n    return f'{env.GREETING} {request.method} {request.url}'\n"
ECHO = "async def fetch(request, env, ctx):\n    return {'status': 201, 'body': request.body[::-1]}\n"
SPIN = "async def fetch(request, env, ctx):\n    while True:\n        pass\n"


def dep(name: str, host: str, code: str, version: str = "v1", **kw: Any) -> Deployment:
    return Deployment.from_json({"name": name, "version": version, "host": host, "code": code, **kw})


class Server:
    def __init__(self) -> None:
        self.spawner = IsolateSpawner()
        self.spawner.start()
        self.edge = Edge("sjc", "sjc-s1", self.spawner)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(lambda: HttpProtocol(self.edge), "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)

    def install(self, deps: list[Deployment]) -> None:
        self.loop.call_soon_threadsafe(self.edge.install, deps)
        done = threading.Event()
        self.loop.call_soon_threadsafe(done.set)  # runs after install: the loop is FIFO
        done.wait(5)

    def stop(self) -> None:
        async def cancel_connections() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(cancel_connections(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)  # after the cancelled tasks have run: FIFO
        self.thread.join(10)
        self.loop.close()
        self.edge.close()
        self.spawner.stop()


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    s = Server()
    s.start()
    s.install([dep("hello", "a.example", HELLO, bindings={"GREETING": "hi"}),
               dep("echo", "a.example", ECHO, path_prefix="/echo"),
               dep("spin", "bad.example", SPIN)])
    yield s
    s.stop()


def request(srv: Server, host: str, path: str = "/", method: str = "GET", body: bytes | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    c = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request(method, path, body=body, headers={"Host": host})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, data, r


def test_routes_by_host_and_names_the_server(srv: Server) -> None:
    status, body, r = request(srv, "a.example", "/x?y=1")
    assert (status, body) == (200, b"hi GET /x?y=1")
    assert r.getheader("x-anylab-server") == "sjc/sjc-s1"


def test_path_prefix_and_body(srv: Server) -> None:
    assert request(srv, "a.example", "/echo/1", "POST", b"abc")[:2] == (201, b"cba")


def test_keep_alive_serves_several_requests_on_one_connection(srv: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for i in range(5):
        assert request(srv, "a.example", f"/{i}", conn=conn)[:2] == (200, f"hi GET /{i}".encode())
    conn.close()


def test_unknown_host_is_404_with_a_reason(srv: Server) -> None:
    status, body, r = request(srv, "nobody.example")
    assert status == 404 and json.loads(body)["error"] == "no_deployment"
    assert r.getheader("x-anylab-server") == "sjc/sjc-s1"


def test_hostile_deployment_does_not_affect_its_neighbour(srv: Server) -> None:
    for _ in range(2):  # a fresh isolate each time: the killed one is not reused
        status, _body, r = request(srv, "bad.example")
        assert status == 503 and r.getheader("x-anylab-error") == "cpu_limit"
        assert request(srv, "a.example")[0] == 200


def test_new_version_is_switched_to_atomically(srv: Server) -> None:
    v2 = "async def fetch(request, env, ctx):\n    return 'v2'\n"
    srv.install([dep("hello", "a.example", v2, version="v2"), dep("spin", "bad.example", SPIN)])
    assert request(srv, "a.example")[:2] == (200, b"v2")
    # echo is no longer deployed: its path now falls to the host's "/" deployment
    assert request(srv, "a.example", "/echo/1", "POST", b"ab")[:2] == (200, b"v2")


@pytest.mark.parametrize(("data", "words"), [
    ({"name": "x", "version": "1", "host": "h"}, "lacks the field 'code'"),
    ({"name": "x", "version": "1", "host": "h", "code": "def (", "max_isolates": 2}, "syntax error"),
    ({"name": "x", "version": "1", "host": "h", "code": "async def fetch(r, e, c):\n    return 1\n",
      "bindings": {"D": {"durable_object": "Register", "script": "reg"}}}, "binds its own classes only"),
    ({"name": "x", "version": "1", "host": "h", "code": HELLO, "path_prefix": "api"}, "must start with '/'"),
])
def test_malformed_deployments_are_refused(data: dict[str, Any], words: str) -> None:
    with pytest.raises(DeployError, match=words):
        Deployment.from_json(data)


def test_rate_limits_answer_429_with_retry_after_and_shedding_starts_at_p3() -> None:
    edge = Edge("sjc", "sjc-s1", IsolateSpawner(), max_inflight=10)  # the spawner is never started: nothing is served
    limited = dep("limited", "l.example", HELLO, rate_per_s=2, rate_per_min=600)
    preview = dep("preview", "p.example", HELLO, priority="P3")
    health = dep("health", "h.example", HELLO, priority="P0")
    edge.install([limited, preview, health])
    pools = {p.dep.name: p for p in edge.pools.values()}
    answers = [edge.admission(pools["limited"], 100.0) for _ in range(3)]
    assert answers[:2] == [None, None]
    assert isinstance(answers[2], Response) and answers[2].status == 429
    assert answers[2].headers["retry-after"] == "1" and answers[2].headers["x-anylab-error"] == "rate_limited"
    assert edge.admission(pools["limited"], 100.5) is None  # refilled at 2/s
    edge.inflight_by["P1"] = 9  # 90 %: Level 2
    shed = edge.admission(pools["preview"], 200.0)
    assert isinstance(shed, Response) and shed.status == 503 and shed.headers["x-anylab-error"] == "shed"
    edge.inflight_by["P1"] = 50  # far over capacity: only P0 passes
    assert edge.admission(pools["health"], 200.0) is None
    assert edge.counters["rate_limited"] == 1 and edge.counters["shed"] == 1


def test_above_the_spill_threshold_requests_go_to_the_nearest_peer_with_headroom() -> None:
    peers = [Peer("lax", "lax-s1", "10.0.0.2", 3), Peer("sea", "sea-s1", "10.0.0.3", 5)]
    edge = Edge("sjc", "sjc-s1", IsolateSpawner(), capacity_rps=10, peers=peers)
    edge.install([dep("paid", "a.example", HELLO), dep("health", "h.example", HELLO, priority="P0")])
    pools = {p.dep.name: p for p in edge.pools.values()}
    for i in range(8):  # 8 requests in the last second: 80 % of 10/s
        edge.windows["P1"] = count(edge.windows["P1"], 100.0 + i * 0.01)
    assert edge.admission(pools["paid"], 100.1) is None  # no peer heard from: served here (80 % < 100 %)
    edge.heard("10.0.0.3", (0.0, 0.2, 0.2, 0.2), 100.0)
    edge.heard("10.0.0.2", (0.0, 0.85, 0.9, 0.9), 100.0)  # the nearer one is itself over the threshold
    assert edge.admission(pools["paid"], 100.1) == 1
    assert edge.admission(pools["health"], 100.1) is None  # P0 stays
    assert edge.admission(pools["paid"], 100.1, spilled_in=True) is None  # one hop only
    assert edge.admission(pools["paid"], 101.5) is None  # the reports are stale: nowhere to spill
    assert edge.utilisation(101.5) == 0.0


def test_bad_priority_is_refused() -> None:
    with pytest.raises(DeployError, match="priority"):
        dep("x", "x.example", HELLO, priority="P9")


def test_degradation_level_from_the_servers_signals(tmp_path: Any) -> None:
    edge = Edge("sjc", "sjc-s1", IsolateSpawner(), max_inflight=10, protect_file=tmp_path / "protect.json")
    prom = tmp_path / "kv.prom"
    prom.write_text('# HELP x\nanylab_kv_replica_lag_seconds{server="s"} 2.0\n'
                    'anylab_kv_queue_depth{server="s"} 0\nanylab_kv_master_reachable{server="s"} 1\n')
    assert edge.degradation(prom, True).level == 0
    prom.write_text('anylab_kv_replica_lag_seconds{server="s"} 900\nanylab_kv_master_reachable{server="s"} 0\n')
    assert edge.degradation(prom, True).level == 1
    edge.inflight_by["P2"] = 10
    assert edge.degradation(prom, False).level == 4
    edge.write_protect(edge.degradation(None, True))
    written = json.loads((tmp_path / "protect.json").read_text())
    assert written["level"] == 2 and "2" in written["reasons"]


def test_a_spilled_request_is_served_by_the_peer_over_one_kept_alive_connection() -> None:
    busy, peer = Server(), Server()
    busy.start()
    peer.start()
    try:
        for srv in (busy, peer):
            srv.install([dep("hello", "a.example", HELLO, bindings={"GREETING": "hi"})])
        busy.edge.capacity_rps, busy.edge.spill_port = 10.0, peer.port
        busy.edge.peers = [Peer("lax", "lax-s1", "127.0.0.1", 3)]
        peer.edge.pop, peer.edge.server = "lax", "lax-s1"
        busy.edge.windows["P1"] = count(busy.edge.windows["P1"], monotonic(), 9)  # 90 % of 10/s
        answers = []
        for _ in range(3):
            busy.edge.heard("127.0.0.1", (0.0, 0.0, 0.0, 0.0), monotonic())
            answers.append(request(busy, "a.example"))
        assert [(status, body) for status, body, _r in answers] == [(200, b"hi GET /")] * 3
        assert {r.getheader("x-anylab-server") for _s, _b, r in answers} == {"lax/lax-s1"}
        assert {r.getheader("x-anylab-spilled-by") for _s, _b, r in answers} == {"sjc/sjc-s1"}
        assert busy.edge.counters["spilled_out"] == 3 and peer.edge.counters["spilled_in"] == 3
        assert len(busy.edge.spill_pool.idle[("127.0.0.1", peer.port)]) == 1  # one connection, kept
    finally:
        peer.stop()  # first: its spawner, forked later, holds a copy of the busy spawner's control socket
        busy.stop()


def test_the_deployments_of_one_account_share_its_request_limit() -> None:
    edge = Edge("sjc", "sjc-s1", IsolateSpawner(), account_rps=3)
    edge.install([dep("a", "a.example", HELLO, account="acme"), dep("b", "b.example", HELLO, account="acme"),
                  dep("c", "c.example", HELLO)])
    pools = {p.dep.name: p for p in edge.pools.values()}
    answers = [edge.admission(pools[n], 10.0) for n in ("a", "b", "a", "b")]
    assert answers[:3] == [None] * 3
    assert isinstance(answers[3], Response) and answers[3].status == 429 and b"acme" in answers[3].body
    assert edge.admission(pools["c"], 10.0) is None  # its own account (its name)
    assert edge.account_of("a") == "acme" and edge.account_of("c") == "c"
    kv = binding(dep("k", "k.example", HELLO, account="acme", bindings={"KV": {"kv_namespace": "n"}}).bindings["KV"])
    assert isinstance(kv, KvNamespace) and kv.account == "acme"  # sent to the replica, which limits KV calls


def test_the_do_router_limits_an_accounts_do_requests() -> None:
    from pop_agent.do_router import DoRouter

    router = DoRouter(("127.0.0.1", 9), lambda script: "v1", signer(PeerKeys.make(), "do-router/s"),
                      lambda script: frozenset({"R"}), deadline_s=0.05, account_rps=1.0)
    call = json.dumps({"key": "reg/R/x", "request": {}}).encode()

    async def two() -> list[int]:
        return [(await router.handle(Request("POST", "/v1/do", {}, call))).status for _ in range(2)]

    assert asyncio.run(two()) == [503, 429]  # the first got through to (no) directory; the second is over 1/s


@pytest.mark.parametrize(("key", "error"), [("reg/Other/x", "no_such_class"), ("reg/R", "bad_request"),
                                            ("reg/not a class/x", "bad_request"), ("nope/R/x", "no_such_script")])
def test_the_do_router_takes_only_a_class_the_script_declares(key: str, error: str) -> None:
    """Issue 19: the router runs an object only of a class its script's deployment declares, whatever
    reached it (the edge's egress check is the first line, this the second)."""
    from pop_agent.do_router import DoRouter

    router = DoRouter(("127.0.0.1", 9), lambda script: "v1" if script == "reg" else None,
                      signer(PeerKeys.make(), "do-router/s"), lambda script: frozenset({"R"}), deadline_s=0.05)
    answer = asyncio.run(router.handle(Request("POST", "/v1/do", {}, json.dumps({"key": key, "request": {}}).encode())))
    assert answer.status in (400, 404) and json.loads(answer.body)["error"] == error


class _Sent:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)


def test_echo_answers_plain_probes_without_json_and_load_polls_with_utilisation() -> None:
    echo = Echo(Edge("sjc", "sjc-s1", IsolateSpawner()))
    sent = _Sent()
    echo.connection_made(sent)  # type: ignore[arg-type]
    echo.datagram_received(json.dumps({"seq": 1234}).encode(), ("10.2.0.1", 5000))
    echo.datagram_received(json.dumps({"seq": 7, "load": 1}).encode(), ("10.1.0.3", 5000))
    echo.datagram_received(b"not a probe", ("10.2.0.1", 5000))
    plain, load = (json.loads(x) for x in sent.sent)
    assert plain == {"pop": "sjc", "server": "sjc-s1", "seq": 1234}
    assert load["seq"] == 7 and load["u"] == [0.0, 0.0, 0.0, 0.0]


def test_a_load_poll_is_answered_alike_on_the_fast_and_the_json_path() -> None:
    edge = Edge("sjc", "sjc-s1", IsolateSpawner(), capacity_rps=100.0)
    now = monotonic()
    edge.windows["P1"] = count(edge.windows["P1"], now, 30)
    edge.windows["P3"] = count(edge.windows["P3"], now, 7)
    echo = Echo(edge)
    sent = _Sent()
    echo.connection_made(sent)  # type: ignore[arg-type]
    echo.datagram_received(b'{"seq": 8, "load": 1}', ("10.1.0.3", 5000))  # as PeerWatch sends it
    echo.datagram_received(b'{"load": 1, "seq": 8}', ("10.1.0.3", 5000))  # any other JSON spelling
    fast, slow = (json.loads(x) for x in sent.sent)
    assert fast == slow and fast["u"] == [0.0, 0.3, 0.3, 0.37]
