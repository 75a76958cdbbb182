"""A Durable Object's storage: one SQLite database per object, a logical log for shipping to the backup
region, and fencing by epoch.

- ``get/put/delete/list`` and ``transaction()`` (all-or-nothing, one SQLite transaction) are the
  ``state.storage`` API; values are JSON.
- Every committed change also goes to the object's log (``seq``, the operations), which is what the
  owner ships to its backup region: :meth:`ObjectStore.log_since` on the owner, :meth:`ObjectStore.replay`
  on the backup (idempotent: a sequence number is applied once).
- **Fencing**: the store knows the object's current epoch (``fence``): a write carrying an older epoch
  raises :class:`Fenced` ("no longer current") and changes nothing. An old owner that comes back after a
  partition therefore cannot write, whatever it believes.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import AnylabError

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, ops TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


class Fenced(AnylabError):
    """A write from an owner whose epoch is no longer current."""


class Transaction:
    """Writes collected inside ``transaction()``; reads see them."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.ops: list[tuple[str, str, Any]] = []

    def get(self, key: str) -> Any:
        for op, k, v in reversed(self.ops):
            if k == key:
                return v if op == "put" else None
        return self.store.get(key)

    def put(self, key: str, value: Any) -> None:
        json.dumps(value)  # refuse what cannot be stored before the commit
        self.ops.append(("put", key, value))

    def delete(self, key: str) -> None:
        self.ops.append(("delete", key, None))


class ObjectStore:
    """The storage of one object at one node (owner or backup)."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    # -- reads -------------------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, prefix: str = "") -> dict[str, Any]:
        rows = self.db.execute("SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
                               (len(prefix), prefix)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def _meta(self, name: str) -> int:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def epoch(self) -> int:
        return self._meta("epoch")

    @property
    def seq(self) -> int:
        return self._meta("seq")

    @property
    def data_epoch(self) -> int:
        """The epoch whose history this copy follows (of its last entry or snapshot): a backup takes log
        entries only from that epoch, anything else needs a snapshot (an old owner's unshipped tail
        would otherwise survive under sequence numbers the new owner reuses)."""
        return self._meta("data_epoch")

    # -- fencing and writes --------------------------------------------------------------------------

    def fence(self, epoch: int) -> None:
        """From now on only writers of ``epoch`` (or later) may write; never goes backwards."""
        with self.lock:
            if epoch > self.epoch:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))

    def _commit(self, epoch: int, ops: builtins.list[tuple[str, str, Any]], seq: int | None = None) -> int:
        with self.lock:
            if epoch < self.epoch:
                raise Fenced(f"epoch {epoch} is no longer current (the object is at epoch {self.epoch}): "
                             "this node is not the owner any more")
            if not ops:
                return self.seq
            new_seq = self.seq + 1 if seq is None else seq
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for op, key, value in ops:
                    if op == "put":
                        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))
                    else:
                        self.db.execute("DELETE FROM kv WHERE key = ?", (key,))
                self.db.execute("INSERT INTO log VALUES (?, ?, ?)", (new_seq, epoch, json.dumps(ops)))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (new_seq,))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('data_epoch', ?)", (epoch,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return new_seq

    def put(self, key: str, value: Any, epoch: int) -> int:
        """Store one value as owner of ``epoch``; returns the log sequence number. Raises Fenced."""
        json.dumps(value)
        return self._commit(epoch, [("put", key, value)])

    def delete(self, key: str, epoch: int) -> int:
        return self._commit(epoch, [("delete", key, None)])

    @contextmanager
    def transaction(self, epoch: int) -> Iterator[Transaction]:
        """All the writes inside commit together when the block ends without an exception, or none do.
        Raises Fenced at the commit if the epoch is no longer current."""
        tx = Transaction(self)
        yield tx
        self._commit(epoch, tx.ops)

    # -- shipping to the backup ----------------------------------------------------------------------

    def log_since(self, seq: int) -> builtins.list[dict[str, Any]]:
        rows = self.db.execute("SELECT seq, epoch, ops FROM log WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
        return [{"seq": s, "epoch": e, "ops": json.loads(o)} for s, e, o in rows]

    def follows(self, entries: builtins.list[dict[str, Any]]) -> bool:
        """Whether :meth:`replay` can take ``entries`` (same epoch's history, no gap); else the sender
        must install a snapshot first."""
        if not entries:
            return True
        first = entries[0]
        if self.seq == 0 and self.data_epoch == 0:
            return int(first["seq"]) == 1
        return int(first["epoch"]) == self.data_epoch and int(first["seq"]) <= self.seq + 1

    def replay(self, entries: builtins.list[dict[str, Any]]) -> int:
        """Apply shipped log entries in order, each once (sequence numbers already here are skipped);
        returns the sequence reached. Entries from a fenced epoch raise Fenced."""
        for entry in entries:
            if entry["seq"] <= self.seq:
                continue
            if entry["seq"] != self.seq + 1:
                raise AnylabError(f"log gap: have {self.seq}, got {entry['seq']}; ship from {self.seq}")
            self._commit(int(entry["epoch"]), [tuple(op) for op in entry["ops"]], entry["seq"])
        return self.seq

    def snapshot(self) -> dict[str, Any]:
        """The whole object as of now: ``{"seq", "epoch", "data"}`` (what a backup is seeded with)."""
        with self.lock:
            # The owner's own epoch: what a backup follows from here on (it may not have written yet).
            return {"seq": self.seq, "epoch": max(self.epoch, self.data_epoch), "data": self.list()}

    def install(self, snapshot: dict[str, Any]) -> int:
        """Replace this copy with ``snapshot`` unless this copy already follows the same epoch as far;
        returns the sequence reached. A snapshot from a fenced epoch raises Fenced."""
        with self.lock:
            epoch = int(snapshot["epoch"])
            if epoch < self.epoch:
                raise Fenced(f"snapshot of epoch {epoch} is no longer current (the object is at "
                             f"epoch {self.epoch})")
            if epoch == self.data_epoch and int(snapshot["seq"]) <= self.seq and self.seq:
                return self.seq
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("DELETE FROM kv")
                self.db.execute("DELETE FROM log")
                self.db.executemany("INSERT INTO kv VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in snapshot["data"].items()])
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (int(snapshot["seq"]),))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('data_epoch', ?)", (epoch,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return self.seq

    def truncate(self, upto: int) -> None:
        """Forget log entries up to ``upto`` (shipped and covered by a snapshot at the backup)."""
        with self.lock:
            self.db.execute("DELETE FROM log WHERE seq <= ?", (upto,))

    def close(self) -> None:
        self.db.close()
