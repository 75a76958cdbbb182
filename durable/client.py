"""The operator's side of Durable Objects: the directory's and the hosts' state over their Unix sockets
(the lab is never routed from the root namespace), object keys from names, waiting for leases."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from core import unix_http
from core.errors import AnylabError
from core.wait import wait_for
from tenant.worker_api import DurableObjectNamespace


def _get(sock: Path, url: str, what: str) -> dict[str, Any]:
    try:
        status, body = unix_http.request(str(sock), "GET", url, timeout=5.0)
    except (OSError, http.client.HTTPException) as exc:
        raise AnylabError(f"{what} does not answer on {sock}: {exc}") from None
    if status != 200:
        raise AnylabError(f"{what} answered {status}: {body[:200].decode(errors='replace')}")
    reply: dict[str, Any] = json.loads(body)
    return reply


def directory(control_dir: Path) -> dict[str, Any]:
    """The directory's listing: regions (live, last renewal) and objects (owner, epoch, backup).
    Raises AnylabError if it does not answer."""
    return _get(control_dir / "do.sock", "/v1/objects", "the DO directory")


def host(node_dir: Path) -> dict[str, Any]:
    """A region's DO host: lease, owned objects (sequence, backup), shipping lag. Raises AnylabError."""
    return _get(node_dir / "do.sock", "/v1/status", f"the DO host in {node_dir.name}")


def key_of(namespace: str, name: str) -> str:
    """``script/Class`` and an object name → the object's key (what ``id_from_name`` makes). Raises
    AnylabError for a namespace not of that form."""
    script, _, cls = namespace.partition("/")
    if not script or not cls.isidentifier():
        raise AnylabError(f"namespace {namespace!r}: write it as SCRIPT/Class, e.g. reg/Register")
    ns = DurableObjectNamespace(script, cls)
    return ns.get(ns.id_from_name(name)).key


def wait_leases(control_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until every region's host renews its lease; returns the listing. Raises WaitTimeout."""

    def probe() -> dict[str, Any] | None:
        listing = directory(control_dir)
        fresh = all(r["live"] and r["last_renewal_s"] < listing["lease_s"] for r in listing["regions"].values())
        return listing if fresh else None

    return wait_for(probe, timeout=timeout, what="every region's DO host to hold a lease", interval=0.1)
