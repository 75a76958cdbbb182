"""KV storage: one SQLite database (WAL) per namespace, last-writer-wins by (HLC, node), tombstones,
and a per-namespace change sequence for streaming.

Every row is the latest version of one key. Applying a version that wins (:func:`kv.hlc.wins`) replaces
the row and gives it the namespace's next sequence number, so "changes since N" (``seq > N``) is what a
follower that has seen up to N needs — intermediate versions of a key do not matter under LWW. Deletes
are rows with ``deleted = 1`` (tombstones), so a delete replicates like a put and beats older puts.

Keys are bytes (UTF-8 of the key string) and sort as such (SQLite compares BLOBs with memcmp), which is
Workers KV's list order. Masters open their databases with ``synchronous=FULL`` (a commit is on disk
before it returns: the fsync before acknowledging); replicas with ``NORMAL``.

Limits (Workers KV's): key ≤ 512 bytes, value ≤ 25 MiB, metadata ≤ 1024 bytes of JSON, list limit ≤ 1000;
an expiration at least :data:`MIN_TTL_S` ahead (Workers: 60 s; 1 s here so that expiry can be tested).
Violations raise :class:`KvError` naming the limit.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import AnylabError
from kv.hlc import wins

MAX_KEY = 512
MAX_VALUE = 25 * 1024 * 1024
MAX_METADATA = 1024
MAX_LIST = 1000
MIN_TTL_S = 1.0
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
  key BLOB PRIMARY KEY, value BLOB NOT NULL, metadata TEXT, expiration REAL,
  hlc INTEGER NOT NULL, node TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_seq ON kv(seq);
"""


class KvError(AnylabError):
    """A request KV refuses; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Entry:
    """One version of one key."""

    key: bytes
    value: bytes
    metadata: str | None
    expiration: float | None
    hlc: int
    node: str
    deleted: bool = False
    seq: int = 0

    def stamp(self) -> tuple[int, str]:
        return (self.hlc, self.node)

    def to_json(self) -> dict[str, Any]:
        return {"key": base64.b64encode(self.key).decode(), "value": base64.b64encode(self.value).decode(),
                "metadata": self.metadata, "expiration": self.expiration, "hlc": self.hlc, "node": self.node,
                "deleted": self.deleted, "seq": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """Raises KvError on a malformed entry."""
        try:
            return cls(base64.b64decode(data["key"]), base64.b64decode(data["value"]), data.get("metadata"),
                       None if data.get("expiration") is None else float(data["expiration"]), int(data["hlc"]),
                       str(data["node"]), bool(data.get("deleted", False)), int(data.get("seq", 0)))
        except (KeyError, ValueError, TypeError) as exc:
            raise KvError(f"malformed entry: {exc}") from None

    def live(self, now: float) -> bool:
        return not self.deleted and (self.expiration is None or self.expiration > now)


def check_namespace(ns: str) -> str:
    if not NAMESPACE_RE.match(ns):
        raise KvError(f"namespace {ns!r}: use 1–64 letters, digits, '_' or '-'")
    return ns


def check_key(key: str) -> bytes:
    raw = key.encode()
    if not raw:
        raise KvError("the key is empty (key_size: 1..512 bytes)")
    if len(raw) > MAX_KEY:
        raise KvError(f"the key is {len(raw)} bytes; the limit is {MAX_KEY} (key_size)")
    return raw


def metadata_text(metadata: Any) -> str | None:
    """A key's metadata as it is stored: compact JSON (None: none). One spelling, so that the replica's copy
    of an acknowledged write is the master's to the byte."""
    return None if metadata is None else json.dumps(metadata, separators=(",", ":"))


def check_put(key: str, value: bytes, metadata: Any, expiration: float | None, expiration_ttl: float | None,
              now: float) -> tuple[bytes, str | None, float | None]:
    """Validate a put; returns the key bytes, the metadata as JSON text and the absolute expiration."""
    raw = check_key(key)
    if len(value) > MAX_VALUE:
        raise KvError(f"the value is {len(value)} bytes; the limit is {MAX_VALUE} (25 MiB, value_size)", 413)
    meta = metadata_text(metadata)
    if meta is not None and len(meta.encode()) > MAX_METADATA:
        raise KvError(f"metadata is {len(meta.encode())} bytes of JSON; the limit is {MAX_METADATA} "
                      "(metadata_size)")
    if expiration is not None and expiration_ttl is not None:
        raise KvError("give expiration or expiration_ttl, not both")
    if expiration_ttl is not None:
        if expiration_ttl < MIN_TTL_S:
            raise KvError(f"expiration_ttl {expiration_ttl} s is under the minimum of {MIN_TTL_S:g} s (expiration)")
        expiration = now + expiration_ttl
    elif expiration is not None and expiration < now + MIN_TTL_S:
        raise KvError(f"expiration {expiration} is not at least {MIN_TTL_S:g} s in the future (expiration)")
    return raw, meta, expiration


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def decode_cursor(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor.encode())
    except (ValueError, TypeError):
        raise KvError(f"cursor {cursor!r} is not one this API gave out") from None


