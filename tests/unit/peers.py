"""Peer keys for unit tests that run the lab's services in-process (:mod:`core.peer_auth`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.daemon import write_private
from core.peer_auth import PeerKeys, Signer, node_key


def auth_block(keys: PeerKeys, prefix: Path, peer: str | None, accept: tuple[str, ...] = ()) -> dict[str, Any]:
    """A service's ``auth`` config block, its key files written (``prefix`` + their names)."""
    block, files = keys.auth_config(prefix, peer, accept)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        write_private(path, text)
    return block


def signer(keys: PeerKeys, peer: str) -> Signer:
    """What node ``peer`` (``role/name``) of this lab signs with."""
    role, name = peer.split("/", 1)
    return Signer(peer, node_key(keys.secrets[role], name))
