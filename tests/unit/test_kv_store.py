"""KV storage and clocks: Workers KV semantics, limits, last-writer-wins convergence (no network)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from kv.hlc import Clock, pack, physical_ms
from kv.store import MAX_VALUE, Entry, KvError, Store, check_put

NOW = 1_800_000_000.0


def put(store: Store, key: str, value: bytes, hlc: int, node: str = "a", ns: str = "ns", **kw: object) -> None:
    raw, meta, exp = check_put(key, value, kw.get("metadata"), kw.get("expiration"),  # type: ignore[arg-type]
                               kw.get("expiration_ttl"), NOW)  # type: ignore[arg-type]
    store.apply(ns, [Entry(raw, value, meta, exp, hlc, node)])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "kv", durable=True)


def test_clock_is_monotonic_and_follows_what_it_sees() -> None:
    c, a = Clock().tick(1000)
    c, b = c.tick(999)  # the wall clock went back: the timestamp does not
    assert b > a and physical_ms(b) == 1000
    c = c.observe(pack(5000, 7), 1001)  # a replicated write from a node ahead of us
    c, d = c.tick(1002)
    assert d > pack(5000, 7)


def test_put_get_metadata_and_delete(store: Store) -> None:
    put(store, "k", b"v1", 1, metadata={"owner": "x"})
    e = store.get("ns", b"k", NOW)
    assert e is not None and e.value == b"v1" and json.loads(e.metadata or "") == {"owner": "x"}
    store.apply("ns", [Entry(b"k", b"", None, None, 2, "a", deleted=True)])
    assert store.get("ns", b"k", NOW) is None
    assert store.current("ns", b"k") is not None  # the tombstone stays, to beat older puts
    put(store, "k", b"old", 1, node="b")  # an older write arriving late loses to the tombstone
    assert store.get("ns", b"k", NOW) is None


def test_expiration(store: Store) -> None:
    put(store, "ttl", b"v", 1, expiration_ttl=60)
    put(store, "abs", b"v", 2, expiration=NOW + 10)
    assert store.get("ns", b"ttl", NOW + 59) is not None and store.get("ns", b"ttl", NOW + 60) is None
    assert store.get("ns", b"abs", NOW + 9.9) is not None and store.get("ns", b"abs", NOW + 10) is None
    assert [k["name"] for k in store.list_keys("ns", "", 10, None, NOW + 30)["keys"]] == ["ttl"]


def test_list_pages_in_utf8_byte_order_with_cursors(store: Store) -> None:
    names = ["b", "a", "é", "Z", "a/2", "a/10", "z", "ä"]
    for i, n in enumerate(names):
        put(store, n, b"x", i + 1)
    assert sorted(names, key=str.encode) == ["Z", "a", "a/10", "a/2", "b", "z", "ä", "é"]
    seen, cursor, pages = [], None, 0
    while True:
        page = store.list_keys("ns", "", 3, cursor, NOW)
        seen += [k["name"] for k in page["keys"]]
        pages += 1
        if page["list_complete"]:
            assert page["cursor"] is None
            break
        cursor = page["cursor"]
    assert seen == sorted(names, key=str.encode) and pages == 3
    assert [k["name"] for k in store.list_keys("ns", "a/", 1000, None, NOW)["keys"]] == ["a/10", "a/2"]


@pytest.mark.parametrize(("call", "words"), [
    (lambda: check_put("k" * 513, b"v", None, None, None, NOW), "513 bytes; the limit is 512 (key_size)"),
    (lambda: check_put("", b"v", None, None, None, NOW), "key_size"),
    (lambda: check_put("k", b"v" * (MAX_VALUE + 1), None, None, None, NOW), "(25 MiB, value_size)"),
    (lambda: check_put("k", b"v", {"x": "y" * 1100}, None, None, NOW), "the limit is 1024 (metadata_size)"),
    (lambda: check_put("k", b"v", None, None, 0.5, NOW), "under the minimum"),
    (lambda: check_put("k", b"v", None, NOW - 1, None, NOW), "not at least 1 s in the future"),
    (lambda: check_put("k", b"v", None, NOW + 100, 100, NOW), "not both"),
])
def test_limits_name_the_limit(call: object, words: str) -> None:
    with pytest.raises(KvError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()  # type: ignore[operator]


def test_list_limit_and_bad_cursor(store: Store) -> None:
    put(store, "k", b"v", 1)
    with pytest.raises(KvError, match="list_limit"):
        store.list_keys("ns", "", 1001, None, NOW)
    with pytest.raises(KvError, match="namespace"):
        store.get("bad ns!", b"k", NOW)


def test_concurrent_writes_converge_in_any_order(tmp_path: Path) -> None:
    """Three masters receive the same writes (puts and deletes from three nodes) in different orders:
    all end with the same rows, the (hlc, node) maximum of each key."""
    writes = [Entry(b"k1", b"a1", None, None, 10, "a"), Entry(b"k1", b"b1", None, None, 10, "b"),
              Entry(b"k1", b"c1", None, None, 9, "c"), Entry(b"k2", b"", None, None, 20, "c", deleted=True),
              Entry(b"k2", b"a2", None, None, 19, "a"), Entry(b"k3", b"b3", None, None, 5, "b")]
    states = []
    for i, order in enumerate(itertools.islice(itertools.permutations(writes), 0, 720, 120)):
        s = Store(tmp_path / f"m{i}", durable=False)
        for e in order:
            s.apply("ns", [e])
        states.append([(e.key, e.value, e.hlc, e.node, e.deleted) for e in s.all("ns")])
    assert all(st == states[0] for st in states)
    assert states[0] == [(b"k1", b"b1", 10, "b", False), (b"k2", b"", 20, "c", True), (b"k3", b"b3", 5, "b", False)]


def test_changes_since_a_sequence_number_and_restart(tmp_path: Path) -> None:
    s = Store(tmp_path / "kv", durable=True)
    for i in range(5):
        s.apply("ns", [Entry(f"k{i}".encode(), b"v", None, None, i + 1, "a")])
    assert [e.key for e in s.changes("ns", 3)] == [b"k3", b"k4"]
    s.apply("ns", [Entry(b"k0", b"v2", None, None, 99, "a")])  # an update moves the key to the end
    assert [e.key for e in s.changes("ns", 4)] == [b"k4", b"k0"]
    s.close()
    again = Store(tmp_path / "kv", durable=True)  # a restart keeps rows and numbering
    assert again.seq("ns") == 6 and again.namespaces() == ["ns"]