class Store:
    """The namespaces of one node under ``root``. Thread-safe (one lock: SQLite calls are short).

    ``incarnation`` names this copy of the data: made with the first database under ``root`` and kept
    with it, so a store whose disk was lost comes back under a new one. Its sequence numbers start again
    from 0, and a follower's cursor for the old incarnation means nothing for the new one."""

    def __init__(self, root: Path, durable: bool) -> None:
        self.root = root
        self.durable = durable
        root.mkdir(parents=True, exist_ok=True)
        marker = root / "incarnation"
        if not marker.exists() or not any(root.glob("*.db")):  # no data: whatever was followed is gone
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex)
            tmp.replace(marker)
        self.incarnation = marker.read_text().strip()
        self.lock = threading.RLock()
        self._db: dict[str, sqlite3.Connection] = {}
        self._seq: dict[str, int] = {}

    def namespaces(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.db"))

    def _conn(self, ns: str, create: bool = True) -> sqlite3.Connection | None:
        conn = self._db.get(ns)
        if conn is None:
            path = self.root / f"{check_namespace(ns)}.db"
            if not create and not path.exists():
                return None
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            conn.executescript(SCHEMA)
            self._db[ns] = conn
            self._seq[ns] = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM kv").fetchone()[0]
        return conn

    def seq(self, ns: str) -> int:
        with self.lock:
            return self._seq[ns] if self._conn(ns, create=False) is not None else 0

    def seqs(self) -> dict[str, int]:
        return {ns: self.seq(ns) for ns in self.namespaces()}

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Entry:
        return Entry(bytes(row[0]), bytes(row[1]), row[2], row[3], row[4], row[5], bool(row[6]), row[7])

    def current(self, ns: str, key: bytes) -> Entry | None:
        """The stored version of ``key`` (tombstones and expired ones too)."""
        with self.lock:
            conn = self._conn(ns, create=False)
            if conn is None:
                return None
            row = conn.execute("SELECT key, value, metadata, expiration, hlc, node, deleted, seq FROM kv "
                               "WHERE key = ?", (key,)).fetchone()
            return self._row(row) if row else None

    def apply(self, ns: str, entries: list[Entry]) -> list[Entry]:
        """Store each entry that wins over the stored version, in one transaction (committed, and with
        ``durable`` on disk, when this returns); returns the stored ones with their new ``seq``."""
        with self.lock:
            conn = self._conn(ns)
            assert conn is not None
            applied = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for e in entries:
                    row = conn.execute("SELECT hlc, node FROM kv WHERE key = ?", (e.key,)).fetchone()
                    if row is not None and not wins(e.stamp(), (row[0], row[1])):
                        continue
                    self._seq[ns] += 1
                    stored = replace(e, seq=self._seq[ns])
                    conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (stored.key, stored.value, stored.metadata, stored.expiration, stored.hlc,
                                  stored.node, int(stored.deleted), stored.seq))
                    applied.append(stored)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._seq[ns] = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM kv").fetchone()[0]
                raise
            return applied

    def get(self, ns: str, key: bytes, now: float) -> Entry | None:
        """The live value of ``key`` (not deleted, not expired), or None."""
        e = self.current(ns, key)
        return e if e is not None and e.live(now) else None

    def list_keys(self, ns: str, prefix: str, limit: int, cursor: str | None, now: float) -> dict[str, Any]:
        """Workers KV's list: live keys with ``prefix`` in UTF-8 byte order, ``limit`` ≤ 1000 at a time,
        then ``cursor`` to go on. Raises KvError for a bad limit or cursor."""
        if not 1 <= limit <= MAX_LIST:
            raise KvError(f"limit {limit}: use 1..{MAX_LIST} (list_limit)")
        start = decode_cursor(cursor) if cursor else b""
        raw_prefix = prefix.encode()
        with self.lock:
            conn = self._conn(ns, create=False)
            if conn is None:
                return {"keys": [], "list_complete": True, "cursor": None}
            rows = conn.execute(
                "SELECT key, expiration, metadata FROM kv WHERE key > ? AND substr(key, 1, ?) = ? "
                "AND deleted = 0 AND (expiration IS NULL OR expiration > ?) ORDER BY key LIMIT ?",
                (start, len(raw_prefix), raw_prefix, now, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        keys = [{"name": bytes(k).decode(errors="replace"), "expiration": exp,
                 "metadata": json.loads(meta) if meta else None} for k, exp, meta in rows]
        return {"keys": keys, "list_complete": not more, "cursor": encode_cursor(bytes(rows[-1][0])) if more else None}

    def changes(self, ns: str, since: int, limit: int = 1000) -> list[Entry]:
        with self.lock:
            conn = self._conn(ns, create=False)
            if conn is None:
                return []
            rows = conn.execute("SELECT key, value, metadata, expiration, hlc, node, deleted, seq FROM kv "
                                "WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit)).fetchall()
        return [self._row(r) for r in rows]

    def copy_to(self, dest: Path) -> None:
        """A consistent copy of every namespace's database into ``dest`` (SQLite's online backup, under
        the lock: no apply runs meanwhile). Raises OSError/sqlite3.Error."""
        dest.mkdir(parents=True, exist_ok=True)
        with self.lock:
            for ns in self.namespaces():
                conn = self._conn(ns, create=False)
                assert conn is not None
                target = sqlite3.connect(dest / f"{ns}.db")
                try:
                    conn.backup(target)
                finally:
                    target.close()

    def all(self, ns: str) -> Iterator[Entry]:
        """Every stored version (for convergence checks)."""
        with self.lock:
            conn = self._conn(ns, create=False)
            rows = [] if conn is None else conn.execute(
                "SELECT key, value, metadata, expiration, hlc, node, deleted, seq FROM kv ORDER BY key").fetchall()
        return (self._row(r) for r in rows)

    def close(self) -> None:
        with self.lock:
            for conn in self._db.values():
                conn.close()
            self._db.clear()
