"""KV masters and replicas on loopback (no root): acknowledged writes are on two regions' masters,
masters converge, replicas follow and catch up, and Level 1 when a master is away."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.peer_auth import PeerKeys, Signer
from core.wait import wait_for
from kv import master as kv_master
from kv import replica as kv_replica
from kv.client import KvClient
from kv.store import KvError
from tests.unit.peers import auth_block, signer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``serve(cfg)`` of kv.master or kv.replica on a loop in a thread; stop() cancels it (a crash)."""

    def __init__(self, module: Any, cfg: dict[str, Any]) -> None:
        self.module, self.cfg = module, cfg
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            self.task = self.loop.create_task(self.module.serve(self.cfg, handle_signals=False))
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(self.task)
            rest = asyncio.all_tasks(self.loop)  # aiohttp's handlers of connections still open
            for t in rest:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        url = f"http://{self.cfg['listen'][0]}:{self.cfg['listen'][1]}/v1/status"
        wait_for(lambda: call(url) is not None, timeout=10, what=f"{url} to answer", interval=0.02)

    def stop(self) -> None:
        assert self.loop is not None and self.thread is not None
        self.loop.call_soon_threadsafe(lambda: self.task.cancel() if self.task else None)
        self.thread.join(10)


KEYS = PeerKeys.make()
#: The test speaks as a replica to the masters (as a peer master for /v1/replicate).
AS_REPLICA, AS_MASTER = signer(KEYS, "kv-replica/tester"), signer(KEYS, "kv-master/tester")


