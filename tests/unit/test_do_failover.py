"""Durable Objects end to end on loopback (no root): directory, three region hosts, a PoP's DO router and
the example worker; owner crash, partition and heal, sync vs async shipping, a linearizable history."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from core.clock import monotonic
from core.peer_auth import PeerKeys
from durable.directory_service import Directory
from durable.directory_service import make_app as directory_app
from durable.history import Definite, Recorder
from durable.host_service import Host, Refused
from durable.host_service import make_app as host_app
from durable.linearizability import check
from durable.storage import Fenced
from pop_agent.do_router import DoRouter
from pop_agent.edge import HttpProtocol
from tenant.isolate import IsolateSpawner
from tenant.worker_api import DurableObjectNamespace, Request, Response
from tests.unit.peers import auth_block, signer

KEYS = PeerKeys.make()
#: Where the hosts run the objects' code: the sandboxed spawner of this module (tests.unit.conftest).
SPAWNERS: list[IsolateSpawner] = []


@pytest.fixture(autouse=True, scope="module")
def _isolates(spawner: IsolateSpawner) -> Iterator[None]:
    SPAWNERS.append(spawner)
    yield
    SPAWNERS.clear()

CODE = (Path(__file__).parents[2] / "examples" / "do_register.py").read_text()
LEASE_S, RENEW_S, MARGIN_S = 0.4, 0.05, 0.1
#: A hostile Durable Object class: what its code can reach from its host.
SNOOP = """

class Snoop:
    def __init__(self, state, env):
        self.storage = state.storage

    async def fetch(self, request):
        import json, os, socket
        out = {}
        for path in json.loads(request.body)["paths"]:
            try:
                open(path, "rb").read()
                out[path] = "read"
            except OSError as exc:
                out[path] = type(exc).__name__
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            out["raw socket"] = "opened"
        except OSError as exc:
            out["raw socket"] = type(exc).__name__
        try:
            os.kill(1, 0)
            out["signal"] = "sent"
        except OSError as exc:
            out["signal"] = type(exc).__name__
        out["uid"] = os.getuid()
        await self.storage.put("n", (await self.storage.get("n") or 0) + 1)
        async with self.storage.transaction() as tx:
            tx.put("m", await tx.get("n"))
        out["stored"] = [await self.storage.get("n"), await self.storage.get("m")]
        return json.dumps(out)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """Everything on one event loop; ``crash``/``partition``/``heal`` a region's host."""

    def __init__(self, tmp: Path, mode: str = "sync", regions: tuple[str, ...] = ("a", "b", "c"),
                 snapshot_s: float = 3600.0) -> None:
        self.tmp, self.mode, self.regions, self.snapshot_s = tmp, mode, regions, snapshot_s
        self.ports = {r: free_port() for r in regions}
        self.dport, self.rport = free_port(), free_port()
        self.runners: dict[str, web.AppRunner] = {}
        self.tasks: dict[str, list[asyncio.Task[None]]] = {}
        self.hosts: dict[str, Host] = {}
        namespace: dict[str, Any] = {"Response": Response}
        exec(CODE, namespace)
        self.fetch = namespace["fetch"]
        self.env = type("Env", (), {"REG": DurableObjectNamespace("reg", "Register", self.rport)})()

    async def _site(self, name: str, app: web.Application, port: int) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners[name] = runner

    async def start(self) -> None:
        self.directory = Directory({"regions": {r: ["127.0.0.1", p] for r, p in self.ports.items()},
                                    "listen": ["127.0.0.1", self.dport],
                                    "auth": auth_block(KEYS, self.tmp / "keys" / "dir-", None,
                                                       ("do-host", "do-router")),
                                    "lease_s": LEASE_S, "renew_s": RENEW_S, "margin_s": MARGIN_S,
                                    "state": str(self.tmp / "directory.json"),
                                    "events": str(self.tmp / "directory-events.jsonl")})
        await self._site("directory", directory_app(self.directory), self.dport)
        self.tasks["directory"] = [asyncio.create_task(self.directory.watch())]
        for r in self.regions:
            await self.start_host(r)
        router = self.router = DoRouter(("127.0.0.1", self.dport), lambda script: "v1",
                                        signer(KEYS, "do-router/pop-s1"),
                                        lambda script: frozenset({"Register", "Snoop"}))
        self.router_server = await asyncio.get_running_loop().create_server(
            lambda: HttpProtocol(router), "127.0.0.1", self.rport)

    async def start_host(self, r: str) -> None:
        host = Host({"region": r, "data_dir": str(self.tmp / r), "directory": ["127.0.0.1", self.dport],
                     "listen": ["127.0.0.1", self.ports[r]],
                     "auth": auth_block(KEYS, self.tmp / "keys" / f"{r}-", f"do-host/{r}", ("do-router", "do-host")),
                     "control": [["127.0.0.1", 9]], "mode": self.mode, "renew_s": RENEW_S,
                     "snapshot_s": self.snapshot_s,
                     "events": str(self.tmp / f"{r}-events.jsonl")}, SPAWNERS[0])
        host.open()
        host.code["v1"] = {"name": "reg", "code": CODE + SNOOP}
        self.hosts[r] = host
        await self._site(r, host_app(host), self.ports[r])
        self.tasks[r] = [asyncio.create_task(host.keep_lease()), asyncio.create_task(host.snapshots())]
        await host.renew()

    async def crash(self, r: str) -> None:
        for t in self.tasks.pop(r):
            t.cancel()
        await self.runners.pop(r).cleanup()
        for _version, runtime in self.hosts[r].runtimes.values():  # its isolates die with it (PDEATHSIG)
            runtime.close()

    def partition(self, r: str) -> None:
        """Cut the host off from the directory only: PoPs and peers still reach it."""
        self.hosts[r].directory = ("127.0.0.1", free_port())

    def heal(self, r: str) -> None:
        self.hosts[r].directory = ("127.0.0.1", self.dport)

    async def op(self, name: str, f: str, value: Any = None, hint: str | None = None) -> dict[str, Any]:
        url = f"/do/{name}" + (f"?hint={hint}" if hint else "")
        resp = await self.fetch(Request("POST", url, {}, json.dumps({"f": f, "value": value}).encode()),
                                self.env, None)
        body = json.loads(resp["body"])
        return {"status": resp["status"], **body}

    async def stop(self) -> None:
        self.router_server.close()
        for tasks in self.tasks.values():
            for t in tasks:
                t.cancel()
        for host in self.hosts.values():
            await host.close()
        for runner in self.runners.values():
            await runner.cleanup()


