"""The KV part of a backup store (the design's "continuous KV WAL" and "daily KV snapshots").

Under ``root``:

- ``wal/<master>.jsonl``: every change each master streamed (:mod:`kv.master`'s ``/v1/changes``), one JSON
  line per entry, in the order it arrived, with when (``t``, CLOCK_MONOTONIC) — appended and fsynced
  before the follower moves its cursor, so a record the store claims is on its disk.
- ``state/``: what the WAL makes, a :class:`kv.store.Store` (last writer wins, as on the masters).
- ``snapshots/<n>/``: a copy of ``state`` (SQLite's online backup) with ``manifest.json``: when, how many
  WAL lines of each master it holds, its digest, and the digest of the copy restored elsewhere
  (``verified``: the two equal).

The state at a time T (:meth:`KvBackup.state_at`): the last snapshot taken at or before T, plus every WAL
line after it that arrived at or before T. The WAL's shipping is asynchronous: what a master acknowledged
but the WAL had not received when everything was lost is the loss (the design's RPO 0 holds when the
follower keeps up; ``kv-global-loss`` counts it exactly).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import read_jsonl, write_atomic
from kv.store import Entry, KvError, Store, check_namespace

MANIFEST = "manifest.json"
WAL_DIR = "wal"


def keys_received(root: Path, ns: str, by: float) -> set[str]:
    """The keys of namespace ``ns`` the WAL of the backup store's KV part at ``root`` had received by
    ``by`` (CLOCK_MONOTONIC): what a restore as of ``by`` can bring back (keys that are not UTF-8 are
    shown with replacement characters)."""
    return {base64.b64decode(rec["entry"]["key"]).decode(errors="replace")
            for path in (root / WAL_DIR).glob("*.jsonl") for rec in read_jsonl(path)
            if rec["ns"] == ns and rec["t"] <= by}


def digest(store: Store) -> str:
    """A hash of every stored version in ``store`` (namespace, key, stamp, tombstone, value, metadata,
    expiration), the same for two stores that hold the same data whatever their sequence numbers."""
    h = hashlib.sha256()
    for ns in store.namespaces():
        for e in store.all(ns):
            h.update(json.dumps([ns, e.key.hex(), e.hlc, e.node, e.deleted, hashlib.sha256(e.value).hexdigest(),
                                 e.metadata, e.expiration]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A snapshot's manifest: its number, when (CLOCK_MONOTONIC and wall clock), the WAL lines of each
    master it holds, its digest and its restored copy's."""

    n: int
    t: float
    wall: float
    wal: dict[str, int]
    digest: str
    verified: str

    @property
    def ok(self) -> bool:
        return self.digest == self.verified

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "t": self.t, "wall": self.wall, "wal": self.wal, "digest": self.digest,
                "verified": self.verified}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        wal = {str(k): int(v) for k, v in data["wal"].items()}
        return cls(int(data["n"]), float(data["t"]), float(data["wall"]), wal, str(data["digest"]),
                   str(data["verified"]))


