"""Restores from a backup store's parts into running services: the primary store's (``anylab
restore-backup``) and the DR region's copy's (a DR failover into the standby platform) — one definition
of each, whichever store holds the data and wherever it goes.

- KV (:func:`kv_into`): the state at a time built from the last verified snapshot and the WAL after it, and
  written into every master given (``/v1/replicate``, signed as ``backup``; last writer wins, so a
  master's newer data stays).
- The control plane (:func:`control_into`): the artifacts the state at a time names pushed to every
  control plane given, then etcd's keys made equal to it (puts and deletes in transactions of
  :data:`TXN_OPS`), read back and compared. A state with no keys is refused: made equal to it, etcd
  would lose every deployment.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from backup.kv import KvFiles
from backup.streams import BackupError, ControlBackup, state_digest
from control_plane.artifacts import Peer, Replicas
from control_plane.etcd import Etcd, EtcdError, b64, put
from control_plane.store import PREFIX
from core.clock import monotonic
from core.peer_auth import Signer
from core.service import signed_call
from kv.store import KvError

#: Entries per ``/v1/replicate`` request of a KV restore.
RESTORE_BATCH = 500
#: Operations per etcd transaction of a control-plane restore (etcd's default limit is 128).
TXN_OPS = 100
#: Request ids (``req/``) are replies kept for retries, not configuration: not backed up, not restored.
REQ = PREFIX + "req/"


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A backup service's refusals (BackupError, KvError) as ``{"error"}`` with their status."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except (KvError, BackupError) as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)


async def requested_at(request: web.Request) -> float:
    """The ``at`` of a restore request's JSON body ``{at?}`` (CLOCK_MONOTONIC seconds; absent: now).
    Raises BackupError for any other body."""
    try:
        data = await request.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BackupError("the body must be a JSON object: {at?}")
    at = data.get("at")
    if at is None:
        return monotonic()
    if not isinstance(at, int | float) or isinstance(at, bool) or at != at:
        raise BackupError("'at' must be a CLOCK_MONOTONIC time in seconds")
    return float(at)


def etcd_client(session: aiohttp.ClientSession, cfg: Mapping[str, Any]) -> Etcd:
    """An etcd client for ``cfg`` (``etcd``: client URLs, ``etcd_tls``: ca, cert and key files): its own
    certificate from the lab's etcd CA."""
    files = cfg["etcd_tls"]
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(str(files["cert"]), str(files["key"]))
    return Etcd(session, [str(u) for u in cfg["etcd"]], timeout=2.0, tls=context)


def artifact_stores(session: aiohttp.ClientSession, signer: Signer, cfg: Mapping[str, Any]) -> Replicas:
    """The control planes' artifact stores of ``cfg`` (``planes``: name, address, port), reached signed."""
    return Replicas(session, signer, [Peer(str(p["name"]), str(p["address"]), int(p["port"])) for p in cfg["planes"]])


def versions(keys: Mapping[str, str]) -> dict[str, str]:
    """Version → artifact SHA-256 of every ``v/`` key in ``keys`` (etcd key → base64 value)."""
    out = {}
    for k, v in keys.items():
        if k.startswith(PREFIX + "v/"):
            try:
                out[k.removeprefix(PREFIX + "v/")] = str(json.loads(base64.b64decode(v))["sha256"])
            except (ValueError, KeyError, TypeError):
                continue
    return out


async def kv_into(kv: KvFiles, at: float, scratch: Path, masters: Sequence[Mapping[str, Any]],
                  session: aiohttp.ClientSession, signer: Signer) -> dict[str, Any]:
    """Build the KV state at ``at`` (in ``scratch``) and write it into every master (name, address, port);
    what it was made of and what each master took. Raises KvError if a master refuses or cannot be
    reached (the others are still written)."""
    store, made_of = kv.state_at(at, scratch)
    written: dict[str, int] = {}
    errors = []
    try:
        batches = [(ns, [e.to_json() for e in entries[i:i + RESTORE_BATCH]])
                   for ns in store.namespaces() for entries in [list(store.all(ns))]
                   for i in range(0, len(entries), RESTORE_BATCH)]
    finally:
        store.close()
    for m in masters:
        written[m["name"]] = 0
        for ns, entries in batches:
            try:
                status, reply = await signed_call(session, signer, "POST", m["address"], m["port"],
                                                  "/v1/replicate", {"ns": ns, "entries": entries}, timeout=30.0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, reply = 0, str(exc) or type(exc).__name__
            if status != 200:
                errors.append(f"{m['name']}: HTTP {status}: {str(reply)[:200]}")
                break
            written[m["name"]] += len(entries)
    if errors:
        raise KvError("restore incomplete: " + "; ".join(errors), status=502)
    return {**made_of, "at": at, "entries": sum(len(e) for _, e in batches), "written": written}


async def control_into(control: ControlBackup, at: float, etcd: Etcd, stores: Replicas) -> dict[str, Any]:
    """Make etcd's keys (``req/`` aside) those ``control`` held at ``at``, after pushing the artifacts they
    name to every store of ``stores``; read back and compared. Raises BackupError (nothing in etcd
    changed when the state is empty, an artifact could not be pushed everywhere or etcd cannot be read)."""
    state, made_of = control.state_at(at)
    keys: dict[str, str] = state.get("keys", {})
    if not keys:  # made etcd equal to it, that would delete every deployment
        raise BackupError(f"the backup holds no control-plane state as of {at:.3f} (no snapshot by then and "
                          "no WAL line): nothing restored", status=409)
    pushed = 0
    for version, sha in versions(keys).items():
        data = control.artifact(sha)
        confirmed = await stores.push(sha, data, len(stores.peers))
        if len(confirmed) < len(stores.peers):
            raise BackupError(f"artifact of {version}: only {sorted(confirmed)} took it", status=502)
        pushed += 1
    try:
        kvs, _rev = await etcd.range(PREFIX, prefix=True)
        now = {kv.key: b64(kv.value) for kv in kvs if not kv.key.startswith(REQ)}
        ops = [put(k, base64.b64decode(v)) for k, v in sorted(keys.items()) if now.get(k) != v]
        ops += [{"request_delete_range": {"key": b64(k)}} for k in sorted(set(now) - set(keys))]
        for i in range(0, len(ops), TXN_OPS):
            await etcd.txn([], ops[i:i + TXN_OPS])
        kvs, revision = await etcd.range(PREFIX, prefix=True)
    except EtcdError as exc:
        raise BackupError(f"etcd: {exc}", status=502) from None
    after = {kv.key: b64(kv.value) for kv in kvs if not kv.key.startswith(REQ)}
    return {**made_of, "at": at, "keys": len(keys), "changed": len(ops), "artifacts": pushed,
            "revision": revision, "verified": state_digest({"keys": after}) == state_digest({"keys": keys})}
