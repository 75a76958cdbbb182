"""Durable Object storage: transactions, shipping the log to a backup, and fencing an old owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from durable.storage import Fenced, ObjectStore


@pytest.fixture
def owner(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "owner" / "obj.db")


def test_get_put_delete_list(owner: ObjectStore) -> None:
    owner.put("a/1", {"n": 1}, epoch=1)
    owner.put("a/2", [2], epoch=1)
    owner.put("b", "x", epoch=1)
    owner.delete("a/2", epoch=1)
    assert owner.get("a/1") == {"n": 1} and owner.get("a/2") is None
    assert owner.list("a/") == {"a/1": {"n": 1}} and list(owner.list()) == ["a/1", "b"]


def test_a_transaction_commits_all_or_nothing(owner: ObjectStore) -> None:
    owner.put("balance", 10, epoch=1)
    with owner.transaction(epoch=1) as tx:
        tx.put("balance", tx.get("balance") - 3)
        assert tx.get("balance") == 7 and owner.get("balance") == 10  # not visible outside before commit
        tx.put("history", ["-3"])
    assert owner.get("balance") == 7 and owner.seq == 2
    with pytest.raises(RuntimeError), owner.transaction(epoch=1) as tx:
        tx.put("balance", 0)
        raise RuntimeError("the handler failed")
    assert owner.get("balance") == 7 and owner.seq == 2


def test_the_backup_replays_the_log_once_and_in_order(owner: ObjectStore, tmp_path: Path) -> None:
    backup = ObjectStore(tmp_path / "backup" / "obj.db")
    for i in range(5):
        owner.put(f"k{i}", i, epoch=1)
    assert backup.replay(owner.log_since(0)[:3]) == 3
    assert backup.replay(owner.log_since(1)) == 5  # overlapping shipment: applied once
    assert backup.list() == owner.list()
    with pytest.raises(Exception, match="log gap"):
        ObjectStore(tmp_path / "other" / "obj.db").replay(owner.log_since(2))


def test_an_old_owner_is_fenced(owner: ObjectStore, tmp_path: Path) -> None:
    """The backup takes over at epoch 2; the old owner, healed from its partition, tries to write with
    epoch 1 where the new epoch is known: refused, nothing changes."""
    owner.put("k", "before", epoch=1)
    new_owner = ObjectStore(tmp_path / "backup" / "obj.db")
    new_owner.replay(owner.log_since(0))
    new_owner.fence(2)
    new_owner.put("k", "after", epoch=2)
    with pytest.raises(Fenced, match="no longer current"):
        new_owner.put("k", "stale owner", epoch=1)
    owner.fence(2)  # the directory's new epoch reaches the old owner's store
    with pytest.raises(Fenced), owner.transaction(epoch=1) as tx:
        tx.put("k", "stale owner")
    assert owner.get("k") == "before" and new_owner.get("k") == "after"
    new_owner.fence(1)  # epochs never go backwards
    assert new_owner.epoch == 2


def test_an_old_owners_unshipped_tail_is_replaced_not_kept(tmp_path: Path) -> None:
    """A (async) owner wrote seq 3 and 4 that never reached the backup, then lost the object; the new
    owner writes its own seq 3 at the next epoch. When the old owner becomes a backup again, the new
    entries must not be skipped as "already here": it takes a snapshot instead."""
    old, new = ObjectStore(tmp_path / "a.db"), ObjectStore(tmp_path / "b.db")
    for i in (1, 2):
        old.put("v", i, epoch=1)
    new.replay(old.log_since(0))  # the backup has 1 and 2
    old.put("v", "lost-3", epoch=1)
    old.put("v", "lost-4", epoch=1)
    new.fence(2)  # promoted
    new.put("v", "new-3", epoch=2)
    old.fence(2)  # the old owner hears of it
    entries = new.log_since(2)
    assert not old.follows(entries)  # another epoch's history: snapshot first
    old.install(new.snapshot())
    assert old.get("v") == "new-3" and old.seq == 3 and old.data_epoch == 2
    new.put("v", "new-4", epoch=2)
    assert old.follows(new.log_since(3))
    old.replay(new.log_since(3))
    assert old.get("v") == "new-4"


def test_snapshots_respect_fences_and_do_not_go_backwards(tmp_path: Path) -> None:
    owner, backup = ObjectStore(tmp_path / "o.db"), ObjectStore(tmp_path / "b.db")
    owner.fence(3)
    owner.put("k", 1, epoch=3)
    snap = owner.snapshot()
    assert backup.install(snap) == 1
    owner.put("k", 2, epoch=3)
    backup.install(owner.snapshot())
    assert backup.install(snap) == 2 and backup.get("k") == 2  # an older snapshot of the same epoch: ignored
    backup.fence(4)
    with pytest.raises(Fenced):
        backup.install(owner.snapshot())
    owner.truncate(1)
    assert [e["seq"] for e in owner.log_since(0)] == [2]