def list_snapshots(snap_dir: Path) -> list[Snapshot]:
    """Every snapshot under ``snap_dir`` with a manifest, oldest first (one without: an interrupted copy)."""
    out = []
    for d in snap_dir.iterdir() if snap_dir.is_dir() else ():
        try:
            out.append(Snapshot.from_json(json.loads((d / MANIFEST).read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda s: s.n)


class KvFiles:
    """A KV part's files under ``root``, read only: its snapshots and the state they and the WAL make at a
    time — what a restore reads, from the store or from a copy of it (which has no live state)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wal_dir = root / WAL_DIR
        self.snap_dir = root / "snapshots"

    def snapshots(self) -> list[Snapshot]:
        return list_snapshots(self.snap_dir)

    @staticmethod
    def restore_snapshot(snapshot_dir: Path, dest: Path) -> Store:
        """A store in ``dest`` holding ``snapshot_dir``'s data (the copy is applied entry by entry, as a
        restore onto a new machine would, not copied as files). The snapshot's databases are read from a
        copy beside ``dest``: SQLite would otherwise write into the snapshot (its journal, the store's
        marker), which must not change once its manifest is written (the DR copies it once)."""
        work = dest.with_name(f"{dest.name}.source")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for db in snapshot_dir.glob("*.db"):
            shutil.copyfile(db, work / db.name)
        source = Store(work, durable=False)
        target = Store(dest, durable=False)
        try:
            for ns in source.namespaces():
                target.apply(ns, [e for e in source.all(ns)])
        finally:
            source.close()
            shutil.rmtree(work, ignore_errors=True)
        return target

    def state_at(self, t: float, dest: Path) -> tuple[Store, dict[str, Any]]:
        """The KV data as the backup knew it at ``t`` (CLOCK_MONOTONIC), built in ``dest`` (emptied
        first): the last verified snapshot taken by ``t``, then the WAL lines after it that arrived by
        ``t``. Returns the store and what it was made of. Raises KvError if a WAL line is malformed."""
        shutil.rmtree(dest, ignore_errors=True)
        base = [s for s in self.snapshots() if s.t <= t and s.ok]
        snap = base[-1] if base else None
        store = (self.restore_snapshot(self.snap_dir / f"{snap.n:06d}", dest) if snap is not None
                 else Store(dest, durable=False))
        replayed = 0
        last = 0.0
        for path in sorted(self.wal_dir.glob("*.jsonl")):
            skip = snap.wal.get(path.stem, 0) if snap is not None else 0
            for rec in read_jsonl(path)[skip:]:
                if float(rec["t"]) > t:
                    break  # the WAL is in arrival order
                try:
                    store.apply(str(rec["ns"]), [Entry.from_json(rec["entry"])])
                except (KeyError, TypeError) as exc:
                    raise KvError(f"malformed WAL line in {path.name}: {exc}") from None
                replayed += 1
                last = max(last, float(rec["t"]))
        return store, {"snapshot": snap.n if snap is not None else None,
                       "snapshot_t": snap.t if snap is not None else None, "wal_replayed": replayed,
                       "last_wal_t": last or None, "digest": digest(store)}


class KvBackup(KvFiles):
    """One backup store's KV part under ``root`` (see the module's doc), with its live state. Not
    thread-safe: one follower process owns it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        self.state = Store(root / "state", durable=True)
        #: Lines in each master's WAL (what the state holds).
        self.lines = {p.stem: len(read_jsonl(p)) for p in self.wal_dir.glob("*.jsonl")}
        self.last_record: dict[str, float] = {}

    def record(self, master: str, changes: dict[str, list[dict[str, Any]]], t: float, wal: bool = True) -> int:
        """Append ``changes`` (namespace → entries, as ``/v1/changes`` gives them) from ``master`` to its WAL
        (on disk when this returns) and to the state; returns how many entries. ``wal=False`` is the
        test-only weakening (snapshots only: what a restore loses without the WAL). Raises KvError for a
        malformed entry or namespace (nothing of the batch written)."""
        lines = []
        by_ns: dict[str, list[Entry]] = {}
        for ns, entries in changes.items():
            check_namespace(ns)
            for raw in entries:
                entry = Entry.from_json(raw)
                by_ns.setdefault(ns, []).append(entry)
                lines.append(json.dumps({"t": t, "ns": ns, "entry": entry.to_json()}))
        if not lines:
            return 0
        if wal:
            path = self.wal_dir / f"{master}.jsonl"
            with path.open("a") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
        for ns, parsed in by_ns.items():
            self.state.apply(ns, parsed)
        self.lines[master] = self.lines.get(master, 0) + (len(lines) if wal else 0)
        self.last_record[master] = t
        return len(lines)

    def snapshot(self, t: float, wall: float, scratch: Path) -> Snapshot:
        """Copy the state into a new snapshot, restore that copy into ``scratch`` (a directory this makes
        and deletes) and record both digests. Raises OSError/sqlite3.Error if the copy cannot be made."""
        taken = self.snapshots()
        n = taken[-1].n + 1 if taken else 1
        d = self.snap_dir / f"{n:06d}"
        self.state.copy_to(d)
        expected = digest(self.state)
        shutil.rmtree(scratch, ignore_errors=True)
        restored = self.restore_snapshot(d, scratch)
        try:
            got = digest(restored)
        finally:
            restored.close()
            shutil.rmtree(scratch, ignore_errors=True)
        snap = Snapshot(n, t, wall, dict(self.lines), expected, got)
        write_atomic(d / MANIFEST, json.dumps(snap.to_json()))
        return snap