def run(tmp: Path, scenario: Any, mode: str = "sync", snapshot_s: float = 3600.0) -> Any:
    async def main() -> Any:
        cluster = Cluster(tmp, mode, snapshot_s=snapshot_s)
        await cluster.start()
        try:
            return await scenario(cluster)
        finally:
            await cluster.stop()

    return asyncio.run(main())


def test_owner_crash_loses_no_acknowledged_write(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> tuple[list[Any], float]:
        for i in range(1, 21):
            assert (await c.op("x", "write", i, hint="a"))["owner"] == "a"
        backup = c.directory.state.objects[c.env.REG.get(c.env.REG.id_from_name("x")).key].backup
        await c.crash("a")
        t0 = monotonic()
        answer = await c.op("x", "read")
        return [answer, backup], monotonic() - t0

    [answer, backup], took = run(tmp_path, scenario)
    assert backup in ("b", "c")
    assert answer == {"status": 200, "value": 20, "version": 20, "owner": backup, "epoch": 2}
    # The router waits out the lease (0.4 s) and the margin (0.1 s), then retries every 0.05 s; 0.5 s of
    # margin for the new owner's renewal (0.05 s), the directory's check tick and a busy loopback.
    assert took < LEASE_S + MARGIN_S + 0.5


def test_the_routers_breaker_opens_on_a_dead_owner_and_a_returned_host_starts_closed(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        assert (await c.op("x", "write", 1, hint="a"))["owner"] == "a"
        await c.crash("a")
        moved = await c.op("x", "read")  # follows the failover; the calls to the dead owner fail meanwhile
        report = c.router.breaker_report()
        await c.start_host("a")  # a new incarnation of region a: its breaker starts closed
        placed = await c.op("y", "write", 2, hint="a")
        return moved, report, placed

    moved, report, placed = run(tmp_path, scenario)
    assert moved["status"] == 200 and moved["owner"] != "a"
    assert report["do:a#0"]["mode"] == "open" and report["do:a#0"]["opened"] == 1  # 3 failures: the design's
    assert placed["status"] == 200 and placed["owner"] == "a"


def test_a_router_cut_off_from_the_directory_forgets_its_breakers(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        assert (await c.op("x", "write", 1, hint="a"))["owner"] == "a"
        await c.crash("a")
        await c.op("x", "read")  # the calls to the dead owner open a#0's breaker
        opened = c.router.breaker_report()
        directory = c.router.directory
        c.router.directory = ("127.0.0.1", free_port())  # now the router's PoP is the one cut off
        await c.op("z", "read", hint="b")
        forgotten = c.router.breaker_report()
        c.router.directory = directory
        return opened, forgotten, await c.op("z", "write", 3, hint="b")

    opened, forgotten, after = run(tmp_path, scenario)
    assert opened["do:a#0"]["mode"] == "open" and forgotten == {}
    assert after["status"] == 200


def test_partitioned_owner_stops_serving_and_is_fenced_after_heal(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> dict[str, Any]:
        await c.op("y", "write", "old", hint="a")
        key = c.env.REG.get(c.env.REG.id_from_name("y")).key
        backup = c.directory.state.objects[key].backup
        c.partition("a")
        deadline = monotonic() + 2
        while "a" in c.directory.state.live and monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not c.hosts["a"].lease_ok()  # it stopped serving before the directory moved its objects
        moved = await c.op("y", "write", "new")
        c.heal("a")
        deadline = monotonic() + 2
        while c.hosts["a"].owned.get(key) and monotonic() < deadline:
            await asyncio.sleep(0.02)
        stale = c.hosts["a"].store(key)
        try:
            stale.put("v", "split brain", epoch=1)
            fenced = False
        except Fenced:
            fenced = True
        try:
            await c.hosts["a"].call({"key": key, "epoch": 1, "version": "v1",
                                     "request": {"method": "POST", "body": ""}})
            direct = "served"
        except Refused as exc:
            direct = exc.error
        return {"moved": moved, "backup": backup, "fenced": fenced, "read": await c.op("y", "read"), "direct": direct,
                "a_owns": dict(c.hosts["a"].owned)}

    out = run(tmp_path, scenario)
    assert out["moved"]["owner"] == out["backup"] and out["moved"]["epoch"] == 2
    assert out["fenced"] and not out["a_owns"]
    assert out["read"]["value"] == "new"
    assert out["direct"] == "not_owner"


def test_async_mode_answers_before_the_backup_has_it(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> tuple[dict[str, Any], Any]:
        for _ in range(10):
            await c.op("z", "incr", 1, hint="b")
        key = c.env.REG.get(c.env.REG.id_from_name("z")).key
        backup = c.hosts[str(c.directory.state.objects[key].backup)]
        deadline = monotonic() + 2
        while backup.store(key).seq < 10 and monotonic() < deadline:
            await asyncio.sleep(0.01)
        return c.hosts["b"].status(), backup.store(key).get("s")

    status, at_backup = run(tmp_path, scenario, mode="async")
    assert status["mode"] == "async" and at_backup == {"v": 10, "n": 10}


def test_history_across_an_owner_crash_is_linearizable(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> list[dict[str, Any]]:
        recorder = Recorder()
        rng = random.Random(7)
        stop = asyncio.Event()

        async def client(p: int) -> None:
            process = p
            while not stop.is_set():
                name = rng.choice(["k0", "k1", "k2"])
                f = rng.choice(["read", "write", "cas"])
                value: Any = None
                if f == "write":
                    value = rng.randint(0, 4)
                elif f == "cas":
                    value = [rng.randint(0, 4), rng.randint(0, 4)]

                async def call(name: str = name, f: str = f, value: Any = value) -> Any:
                    answer = await c.op(name, f, value, hint="a")
                    if answer["status"] == 200:
                        return answer["value"]
                    if answer.get("definite"):
                        raise Definite(answer.get("error", ""))
                    raise ConnectionError(answer.get("error", ""))

                await recorder.run(process, f, name, value, call, timeout=5.0)
                # This process's completion (the four clients share the recorder: the last event may be another's).
                mine = next(e for e in reversed(recorder.events) if e["process"] == process and e["type"] != "invoke")
                if mine["type"] == "info":
                    process += 100  # a process with an unknown outcome never invokes again

        clients = [asyncio.create_task(client(p)) for p in range(4)]
        await asyncio.sleep(0.5)  # traffic before the fault
        await c.crash("a")
        await asyncio.sleep(1.5)  # through the failover and after
        stop.set()
        await asyncio.gather(*clients)
        return recorder.events

    events = run(tmp_path, scenario)
    oks = [e for e in events if e["type"] == "ok"]
    assert len(oks) > 50
    verdict = check(events, "register")
    assert verdict.linearizable, verdict


def test_a_directory_cut_off_from_most_regions_fails_nobody_over(tmp_path: Path) -> None:
    d = Directory({"regions": {r: ["127.0.0.1", 1] for r in ("a", "b", "c")}, "lease_s": LEASE_S,
                   "renew_s": RENEW_S, "margin_s": MARGIN_S, "state": str(tmp_path / "d.json"),
                   "events": str(tmp_path / "e.jsonl"), "listen": ["127.0.0.1", 1],
                   "auth": auth_block(KEYS, tmp_path / "dir-", None, ("do-host",))})
    d.where("reg/Register/x", "a")
    backup = d.state.objects["reg/Register/x"].backup
    d.renew("a", {"reg/Register/x": {"seq": 0, "shipped_to": backup}})  # the owner: its backup has a copy
    long_ago = monotonic() - 10
    d.last_seen = {"a": long_ago, "b": long_ago, "c": d.last_seen["c"]}
    d.check_leases()  # only c renews: it is the directory that is cut off
    assert d.state.live == {"a", "b", "c"} and d.isolated
    d.last_seen["b"] = monotonic()
    d.check_leases()  # b and c renew, a does not: a is down
    assert d.state.live == {"b", "c"} and d.state.objects["reg/Register/x"].owner in ("b", "c")


def test_periodic_snapshots_reach_the_backup_and_trim_the_owners_log(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> tuple[list[int], Any, int]:
        for _ in range(5):
            await c.op("s", "incr", 1, hint="a")
        key = c.env.REG.get(c.env.REG.id_from_name("s")).key
        owner = c.hosts["a"].store(key)
        deadline = monotonic() + 3
        while owner.log_since(0) and monotonic() < deadline:
            await asyncio.sleep(0.02)
        backup = c.hosts[str(c.directory.state.objects[key].backup)].store(key)
        return [e["seq"] for e in owner.log_since(0)], backup.get("s"), backup.seq

    log, at_backup, seq = run(tmp_path, scenario, snapshot_s=0.2)
    assert log == [] and at_backup == {"v": 5, "n": 5} and seq == 5


def test_the_do_services_take_only_their_peers_and_epochs_only_from_the_directory(tmp_path: Path) -> None:
    """Issue 19: every internal DO endpoint refuses a request unsigned, signed with another lab's key,
    replayed, changed on the way or from a role the route does not take; an authenticated host cannot
    install an epoch the directory never issued (it once fenced any object), seed an object it does not
    own, or renew another region's lease; an oversized body is 413. Each refusal is counted, and the
    object keeps answering with what was written."""
    import aiohttp

    async def scenario(c: Cluster) -> tuple[dict[str, int], dict[str, Any], dict[str, Any], dict[str, Any]]:
        assert (await c.op("x", "write", 1, hint="a"))["owner"] == "a"
        key = c.env.REG.get(c.env.REG.id_from_name("x")).key
        backup = c.directory.state.objects[key].backup
        assert backup is not None
        third = ({"a", "b", "c"} - {"a", backup}).pop()
        other_lab = PeerKeys.make()
        got: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:

            async def send(what: str, port: int, path: str, payload: Any, peer: str | None,
                           keys: PeerKeys = KEYS, headers: dict[str, str] | None = None,
                           sign_body: bytes | None = None) -> dict[str, str]:
                body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                signed = {} if peer is None else signer(keys, peer).headers(
                    "POST", f"127.0.0.1:{port}", path, body if sign_body is None else sign_body)
                sent = headers if headers is not None else signed
                async with session.post(f"http://127.0.0.1:{port}{path}", data=body,
                                        headers={"Content-Type": "application/json", **sent}) as resp:
                    got[what] = resp.status
                    if resp.status != 413:
                        got[what + ":" + str((await resp.json(content_type=None)).get("reason")
                                             or (await resp.json(content_type=None)).get("error"))] = 1
                return signed

            forged = {"key": key, "snapshot": {"seq": 99, "epoch": 1000, "data": {"value": 666}}}
            now_epoch = {"key": key, "snapshot": {"seq": 99, "epoch": 1, "data": {"value": 666}}}
            hb = c.ports[backup]
            await send("unsigned", hb, "/v1/install", forged, None)
            await send("other lab", hb, "/v1/install", forged, "do-host/a", keys=other_lab)
            await send("tampered", hb, "/v1/install", forged, "do-host/a", sign_body=b"{}")
            await send("router installs", hb, "/v1/install", forged, "do-router/pop-s1")
            await send("epoch never issued", hb, "/v1/install", forged, "do-host/a")
            await send("not the owner", hb, "/v1/install", now_epoch, f"do-host/{third}")
            await send("ship not the owner", hb, "/v1/replicate",
                       {"key": key, "entries": [{"seq": 50, "epoch": 1, "ops": [["put", "value", 666]]}]},
                       f"do-host/{third}")
            lease = {"region": "a", "objects": {}}
            await send("other region's lease", c.dport, "/v1/lease", lease, "do-host/b")
            first = await send("lease", c.dport, "/v1/lease", lease, "do-host/a")
            await send("replayed lease", c.dport, "/v1/lease", lease, None, headers=first)
            await send("router renews", c.dport, "/v1/lease", lease, "do-router/pop-s1")
            await send("oversized lease", c.dport, "/v1/lease", b"x" * (2 * 1024 * 1024), "do-host/a")
            await send("oversized install", hb, "/v1/install", b"x" * (65 * 1024 * 1024), "do-host/a")
            call = {"key": key, "epoch": 1, "version": "v1", "request": {"method": "POST", "url": "/", "headers": {},
                                                                        "body": ""}}
            await send("host runs a call", c.ports["a"], "/v1/call", call, "do-host/b")
        after = await c.op("x", "read")
        return got, after, c.hosts[backup].status(), c.directory.listing()

    got, after, backup_status, listing = run(tmp_path, scenario)
    expect = {"unsigned": 401, "other lab": 401, "tampered": 401, "router installs": 403,
              "epoch never issued": 409, "not the owner": 403, "ship not the owner": 403,
              "other region's lease": 403, "lease": 200, "replayed lease": 401, "router renews": 403,
              "oversized lease": 413, "oversized install": 413, "host runs a call": 403}
    assert {k: v for k, v in got.items() if ":" not in k} == expect
    for reason in ("unsigned:missing", "other lab:bad_signature", "tampered:bad_signature",
                   "router installs:not_allowed", "epoch never issued:epoch_not_issued",
                   "not the owner:not_owner", "other region's lease:other_region", "replayed lease:replayed"):
        assert reason in got, (reason, got)
    assert after == {"status": 200, "value": 1, "version": 1, "owner": "a", "epoch": 1}  # nothing forged took
    refused = backup_status["auth_refused"]
    assert refused["missing"] == 1 and refused["bad_signature"] == 2 and refused["not_allowed"] == 1
    assert backup_status["refused"] == {"epoch_not_issued": 1, "not_owner": 2}
    assert listing["auth_refused"]["replayed"] == 1 and listing["refused"]["other_region"] == 1


def test_a_durable_objects_code_runs_in_a_sandbox_of_its_own(tmp_path: Path) -> None:
    """Issue 19: an object's class runs in a sandboxed isolate, not in its host: it cannot read the host's
    files (another object's database, the directory's state, a secret beside them), open a raw socket or
    signal a process outside, runs as its deployment's uid, and still has its storage (through the host,
    transactions too); a neighbour object keeps answering."""
    secret = tmp_path / "secret.key"
    secret.write_text("do not read")

    async def scenario(c: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
        assert (await c.op("x", "write", 7, hint="a"))["owner"] == "a"
        snoop = DurableObjectNamespace("reg", "Snoop", c.rport)
        stub = snoop.get(snoop.id_from_name("s"), location_hint="a")
        paths = [str(secret), str(tmp_path / "directory.json"), "/etc/shadow",
                 str(next((tmp_path / "a" / "objects").glob("*.db")))]
        answer = await stub.fetch(Request("POST", "/", {}, json.dumps({"paths": paths}).encode()))
        return json.loads(answer.body), await c.op("x", "read")

    seen, neighbour = run(tmp_path, scenario)
    assert all(seen[p] in ("FileNotFoundError", "PermissionError") for p in seen if p.startswith("/")), seen
    assert seen["raw socket"] == "PermissionError" and seen["signal"] == "PermissionError", seen
    assert seen["uid"] >= 100000 and seen["stored"] == [1, 1], seen
    assert neighbour == {"status": 200, "value": 7, "version": 1, "owner": "a", "epoch": 1}
