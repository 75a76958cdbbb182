"""Copying a backup store to the DR region, and keeping snapshots for as long as they are kept.

**What is copied** (:func:`index`): the WALs (append-only: copied from where the copy ends), every
snapshot whose manifest is written (immutable from then on: each file copied once, its SHA-256 checked)
and the code artifacts (immutable, named by their hash). Nothing else: the live state, cursors and scratch
directories are the primary's own. A path the index names is checked against :data:`PATH_RE` on both
sides, so neither a primary nor a DR copy can make the other read or write outside its store.

**Verification at the DR** (:func:`verify_snapshot`): each snapshot copied is restored there (KV: applied
into a scratch store; DO and control: read back) and its digest compared with the manifest's.

**Retention** (:func:`expired`): a store keeps a part's snapshots taken within ``keep_s`` and always its
newest verified one (a restore needs a base); the DR's cold archive keeps each snapshot ``archive_s``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backup.kv import MANIFEST, KvBackup, Snapshot, digest, list_snapshots
from backup.streams import BackupError, StreamBackup, state_digest

#: The parts of a store and the files of each that are copied.
PARTS = ("kv", "do", "control")
PATH_RE = re.compile(r"^(kv|do|control)/(wal/[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\.jsonl|"
                     r"snapshots/[0-9]{6}/([A-Za-z0-9_-]{1,64}\.db|state\.json|manifest\.json)|"
                     r"artifacts/[0-9a-f]{64})$")


def check_path(rel: str) -> str:
    """``rel`` if it is a path a store copies; raises BackupError otherwise (``..``, absolute, other files)."""
    if not PATH_RE.match(rel) or ".." in rel.split("/"):
        raise BackupError(f"not a path of a backup store: {rel[:120]!r}")
    return rel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Index:
    """The files of a store to copy, with their sizes and (immutable ones) hashes, the hashes computed once
    per file (a snapshot file never changes once its manifest is there)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hashes: dict[str, tuple[int, str]] = {}

    def files(self) -> dict[str, dict[str, Any]]:
        """Relative path → ``{size, sha256?}`` (no hash for a WAL, which grows)."""
        out: dict[str, dict[str, Any]] = {}
        for part in PARTS:
            base = self.root / part
            for wal in sorted((base / "wal").glob("*.jsonl")):
                out[f"{part}/wal/{wal.name}"] = {"size": wal.stat().st_size}
            for snap in sorted((base / "snapshots").glob("[0-9]" * 6)):
                if not (snap / MANIFEST).is_file():
                    continue  # still being written
                for f in sorted(snap.iterdir()):
                    rel = f"{part}/snapshots/{snap.name}/{f.name}"
                    if f.is_file() and PATH_RE.match(rel):
                        out[rel] = self._entry(f)
            for art in sorted((base / "artifacts").glob("[0-9a-f]" * 64)):
                out[f"{part}/artifacts/{art.name}"] = self._entry(art)
        return {k: v for k, v in out.items() if PATH_RE.match(k)}

    def _entry(self, path: Path) -> dict[str, Any]:
        rel = str(path.relative_to(self.root))
        size = path.stat().st_size
        held = self.hashes.get(rel)
        if held is None or held[0] != size:
            held = self.hashes[rel] = (size, _sha256(path))
        return {"size": size, "sha256": held[1]}


def read_range(root: Path, rel: str, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of a store's file from ``offset``; raises BackupError for a bad path or one
    not there."""
    path = root / check_path(rel)
    try:
        with path.open("rb") as f:
            f.seek(max(0, offset))
            return f.read(limit)
    except OSError as exc:
        raise BackupError(f"{rel}: {exc.strerror}", status=404) from None


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (made with its directory), on the disk when this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def place(path: Path, data: bytes, sha256: str) -> None:
    """Write an immutable file once: its hash checked, on the disk, then renamed into place, read-only.
    Raises BackupError if ``data`` does not hash to ``sha256``."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BackupError(f"{path.name}: the bytes do not hash to what the index says")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.chmod(0o444)
    tmp.replace(path)


def verify_snapshot(part: str, snap_dir: Path, scratch: Path) -> bool:
    """Whether the snapshot in ``snap_dir`` restores to the digest its manifest records (KV: applied into
    ``scratch``, made and deleted here; DO and control: read back). False for one that cannot be read."""
    try:
        manifest = Snapshot.from_json(json.loads((snap_dir / MANIFEST).read_text()))
        if part == "kv":
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                store = KvBackup.restore_snapshot(snap_dir, scratch)
                try:
                    got = digest(store)
                finally:
                    store.close()
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            got = state_digest(StreamBackup.load_snapshot(snap_dir))
    except (OSError, ValueError, KeyError, TypeError, BackupError):
        return False
    except Exception:  # sqlite3.DatabaseError from a corrupt copy: not a good snapshot either
        return False
    return got == manifest.digest


def expired(snapshots: Iterable[Snapshot], now: float, keep_s: float) -> list[int]:
    """The snapshot numbers to delete: those taken more than ``keep_s`` before ``now``, except the newest
    verified one of all (a part never loses its last good base)."""
    snaps = sorted(snapshots, key=lambda s: s.n)
    good = [s.n for s in snaps if s.ok]
    keep_last = good[-1] if good else None
    return [s.n for s in snaps if now - s.t > keep_s and s.n != keep_last]


def prune(snap_dir: Path, now: float, keep_s: float) -> list[int]:
    """Delete the snapshots in ``snap_dir`` :func:`expired` names; returns their numbers. The manifest goes
    first, so that a half-deleted snapshot is never taken for a whole one."""
    gone = expired(list_snapshots(snap_dir), now, keep_s)
    for n in gone:
        d = snap_dir / f"{n:06d}"
        (d / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
    return gone
