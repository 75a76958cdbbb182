"""The DO and control-plane parts of a backup store (backup.streams): records applied as the hosts and etcd
send them, the state at a time across sources in arrival order, snapshots verified by reading them back
(a corrupted one never restored from), the WAL rebuilt at start, artifacts kept once and checked."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from backup.kv import MANIFEST
from backup.streams import STATE_FILE, BackupError, ControlBackup, ObjectsBackup

KEY = "counter/Counter/a"


def entry(seq: int, epoch: int, *ops: tuple[str, str, object]) -> dict[str, object]:
    return {"seq": seq, "epoch": epoch, "ops": [list(op) for op in ops]}


def test_an_objects_entries_apply_in_order_once_and_a_snapshot_replaces_only_an_older_copy(tmp_path: Path) -> None:
    b = ObjectsBackup(tmp_path / "do")
    b.record("eu", {"key": KEY, "entries": [entry(1, 1, ("put", "n", 1)), entry(2, 1, ("put", "n", 2))]}, t=1.0)
    b.record("eu", {"key": KEY, "entries": [entry(2, 1, ("put", "n", 99)), entry(3, 1, ("put", "m", 3))]}, t=2.0)
    assert b.state[KEY] == {"epoch": 1, "seq": 3, "data": {"n": 2, "m": 3}}  # seq 2 was held: not again
    assert b.cursors() == {KEY: [1, 3]}
    # The old owner's unshipped tail (seq 3) is replaced by the new owner's snapshot at a newer epoch...
    b.record("us", {"key": KEY, "snapshot": {"epoch": 2, "seq": 2, "data": {"n": 2}}}, t=3.0)
    assert b.state[KEY] == {"epoch": 2, "seq": 2, "data": {"n": 2}}
    # ... and an older epoch's snapshot arriving late changes nothing.
    b.record("eu", {"key": KEY, "snapshot": {"epoch": 1, "seq": 5, "data": {"n": 5}}}, t=4.0)
    assert b.state[KEY]["data"] == {"n": 2}
    b.record("us", {"key": KEY, "entries": [entry(3, 2, ("delete", "n", None), ("put", "z", [1]))]}, t=5.0)
    assert b.state[KEY] == {"epoch": 2, "seq": 3, "data": {"z": [1]}}


@pytest.mark.parametrize("rec", [
    {"key": "no-slashes", "entries": []},
    {"key": KEY},
    {"key": KEY, "snapshot": {"epoch": -1, "seq": 0, "data": {}}},
    {"key": KEY, "snapshot": {"epoch": 1, "seq": 0, "data": []}},
    {"key": KEY, "entries": [{"seq": 1, "epoch": 1, "ops": [["drop", "n", 1]]}]},
    {"key": KEY, "entries": [{"seq": "1", "epoch": 1, "ops": []}]},
])
def test_a_malformed_object_record_is_refused_and_changes_nothing(tmp_path: Path, rec: dict[str, object]) -> None:
    b = ObjectsBackup(tmp_path / "do")
    with pytest.raises(BackupError):
        b.record("eu", rec, t=1.0)
    assert b.state == {} and b.lines == {} and not list((tmp_path / "do" / "wal").iterdir())


def test_the_state_at_a_time_merges_the_hosts_records_and_a_fenced_owners_tail_is_not_applied(tmp_path: Path) -> None:
    b = ObjectsBackup(tmp_path / "do")
    b.record("eu", {"key": KEY, "entries": [entry(1, 1, ("put", "n", 1))]}, t=1.0)
    snap = b.snapshot(t=1.5, wall=0.0)
    assert snap.ok and snap.wal == {"eu": 1}
    b.record("us", {"key": KEY, "snapshot": {"epoch": 2, "seq": 1, "data": {"n": 1}}}, t=2.0)
    b.record("us", {"key": KEY, "entries": [entry(2, 2, ("put", "n", 2))]}, t=3.0)
    b.record("eu", {"key": KEY, "entries": [entry(2, 1, ("put", "n", 666))]}, t=2.5)  # a fenced owner's late tail
    assert b.state_at(1.2)[0][KEY]["data"] == {"n": 1}
    state, made = b.state_at(10.0)
    assert state[KEY] == {"epoch": 2, "seq": 2, "data": {"n": 2}}
    assert made["snapshot"] == 1 and made["wal_replayed"] == 3
    # A restart rebuilds the same state from the WAL.
    assert ObjectsBackup(tmp_path / "do").state == b.state


def test_a_snapshot_whose_copy_differs_is_never_restored_from(tmp_path: Path) -> None:
    b = ObjectsBackup(tmp_path / "do")
    b.record("eu", {"key": KEY, "entries": [entry(1, 1, ("put", "n", 1))]}, t=1.0)
    b.snapshot(t=2.0, wall=0.0)
    d = tmp_path / "do" / "snapshots" / "000001"
    manifest = json.loads((d / MANIFEST).read_text())
    (d / STATE_FILE).write_text(json.dumps({KEY: {"epoch": 1, "seq": 1, "data": {"n": "corrupt"}}}))
    manifest["verified"] = "0" * 64  # what the read-back of a bad copy records
    (d / MANIFEST).write_text(json.dumps(manifest))
    state, made = b.state_at(5.0)
    assert made["snapshot"] is None and state[KEY]["data"] == {"n": 1}  # from the WAL alone


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_control_planes_keys_follow_full_reads_and_watch_events(tmp_path: Path) -> None:
    b = ControlBackup(tmp_path / "cp")
    b.record("etcd", {"revision": 5, "full": {"/anylab/v/a": b64("1"), "/anylab/h/w": b64("[]")}}, t=1.0)
    b.record("etcd", {"revision": 6, "put": {"/anylab/h/w": b64("[1]")}, "delete": ["/anylab/v/a"]}, t=2.0)
    assert b.state == {"revision": 6, "keys": {"/anylab/h/w": b64("[1]")}}
    b.record("etcd", {"revision": 9, "full": {"/anylab/x": b64("2")}}, t=3.0)  # after a broken watch
    assert b.state["keys"] == {"/anylab/x": b64("2")} and b.revision == 9
    assert b.state_at(2.5)[0]["keys"] == {"/anylab/h/w": b64("[1]")}
    with pytest.raises(BackupError):
        b.record("etcd", {"revision": 10, "put": ["not", "a", "map"]}, t=4.0)


def test_an_artifact_is_kept_once_read_only_and_checked_on_every_read(tmp_path: Path) -> None:
    b = ControlBackup(tmp_path / "cp")
    data = b'{"code": "x"}'
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(BackupError, match="do not hash"):
        b.put_artifact(sha, data + b" ")
    b.put_artifact(sha, data)
    path = tmp_path / "cp" / "artifacts" / sha
    assert path.stat().st_mode & 0o777 == 0o444 and b.artifact(sha) == data
    b.put_artifact(sha, data)  # again: a no-op
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(BackupError, match="corrupt"):
        b.artifact(sha)
    with pytest.raises(BackupError, match="not an artifact name"):
        b.artifact("../etc/passwd")