def call(url: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
         as_peer: Signer | None = None) -> tuple[int, dict[str, Any]] | None:
    """One request, signed as ``as_peer`` (default: a replica; a peer master for /v1/replicate)."""
    body = b"" if data is None else json.dumps(data).encode()
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    peer = as_peer or (AS_MASTER if parts.path == "/v1/replicate" else AS_REPLICA)
    method = "GET" if data is None else "POST"
    req = urllib.request.Request(url, data=None if data is None else body, method=method,
                                 headers={"Content-Type": "application/json",
                                          **peer.headers(method, parts.netloc, target, body), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:  # aiohttp's own refusals (413) are text
            return exc.code, {"error": raw.decode(errors="replace")}
    except OSError:
        return None


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {n: free_port() for n in ("kv-na", "kv-eu", "kv-ap", "sjc-s1")}
        names = ["kv-na", "kv-eu", "kv-ap"]
        self.masters = {}
        for n in names:
            cfg = {"node": n, "region": n[3:], "data_dir": str(root / n), "socket": str(root / f"{n}.sock"),
                   "listen": ["127.0.0.1", self.ports[n]],
                   "auth": auth_block(KEYS, root / "keys" / f"{n}-", f"kv-master/{n}", ("kv-master", "kv-replica")),
                   "peers": [{"name": p, "address": "127.0.0.1", "port": self.ports[p]} for p in names if p != n]}
            self.masters[n] = Service(kv_master, cfg)
        na = {"name": "kv-na", "address": "127.0.0.1", "port": self.ports["kv-na"]}
        self.replica = Service(kv_replica, {
            "server": "sjc-s1", "data_dir": str(root / "sjc-s1"), "socket": str(root / "sjc-s1.sock"),
            "listen": ["127.0.0.1", self.ports["sjc-s1"]], "master": na, "stale_after_s": 1.0,
            "masters": [na, {"name": "kv-eu", "address": "127.0.0.1", "port": self.ports["kv-eu"]}],
            "metrics": str(root / "kv.prom"), "events": str(root / "kv-events.jsonl"),
            "account_limits": {"kv_reads_per_s": 3, "kv_writes_per_s": 2},
            "auth": auth_block(KEYS, root / "keys" / "sjc-s1-", "kv-replica/sjc-s1")})

    def url(self, node: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}{path}"

    def put(self, node: str, key: str, value: str, ns: str = "ns") -> dict[str, Any]:
        """A put on a master as a replica would send it; on the replica as the operator (its socket)."""
        if node == "sjc-s1":
            return KvClient(self.root / "sjc-s1.sock").put(ns, key, value.encode())
        got = call(self.url(node, f"/v1/kv/{ns}/put"), {"key": key, "value": base64.b64encode(value.encode()).decode()})
        assert got is not None
        return got[1]

    def get(self, node: str, key: str, ns: str = "ns") -> dict[str, Any] | None:
        if node == "sjc-s1":
            reply = KvClient(self.root / "sjc-s1.sock").get(ns, key)
            return None if reply is None else {**reply, "value": reply["value"].decode()}
        got = call(self.url(node, f"/v1/kv/{ns}/get"), {"key": key})
        if got is None or got[0] == 404:
            return None
        return {**got[1], "value": base64.b64decode(got[1]["value"]).decode()}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    for m in c.masters.values():
        m.start()
    c.replica.start()
    yield c
    for svc in [c.replica, *c.masters.values()]:
        with contextlib.suppress(Exception):
            svc.stop()


def test_an_acknowledged_write_is_on_two_regions_and_reaches_every_master_and_the_replica(cluster: Cluster) -> None:
    reply = cluster.put("kv-na", "k", "v1")
    assert reply["committed"] is True and reply["replicated_to"] == "kv-eu"
    assert (cluster.get("kv-eu", "k") or {}).get("value") == "v1"  # there when the ack came back
    wait_for(lambda: (cluster.get("kv-ap", "k") or {}).get("value") == "v1", timeout=10, what="kv-ap")
    wait_for(lambda: (cluster.get("sjc-s1", "k") or {}).get("value") == "v1", timeout=10, what="the replica")


def test_concurrent_writes_converge_on_every_master(cluster: Cluster) -> None:
    """Writes to every master, interleaved: each is acknowledged, and every master ends on what was
    written last to each key (last writer wins; the HLC follows the one clock the masters share here)."""
    last: dict[str, str] = {}
    for i in range(20):
        for m in cluster.masters:
            key, value = f"k{i % 5}", f"{m}-{i}"
            reply = cluster.put(m, key, value)
            assert reply.get("committed") is True, f"{m}: {key}={value} not committed: {reply}"
            last[key] = value
    views: dict[str, dict[str, str | None]] = {}

    def converged() -> bool:
        for m in cluster.masters:
            views[m] = {k: (cluster.get(m, k) or {}).get("value") for k in last}
        return all(view == last for view in views.values())

    wait_for(converged, timeout=15, what="every master to return what was written last",
             describe=lambda: f"written {last}, seen {views}")


def test_level1_stale_reads_and_queued_writes_drain_in_order(cluster: Cluster) -> None:
    assert cluster.put("sjc-s1", "a", "1")["committed"] is True
    wait_for(lambda: cluster.get("sjc-s1", "a") is not None, timeout=10, what="the replica to have a")
    cluster.masters["kv-na"].stop()
    wait_for(lambda: (cluster.get("sjc-s1", "a") or {}).get("stale") is True, timeout=10, what="stale reads")
    assert cluster.get("sjc-s1", "a") == {"value": "1", "metadata": None, "expiration": None, "stale": True}
    first = cluster.put("sjc-s1", "a", "2")
    second = cluster.put("sjc-s1", "a", "3")
    assert first["committed"] is False and first["accepted"] is True and second["queued"] == 2
    cluster.masters["kv-na"].start()
    wait_for(lambda: (cluster.get("kv-eu", "a") or {}).get("value") == "3", timeout=15,
             what="the queue drained in order to every master")
    wait_for(lambda: cluster.get("sjc-s1", "a") == {"value": "3", "metadata": None, "expiration": None,
                                                     "stale": False}, timeout=15, what="fresh reads again")

    def drained() -> list[str]:
        events = [json.loads(line) for line in (cluster.root / "kv-events.jsonl").read_text().splitlines()]
        return [e["outcome"] for e in events if e["event"] == "drained"]

    # The drainer records the outcome once the master's answer is back, maybe after the reads above.
    wait_for(lambda: len(drained()) == 2, timeout=10, what="both drained writes recorded")
    assert drained() == ["committed", "committed"]


def test_a_replica_restarted_catches_up_from_where_it_was(cluster: Cluster) -> None:
    cluster.put("kv-na", "before", "x")
    wait_for(lambda: cluster.get("sjc-s1", "before") is not None, timeout=10, what="before")
    cluster.replica.stop()
    for i in range(10):
        cluster.put("kv-eu", f"missed{i}", str(i))
    cluster.replica.start()
    wait_for(lambda: cluster.get("sjc-s1", "missed9") is not None, timeout=15, what="catch-up")


def test_without_another_region_a_write_is_not_acknowledged(cluster: Cluster) -> None:
    cluster.masters["kv-eu"].stop()
    cluster.masters["kv-ap"].stop()
    got = call(cluster.url("kv-na", "/v1/kv/ns/put"), {"key": "k", "value": ""})
    assert got is not None and got[0] == 503 and "not acknowledged" in got[1]["error"]


def test_a_workers_account_is_limited_in_kv_reads_and_writes_per_second(cluster: Cluster) -> None:
    def status(op: str, account: str) -> int:
        body = {"key": "k", "value": base64.b64encode(b"v").decode()} if op == "put" else {"key": "k"}
        got = call(cluster.url("sjc-s1", f"/v1/kv/ns/{op}"), body, {"X-Anylab-Account": account})
        assert got is not None
        return got[0]

    writes = [status("put", "acme") for _ in range(3)]
    assert writes[:2] == [200, 200] and writes[2] == 429  # 2 writes/s (burst 2) for this test
    reads = [status("get", "acme") for _ in range(4)]
    assert reads[:3] == [200] * 3 and reads[3] == 429  # reads have their own bucket
    assert status("put", "other") == 200  # another account is not affected
    assert cluster.put("sjc-s1", "op", "x")["committed"]  # nor the operator (no account, on its socket)
    got = call(cluster.url("sjc-s1", "/v1/kv/ns/get"), {"key": "k"})  # on 127.0.0.1 the account is required
    assert got is not None and got[0] == 400 and "X-Anylab-Account is required" in got[1]["error"]


def test_a_poisoned_hlc_is_refused_and_later_writes_commit(cluster: Cluster) -> None:
    """Issue 19: an entry stamped near 2^63 (it once overflowed the master's clock, and every later write
    there was 'accepted, queued' and never committed) is refused with its reason and counted; a write
    after it commits. The bound holds for pulled entries too (kv.hlc.admissible)."""
    from kv.hlc import MAX_AHEAD_MS, admissible, pack

    poison = {"key": base64.b64encode(b"p").decode(), "value": base64.b64encode(b"x").decode(),
              "metadata": None, "expiration": None, "hlc": (1 << 63) - 5, "node": "kv-evil", "deleted": False, "seq": 1}
    got = call(cluster.url("kv-na", "/v1/replicate"), {"ns": "ns", "entries": [poison]})
    assert got is not None and got[0] == 400 and "ahead of this master's clock" in json.dumps(got[1])
    status = call(cluster.url("kv-na", "/v1/status"))
    assert status is not None and status[1]["refused"]["future_hlc"] == 1
    assert cluster.get("kv-na", "p") is None
    reply = cluster.put("kv-na", "k", "after")
    assert reply["committed"] is True
    huge = call(cluster.url("kv-na", "/v1/kv/ns/put"), {"key": "h", "value": "A" * (65 * 1024 * 1024)})
    assert huge is None or huge[0] == 413  # over the 64 MB a master reads (urllib may see the reset first)
    assert cluster.put("kv-na", "k2", "after the oversized one")["committed"] is True
    now_ms = 1_800_000_000_000
    assert admissible(pack(now_ms + MAX_AHEAD_MS, 0), now_ms) and not admissible(pack(now_ms + MAX_AHEAD_MS + 1, 0),
                                                                                  now_ms)
    assert not admissible(-1, now_ms) and not admissible(1 << 63, now_ms)


def test_queued_writes_are_never_dropped_a_batch_at_a_time(cluster: Cluster) -> None:
    """Issue 20: with the replica's master away, five puts and one with an absolute expiration 1.5 s ahead
    are queued; the expiration has passed when the master returns. Each op is checked as of when it was
    accepted and on its own: all six commit (the expiring one stored, and expired by now); a malformed op
    put in the queue by hand is reported refused without taking the others with it. (On the main before
    this, the whole batch of six was refused and deleted.)"""
    import sqlite3
    import time

    cluster.masters["kv-na"].stop()
    client = KvClient(cluster.root / "sjc-s1.sock")
    assert client.put("ns", "probe", b"x")["committed"] is False  # the master is away: queued
    for i in range(5):
        assert client.put("ns", f"q{i}", b"v")["committed"] is False
    assert client.put("ns", "soon", b"gone", expiration=time.time() + 1.5)["committed"] is False
    queue = sqlite3.connect(cluster.root / "sjc-s1" / "queue.sqlite")
    queue.execute("INSERT INTO queue (ns, op, body, t) VALUES ('ns', 'put', ?, 0)",
                  (json.dumps({"key": "", "value": "!"}),))
    queue.commit()
    queue.close()
    time.sleep(2.0)  # the expiration passes while queued (what is waited for is the clock, not an event)
    cluster.masters["kv-na"].start()

    def drained() -> list[dict[str, Any]]:
        events = [json.loads(line) for line in (cluster.root / "kv-events.jsonl").read_text().splitlines()]
        return [e for e in events if e["event"] == "drained"]

    wait_for(lambda: len(drained()) == 8, timeout=15, what="all eight drained",
             describe=lambda: str(drained()))
    outcomes = {e["key"]: e["outcome"] for e in drained()}
    assert [outcomes[k] for k in ("probe", "q0", "q1", "q2", "q3", "q4", "soon")] == ["committed"] * 7, outcomes
    assert outcomes[""].startswith("refused"), outcomes
    for i in range(5):
        assert (cluster.get("kv-eu", f"q{i}") or {}).get("value") == "v"
    assert cluster.get("kv-na", "soon") is None  # stored, and expired since


def test_a_write_sent_again_with_its_id_is_stamped_once(cluster: Cluster) -> None:
    """Issue 20: a replica's retry (or its queue's drain) of a write carries the write's id; the master
    stamps it once, so the second time it is the same version (the same HLC) and applying it again
    changes nothing — each retry had been a new version with a fresh HLC."""
    body = {"key": "once", "value": base64.b64encode(b"v").decode(), "write_id": "w-1"}
    first = call(cluster.url("kv-na", "/v1/kv/ns/put"), body)
    again = call(cluster.url("kv-na", "/v1/kv/ns/put"), body)
    assert first is not None and again is not None and first[0] == again[0] == 200
    assert first[1]["hlc"] == again[1]["hlc"]
    other = call(cluster.url("kv-na", "/v1/kv/ns/put"), {**body, "write_id": "w-2"})
    assert other is not None and other[1]["hlc"] > first[1]["hlc"]  # another write: a new version
    seqs = KvClient(cluster.root / "kv-na.sock").status()["seqs"]
    assert seqs["ns"] == 2  # two versions stored, not three


def test_a_master_that_lost_its_disk_is_followed_again_from_the_start(cluster: Cluster) -> None:
    """Issue 20: kv-na's disk is gone while the other masters are away; it comes back empty, its sequence
    numbers begin again, and the writes it takes then (on its disk, not yet acknowledged) reach the
    replica and, once back, the other masters — whose cursors point past those numbers. On the main
    before, both skipped every write until kv-na's new sequence passed their old cursors."""
    import shutil

    for i in range(20):
        assert cluster.put("kv-na", f"old{i}", "v")["committed"] is True
    wait_for(lambda: cluster.get("sjc-s1", "old19") is not None, timeout=10, what="the replica to follow")
    wait_for(lambda: cluster.get("kv-ap", "old19") is not None, timeout=10, what="kv-ap to pull")
    for name in ("kv-eu", "kv-ap", "kv-na"):
        cluster.masters[name].stop()
    shutil.rmtree(cluster.root / "kv-na")
    cluster.masters["kv-na"].start()
    got = call(cluster.url("kv-na", "/v1/kv/ns/put"), {"key": "new", "value": base64.b64encode(b"n").decode()})
    assert got is not None and got[0] == 503  # on kv-na's disk, no other region to confirm it
    wait_for(lambda: cluster.get("sjc-s1", "new") is not None, timeout=10, what="the replica to get the new write")
    for name in ("kv-eu", "kv-ap"):
        cluster.masters[name].start()
    wait_for(lambda: all(cluster.get(n, "new") is not None for n in ("kv-eu", "kv-ap")), timeout=10,
             what="kv-eu and kv-ap to pull the new write")
    wait_for(lambda: cluster.get("kv-na", "old19") is not None, timeout=10, what="kv-na rebuilt from its peers")


def test_a_queued_write_orders_by_when_it_was_accepted(cluster: Cluster) -> None:
    """Issue 20: a write queued at the replica (its master away) and a write to the same key acknowledged
    after it by another region: once the queue drains, every master holds the later one. On the main
    before, the queued write was stamped when it drained and overwrote the one acknowledged after it."""
    cluster.masters["kv-na"].stop()
    assert cluster.put("sjc-s1", "k", "queued first")["committed"] is False
    assert cluster.put("kv-eu", "k", "acknowledged after")["committed"] is True
    cluster.masters["kv-na"].start()

    def drained() -> list[str]:
        events = [json.loads(line) for line in (cluster.root / "kv-events.jsonl").read_text().splitlines()]
        return [e["outcome"] for e in events if e["event"] == "drained"]

    wait_for(lambda: drained() == ["committed"], timeout=15, what="the queued write drained")
    def values() -> dict[str, Any]:
        return {m: (cluster.get(m, "k") or {}).get("value") for m in cluster.masters}

    wait_for(lambda: set(values().values()) == {"acknowledged after"}, timeout=10,
             what="every master to hold the write acknowledged last", describe=lambda: str(values()))


def test_a_write_on_its_master_alone_survives_that_masters_disk(cluster: Cluster) -> None:
    """Issue 20: with no other region to confirm it, a write is on its master's disk alone (503: accepted,
    not acknowledged); that disk is then lost. The replica kept the write, with the version the master gave
    it, and sends it again: once another region is back it commits, the same version. On the main before,
    the replica let go of it on the 503 and the write was gone with the disk."""
    import shutil

    cluster.masters["kv-eu"].stop()
    cluster.masters["kv-ap"].stop()
    reply = cluster.put("sjc-s1", "only-here", "v")
    assert reply["committed"] is False and reply["accepted"] is True
    cluster.masters["kv-na"].stop()
    shutil.rmtree(cluster.root / "kv-na")
    cluster.masters["kv-na"].start()
    cluster.masters["kv-eu"].start()
    wait_for(lambda: (cluster.get("kv-eu", "only-here") or {}).get("value") == "v", timeout=15,
             what="the write on kv-eu after kv-na lost its disk")

    def drained() -> list[str]:
        events = [json.loads(line) for line in (cluster.root / "kv-events.jsonl").read_text().splitlines()]
        return [e["outcome"] for e in events if e["event"] == "drained"]

    # The drainer records the outcome once the master's answer is back, maybe after kv-eu has the write.
    wait_for(lambda: drained() == ["committed"], timeout=10, what="the write drained as committed",
             describe=lambda: str(drained()))


def test_a_clock_jump_moves_the_masters_hlc_and_only_the_operator_may(cluster: Cluster) -> None:
    """The clock-ahead/clock-behind faults' mechanism: on its operator socket a master's HLC input moves
    (the host's clock does not); 30 s ahead, what it stamps is past the 5 s its peers take: they refuse it
    (and count it), and the write is refused (409) and stored nowhere — on the main before, it was kept on
    kv-na (503, accepted), skipped by every puller, and could later overwrite writes acknowledged after it.
    Over the network the clock is nobody's: 403."""
    operator = KvClient(cluster.root / "kv-na.sock")
    assert operator.call("POST", "/v1/clock", {"offset_s": 30})["offset_s"] == 30.0
    got = call(cluster.url("kv-na", "/v1/kv/ns/put"), {"key": "ahead", "value": ""})
    assert got is not None and got[0] == 409 and "disagree" in got[1]["error"], got
    assert cluster.get("kv-na", "ahead") is None
    assert KvClient(cluster.root / "kv-eu.sock").status()["refused"]["future_hlc"] >= 1
    assert operator.status()["refused"]["clock_skew"] == 1
    for bad in (True, "30", 86_401, float("nan")):
        with pytest.raises(KvError) as err:
            operator.call("POST", "/v1/clock", {"offset_s": bad})
        assert err.value.status == 400
    peer = call(cluster.url("kv-na", "/v1/clock"), {"offset_s": 0}, as_peer=AS_MASTER)
    assert peer is not None and peer[0] == 403
    assert operator.call("POST", "/v1/clock", {"offset_s": 0})["offset_s"] == 0.0


def test_a_master_whose_clock_is_behind_waits_for_what_it_cannot_take_yet(cluster: Cluster) -> None:
    """kv-eu's clock 30 s behind: a write on kv-na is refused by kv-eu (too far ahead of its clock) and
    confirmed by kv-apac — acknowledged. kv-eu's pulls hold the entry instead of skipping it (the cursor
    stops before it), so once its clock is mended it has the write. Before, the pull skipped it for good
    (and kv-na had answered 409 at kv-eu's refusal without asking kv-apac)."""
    eu = KvClient(cluster.root / "kv-eu.sock")
    eu.call("POST", "/v1/clock", {"offset_s": -30})
    reply = cluster.put("kv-na", "late", "v")
    assert reply.get("committed") is True and reply["replicated_to"] == "kv-ap", reply
    wait_for(lambda: eu.status()["refused"]["held_future"] >= 1, timeout=10, what="kv-eu to hold the entry")
    assert cluster.get("kv-eu", "late") is None
    eu.call("POST", "/v1/clock", {"offset_s": 0})
    wait_for(lambda: (cluster.get("kv-eu", "late") or {}).get("value") == "v", timeout=10,
             what="kv-eu to take the held write once its clock is mended")


def test_a_write_acknowledged_through_the_replica_is_read_there_at_once(cluster: Cluster) -> None:
    """Read-your-writes on one server: the replica stores an acknowledged write as the master did (stamp,
    expiration, metadata) before it answers, instead of waiting for the master's change stream — a
    worker's read right after its put had raced the stream (seen in a lab test once the master wrote to
    its peer first)."""
    for i in range(20):
        reply = KvClient(cluster.root / "sjc-s1.sock").put("ns", f"ryw{i}", str(i).encode(), metadata={"i": i},
                                                             expiration_ttl=60)
        assert reply["committed"] is True
        got = KvClient(cluster.root / "sjc-s1.sock").get("ns", f"ryw{i}")
        assert got is not None and got["value"] == str(i).encode() and got["metadata"] == {"i": i}, (i, got)
    mine = KvClient(cluster.root / "sjc-s1.sock").get("ns", "ryw0")
    theirs = cluster.get("kv-na", "ryw0")
    assert mine is not None and theirs is not None and mine["expiration"] == theirs["expiration"]
