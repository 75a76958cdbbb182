"""The KV part of a backup store (backup.kv): the WAL as received, snapshots verified by a restore, the
state at a time from the last good snapshot and the WAL after it; a bad snapshot is never restored from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup.kv import MANIFEST, KvBackup, digest
from kv.store import Entry, KvError, Store


def change(key: str, value: str, hlc: int, node: str = "kv-a", deleted: bool = False) -> dict[str, object]:
    return Entry(key.encode(), value.encode(), None, None, hlc, node, deleted).to_json()


def values(store: Store, ns: str = "users") -> dict[str, str]:
    return {e.key.decode(): e.value.decode() for e in store.all(ns) if not e.deleted}


def test_the_state_at_a_time_is_the_last_snapshot_plus_the_wal_received_by_then(tmp_path: Path) -> None:
    b = KvBackup(tmp_path / "b")
    assert b.record("kv-a", {"users": [change("k1", "v1", 10)]}, t=1.0) == 1
    snap = b.snapshot(t=2.0, wall=0.0, scratch=tmp_path / "scratch")
    assert snap.ok and snap.wal == {"kv-a": 1} and not (tmp_path / "scratch").exists()
    b.record("kv-a", {"users": [change("k2", "v2", 20)]}, t=3.0)
    b.record("kv-b", {"users": [change("k1", "v1-newer", 30, "kv-b")]}, t=4.0)
    b.record("kv-a", {"users": [change("k1", "v1-older", 5)]}, t=4.5)  # loses to what is there (LWW)

    def at(t: float) -> tuple[dict[str, str], dict[str, object]]:
        store, made = b.state_at(t, tmp_path / "restore")
        try:
            return values(store), made
        finally:
            store.close()

    assert at(0.5)[0] == {}
    got, made = at(2.5)
    assert got == {"k1": "v1"} and made["snapshot"] == 1 and made["wal_replayed"] == 0
    got, made = at(3.5)
    assert got == {"k1": "v1", "k2": "v2"} and made["wal_replayed"] == 1
    got, made = at(10.0)
    assert got == {"k1": "v1-newer", "k2": "v2"} and made["wal_replayed"] == 3
    assert made["digest"] == digest(b.state)  # the whole WAL replayed is the live state


def test_a_snapshot_whose_restore_differs_is_not_restored_from(tmp_path: Path) -> None:
    b = KvBackup(tmp_path / "b")
    b.record("kv-a", {"users": [change("k1", "v1", 10)]}, t=1.0)
    first = b.snapshot(t=2.0, wall=0.0, scratch=tmp_path / "s")
    b.record("kv-a", {"users": [change("k2", "v2", 20)]}, t=3.0)
    second = b.snapshot(t=4.0, wall=0.0, scratch=tmp_path / "s")
    manifest = b.snap_dir / f"{second.n:06d}" / MANIFEST
    manifest.write_text(json.dumps({**second.to_json(), "verified": "0" * 64}))  # its copy did not restore
    (b.snap_dir / "000099").mkdir()  # an interrupted copy: no manifest
    assert [s.n for s in b.snapshots()] == [first.n, second.n]
    store, made = b.state_at(5.0, tmp_path / "r")
    try:
        assert made["snapshot"] == first.n and made["wal_replayed"] == 1  # the older one, and the WAL after it
        assert values(store) == {"k1": "v1", "k2": "v2"}
    finally:
        store.close()


def test_a_malformed_change_writes_nothing(tmp_path: Path) -> None:
    b = KvBackup(tmp_path / "b")
    with pytest.raises(KvError):
        b.record("kv-a", {"users": [change("k1", "v1", 10), {"key": "!!"}]}, t=1.0)
    with pytest.raises(KvError):
        b.record("kv-a", {"../etc": [change("k1", "v1", 10)]}, t=1.0)
    assert b.lines == {} and not list(b.wal_dir.glob("*.jsonl"))


def test_the_digest_ignores_sequence_numbers_and_sees_every_field(tmp_path: Path) -> None:
    a, c = Store(tmp_path / "a", durable=False), Store(tmp_path / "c", durable=False)
    entries = [Entry(b"k1", b"v", None, None, 1, "n"), Entry(b"k2", b"w", None, None, 2, "n")]
    a.apply("ns", entries)
    c.apply("ns", list(reversed(entries)))
    assert digest(a) == digest(c)
    c.apply("ns", [Entry(b"k2", b"w", None, None, 3, "n", deleted=True)])
    assert digest(a) != digest(c)
