"""The backup store's parts for the Durable Objects and the control plane: a WAL of what each source
streamed, the state it makes (JSON), snapshots verified by restoring them, and the state as of a time.

Under ``root``:

- ``wal/<source>.jsonl``: every record a source streamed, one JSON line each with when it arrived
  (``t``, CLOCK_MONOTONIC), appended and fsynced before the follower moves its cursor.
- ``snapshots/<n>/state.json`` and ``manifest.json`` (:class:`backup.kv.Snapshot`): the state, how many
  WAL lines of each source it holds, its digest and the digest of the copy read back from the disk
  (``verified``); one that differs is never restored from.

The state is rebuilt from the WAL at start (the stores are small; the KV part keeps a SQLite state
because the KV data is not). The state at a time T (:meth:`StreamBackup.state_at`): the last verified
snapshot taken by T, then every WAL line after it that arrived by T, all sources merged in arrival order
(a Durable Object moves between hosts: its records from two sources must apply in the order they came).

Two kinds, one interface (:meth:`StreamBackup.apply`):

- :class:`ObjectsBackup`: per object ``script/Class/id``, ``{epoch, seq, data}``; a record is a host's
  log entries (``entries``, applied when they follow what is held) or a whole object (``snapshot``,
  which replaces an older epoch's or sequence's copy).
- :class:`ControlBackup`: the control plane's etcd keys (base64 values), from a full read (``full``,
  replacing everything) or a watch's events (``put``/``delete``); and the code artifacts the state names,
  content-addressed files written once, read-only, their hash checked on every read.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
from pathlib import Path
from typing import Any

from backup.kv import MANIFEST, WAL_DIR, Snapshot, list_snapshots
from core.errors import AnylabError
from core.files import read_jsonl, write_atomic

STATE_FILE = "state.json"
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BackupError(AnylabError):
    """A malformed record, a snapshot that cannot be read, an artifact whose bytes do not hash, a restore
    not done; ``status``: the HTTP status the service answers it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def state_digest(state: dict[str, Any]) -> str:
    """A hash of the state's canonical JSON (the same for equal states)."""
    return hashlib.sha256(json.dumps(state, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class StreamBackup:
    """One part of a backup store under ``root`` (see the module's doc). Not thread-safe: one event loop
    owns it. Subclasses say how a record changes the state (:meth:`apply`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wal_dir = root / WAL_DIR
        self.snap_dir = root / "snapshots"
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.last_record: dict[str, float] = {}
        for rec in self._merged({}, float("inf")):
            self.apply(self.state, rec)
        self.lines = {p.stem: len(read_jsonl(p)) for p in self.wal_dir.glob("*.jsonl")}

    @staticmethod
    def apply(state: dict[str, Any], rec: dict[str, Any]) -> None:
        """Change ``state`` by one record; raises BackupError for a malformed one (state unchanged)."""
        raise NotImplementedError

    def record(self, source: str, rec: dict[str, Any], t: float, wal: bool = True) -> None:
        """Apply ``rec`` from ``source`` and append it to that source's WAL (on disk when this returns;
        ``wal=False``: the test-only weakening, state only). Raises BackupError (nothing written)."""
        line = {**rec, "t": t}
        self.apply(self.state, line)
        if wal:
            with (self.wal_dir / f"{source}.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.lines[source] = self.lines.get(source, 0) + 1
        self.last_record[source] = t

    def snapshots(self) -> list[Snapshot]:
        return list_snapshots(self.snap_dir)

    def snapshot(self, t: float, wall: float) -> Snapshot:
        """Write the state as a new snapshot, read it back and record both digests. Raises OSError."""
        taken = self.snapshots()
        n = taken[-1].n + 1 if taken else 1
        d = self.snap_dir / f"{n:06d}"
        d.mkdir(parents=True, exist_ok=True)
        expected = state_digest(self.state)
        write_atomic(d / STATE_FILE, json.dumps(self.state, sort_keys=True))
        with (d / STATE_FILE).open("rb") as f:
            os.fsync(f.fileno())
        got = state_digest(self.load_snapshot(d))
        snap = Snapshot(n, t, wall, dict(self.lines), expected, got)
        write_atomic(d / MANIFEST, json.dumps(snap.to_json()))
        return snap

    @staticmethod
    def load_snapshot(d: Path) -> dict[str, Any]:
        """A snapshot's state as on the disk; raises BackupError if it cannot be read."""
        try:
            state = json.loads((d / STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise BackupError(f"snapshot {d.name}: {exc}") from None
        if not isinstance(state, dict):
            raise BackupError(f"snapshot {d.name}: not a JSON object")
        return state

    def _merged(self, skip: dict[str, int], by: float) -> list[dict[str, Any]]:
        """Every source's WAL lines after the first ``skip[source]`` that arrived by ``by``, in arrival
        order across sources (each file is already in it)."""
        streams = [[r for r in read_jsonl(p)[skip.get(p.stem, 0):] if float(r.get("t", 0.0)) <= by]
                   for p in sorted(self.wal_dir.glob("*.jsonl"))]
        return list(heapq.merge(*streams, key=lambda r: float(r["t"])))

    def state_at(self, t: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state as the backup knew it at ``t`` (CLOCK_MONOTONIC) and what it was made of. Raises
        BackupError for a malformed WAL line or unreadable snapshot."""
        base = [s for s in self.snapshots() if s.t <= t and s.ok]
        snap = base[-1] if base else None
        state = self.load_snapshot(self.snap_dir / f"{snap.n:06d}") if snap is not None else {}
        replayed = self._merged(snap.wal if snap is not None else {}, t)
        for rec in replayed:
            self.apply(state, rec)
        return state, {"snapshot": snap.n if snap is not None else None,
                       "snapshot_t": snap.t if snap is not None else None, "wal_replayed": len(replayed),
                       "last_wal_t": float(replayed[-1]["t"]) if replayed else None, "digest": state_digest(state)}


def _int(rec: dict[str, Any], name: str) -> int:
    value = rec.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BackupError(f"record field {name!r} must be a non-negative integer, not {value!r}")
    return value


class ObjectsBackup(StreamBackup):
    """The Durable Objects' part: ``state[key] = {"epoch", "seq", "data"}``."""

    @staticmethod
    def apply(state: dict[str, Any], rec: dict[str, Any]) -> None:
        key = rec.get("key")
        if not isinstance(key, str) or key.count("/") != 2:
            raise BackupError(f"record without an object key (script/Class/id): {key!r}")
        held = state.get(key)
        if "snapshot" in rec:
            snap = rec["snapshot"]
            if not isinstance(snap, dict) or not isinstance(snap.get("data"), dict):
                raise BackupError(f"{key}: a snapshot must be {{epoch, seq, data}}")
            epoch, seq = _int(snap, "epoch"), _int(snap, "seq")
            if held is None or (epoch, seq) >= (held["epoch"], held["seq"]):
                state[key] = {"epoch": epoch, "seq": seq, "data": dict(snap["data"])}
            return
        entries = rec.get("entries")
        if not isinstance(entries, list):
            raise BackupError(f"{key}: a record is a snapshot or entries")
        cur_epoch, cur_seq = (int(held["epoch"]), int(held["seq"])) if held is not None else (0, 0)
        data = dict(held["data"]) if held is not None else {}
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("ops"), list):
                raise BackupError(f"{key}: malformed log entry {str(e)[:100]}")
            seq, epoch = _int(e, "seq"), _int(e, "epoch")
            if seq <= cur_seq or epoch < cur_epoch:
                continue  # already held (a host sends from the cursor it was given), or a fenced owner's tail
            for op in e["ops"]:
                if not (isinstance(op, list) and len(op) == 3 and op[0] in ("put", "delete")
                        and isinstance(op[1], str)):
                    raise BackupError(f"{key}: malformed operation {str(op)[:100]}")
                if op[0] == "put":
                    data[op[1]] = op[2]
                else:
                    data.pop(op[1], None)
            cur_seq, cur_epoch = seq, max(cur_epoch, epoch)
        state[key] = {"epoch": cur_epoch, "seq": cur_seq, "data": data}

    def cursors(self) -> dict[str, list[int]]:
        """What the hosts are asked from: per object, the epoch and sequence held."""
        return {k: [v["epoch"], v["seq"]] for k, v in self.state.items()}


class ControlBackup(StreamBackup):
    """The control plane's part: ``state = {"revision": int, "keys": {etcd key: base64 value}}``, and
    the artifacts under ``root/artifacts``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.artifacts = root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def apply(state: dict[str, Any], rec: dict[str, Any]) -> None:
        revision = _int(rec, "revision")
        if "full" in rec:
            full = rec["full"]
            if not isinstance(full, dict) or not all(isinstance(v, str) for v in full.values()):
                raise BackupError("a full read must be {key: base64 value}")
            state["keys"] = dict(full)
        else:
            puts, deletes = rec.get("put", {}), rec.get("delete", [])
            if not isinstance(puts, dict) or not isinstance(deletes, list):
                raise BackupError("a change must be {put: {key: value}, delete: [key]}")
            keys = dict(state.get("keys", {}))
            for k in deletes:
                keys.pop(str(k), None)
            keys.update({str(k): str(v) for k, v in puts.items()})
            state["keys"] = keys
        state["revision"] = max(int(state.get("revision", 0)), revision)

    @property
    def revision(self) -> int:
        return int(self.state.get("revision", 0))

    def has_artifact(self, sha: str) -> bool:
        return (self.artifacts / sha).is_file()

    def put_artifact(self, sha: str, data: bytes) -> None:
        """Keep an artifact's bytes: once (an artifact is immutable: one already here is never written
        again), read-only. Raises BackupError if ``data`` does not hash to ``sha``."""
        if not SHA_RE.match(sha) or hashlib.sha256(data).hexdigest() != sha:
            raise BackupError(f"artifact {sha[:16]}: the bytes do not hash to its name")
        path = self.artifacts / sha
        if path.exists():
            return
        tmp = self.artifacts / f".{sha}.tmp"
        tmp.write_bytes(data)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o444)
        tmp.replace(path)

    def artifact(self, sha: str) -> bytes:
        """An artifact's bytes, checked; raises BackupError if missing or corrupt."""
        if not SHA_RE.match(sha):
            raise BackupError(f"not an artifact name: {sha[:80]!r}")
        try:
            data = (self.artifacts / sha).read_bytes()
        except OSError:
            raise BackupError(f"artifact {sha[:16]} is not in the backup") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise BackupError(f"artifact {sha[:16]} in the backup is corrupt")
        return data
