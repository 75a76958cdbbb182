"""Peer authentication for the lab's internal services: every request one lab service sends another over
the lab network carries an HMAC-SHA256 of the request under a key made for this lab at ``up``.

Why HMAC and not mutual TLS: the lab's own HTTP client (:mod:`core.http_client`) opens one connection per
DO call and per sync, so TLS would add a handshake per request, and importing ``ssl`` costs a PoP server
memory of its 45 MB budget; a signed request costs two SHA-256 passes and no round trip. What TLS would
add here — confidentiality inside the lab's own namespaces — the lab does not need.

**Keys.** :meth:`PeerKeys.make` draws one 32-byte secret per *role* (:data:`ROLES`). A node signs with
its own key, ``HMAC(role secret, "anylab-peer\\0" + name)``, which is all it is given; a service that
accepts a role holds that role's secret and derives the caller's key from the name it claims. So a PoP
server can speak only as itself, and a key of another lab (other secrets) never verifies.

**What is signed** (:func:`mac`): ``v1``, the peer (``role/name``), the time (wall clock, ms), a random
nonce, the method, the authority the request was sent to (``address:port`` of the service: a request
signed for one master is refused by another), the target (path and query as sent) and the SHA-256 of
the body. The header: ``X-Anylab-Auth: v1 ROLE/NAME TIME_MS NONCE MAC``.

**Replays**: a request more than :data:`WINDOW_S` from the service's clock is refused (``stale``), and
a nonce seen within twice that window is refused (``replayed``); the nonces kept are bounded
(:data:`MAX_NONCES`; past that, ``busy``). The window is wall-clock: a lab spread over several machines
needs their clocks within it (NTP does far better than 5 s).

**Where it is checked**: :func:`core.service.peer_middleware` on every route a service serves on the lab network; the
operator's Unix socket in the node's run directory (root only) is not asked. Refusals are 401 (403 for a
peer whose role may not use the route) with ``{"error": "unauthenticated", "reason": …}``, counted by
reason in :attr:`Verifier.refused`, which each service reports in its ``/v1/status``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.clock import wall
from core.errors import AnylabError

HEADER = "X-Anylab-Auth"
ROLES = ("kv-master", "kv-replica", "do-host", "do-directory", "do-router", "pop", "cp", "dns", "backup")
#: How far a request's time may be from the service's clock, either way.
WINDOW_S = 5.0
#: Nonces remembered at most (~10 s of requests at 20 000/s); a service past it refuses (``busy``).
MAX_NONCES = 200_000
REASONS = ("missing", "malformed", "unknown_peer", "stale", "bad_signature", "replayed", "busy", "not_allowed")
_PEER = re.compile(r"^([a-z-]{1,20})/([A-Za-z0-9_.-]{1,64})$")
_NONCE = re.compile(r"^[0-9a-f]{32}$")


class PeerAuthError(AnylabError):
    """A request that did not authenticate; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def node_key(secret: bytes, name: str) -> bytes:
    """The key of node ``name`` in the role whose secret is ``secret``."""
    return hmac.new(secret, b"anylab-peer\0" + name.encode(), hashlib.sha256).digest()


def mac(key: bytes, peer: str, t_ms: int, nonce: str, method: str, authority: str, target: str,
        body: bytes) -> str:
    """The request's MAC (hex): what :func:`Signer.headers` sends and :meth:`Verifier.check` recomputes."""
    text = "\n".join(("v1", peer, str(t_ms), nonce, method.upper(), authority, target,
                      hashlib.sha256(body).hexdigest()))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def read_secret(path: Path) -> bytes:
    """A key file's bytes; raises ValueError if it does not hold a 32-byte key."""
    raw = bytes.fromhex(path.read_text().strip())
    if len(raw) != 32:
        raise ValueError(f"{path}: not a 32-byte key")
    return raw


@dataclass(frozen=True)
class Signer:
    """Signs this node's requests: ``peer`` is ``role/name``."""

    peer: str
    key: bytes

    @classmethod
    def load(cls, cfg: Mapping[str, Any]) -> Signer:
        """From a service config's ``auth`` block (``as``, ``key_file``); raises KeyError/ValueError."""
        peer = str(cfg["as"])
        if not _PEER.match(peer):
            raise ValueError(f"bad peer name {peer!r}")
        return cls(peer, read_secret(Path(cfg["key_file"])))

    def headers(self, method: str, authority: str, target: str, body: bytes, t_ms: int | None = None,
                nonce: str | None = None) -> dict[str, str]:
        """The header that authenticates this request (``authority``: ``address:port`` it goes to)."""
        t = int(wall() * 1000) if t_ms is None else t_ms
        n = secrets.token_hex(16) if nonce is None else nonce
        return {HEADER: f"v1 {self.peer} {t} {n} {mac(self.key, self.peer, t, n, method, authority, target, body)}"}


@dataclass
class Verifier:
    """Checks requests to one service (``authority``: the ``address:port`` it listens on) from the roles
    whose secrets it holds."""

    secrets: dict[str, bytes]
    authority: str
    window_s: float = WINDOW_S
    max_nonces: int = MAX_NONCES
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    _seen: dict[str, float] = field(default_factory=dict)
    _order: collections.deque[tuple[float, str]] = field(default_factory=collections.deque)

    @classmethod
    def load(cls, cfg: Mapping[str, Any], authority: str) -> Verifier:
        """From a service config's ``auth`` block (``accept``: role → secret file)."""
        return cls({str(role): read_secret(Path(f)) for role, f in dict(cfg.get("accept", {})).items()}, authority)

    def _refuse(self, reason: str, message: str) -> PeerAuthError:
        self.refused[reason] += 1
        return PeerAuthError(reason, message)

    def check(self, method: str, target: str, header: str | None, body: bytes, now_s: float | None = None,
              roles: frozenset[str] | None = None) -> tuple[str, str]:
        """The caller's ``(role, name)`` if ``header`` authenticates this request (and its role is one of
        ``roles``, when given); raises PeerAuthError (counted in :attr:`refused`) otherwise. A request that
        passes is remembered: the same one again is ``replayed``."""
        now = wall() if now_s is None else now_s
        if not header:
            raise self._refuse("missing", f"no {HEADER} header: internal services take only their peers' "
                                          "signed requests")
        parts = header.split(" ")
        if len(parts) != 5 or parts[0] != "v1" or not _NONCE.match(parts[3]) or not parts[2].isdigit():
            raise self._refuse("malformed", f"{HEADER} is not 'v1 ROLE/NAME TIME_MS NONCE MAC'")
        _v, peer, t_raw, nonce, given = parts
        m = _PEER.match(peer)
        if m is None or m.group(1) not in self.secrets:
            raise self._refuse("unknown_peer", f"peer {peer[:90]!r}: not a role this service takes")
        role, name = m.group(1), m.group(2)
        expect = mac(node_key(self.secrets[role], name), peer, int(t_raw), nonce, method, self.authority, target, body)
        if not hmac.compare_digest(expect, given):
            raise self._refuse("bad_signature", f"the signature of {peer} does not match this request (another "
                                                "lab's key, or the request was changed)")
        skew = int(t_raw) / 1000 - now
        if abs(skew) > self.window_s:
            raise self._refuse("stale", f"signed {skew:+.1f} s from this service's clock (at most "
                                        f"±{self.window_s:g} s)")
        if roles is not None and role not in roles:
            raise self._refuse("not_allowed", f"a {role} may not call {method} {target.split('?')[0]}")
        self._forget(now)
        if nonce in self._seen:
            raise self._refuse("replayed", "this request was already taken once")
        if len(self._seen) >= self.max_nonces:
            raise self._refuse("busy", "too many requests within the replay window")
        self._seen[nonce] = now + 2 * self.window_s
        self._order.append((now + 2 * self.window_s, nonce))
        return role, name

    def _forget(self, now: float) -> None:
        # Expiry times are appended in non-decreasing order (now + a constant): the oldest are in front.
        while self._order and self._order[0][0] < now:
            _t, nonce = self._order.popleft()
            self._seen.pop(nonce, None)


@dataclass(frozen=True)
class PeerKeys:
    """The role secrets of one lab, made at ``up`` (never written to one place: each service's files get
    only the secrets of the roles it accepts, each node only its own key)."""

    secrets: dict[str, bytes]

    @classmethod
    def make(cls) -> PeerKeys:
        return cls({role: secrets.token_bytes(32) for role in ROLES})

    def auth_config(self, prefix: Path, peer: str | None, accept: tuple[str, ...] = ()) -> tuple[
            dict[str, Any], dict[Path, str]]:
        """A service's ``auth`` config block — signing as ``peer`` (``role/name``; None: it sends nothing),
        accepting the roles ``accept`` — and the key files it names (``PREFIXpeer-ROLE.key``,
        ``PREFIXaccept-ROLE.secret``) with their text, for :meth:`core.daemon.Daemon.secrets`. Raises
        ValueError for a peer name :class:`Signer` would refuse."""
        block: dict[str, Any] = {}
        files: dict[Path, str] = {}
        if peer is not None:
            if not _PEER.match(peer):
                raise ValueError(f"bad peer name {peer!r}")
            role, name = peer.split("/", 1)
            key_file = prefix.with_name(f"{prefix.name}peer-{role}.key")
            files[key_file] = node_key(self.secrets[role], name).hex() + "\n"
            block.update({"as": peer, "key_file": str(key_file)})
        accepted = {}
        for r in accept:
            path = prefix.with_name(f"{prefix.name}accept-{r}.secret")
            files[path] = self.secrets[r].hex() + "\n"
            accepted[r] = str(path)
        if accepted:
            block["accept"] = accepted
        return block, files


def prefix_policy(rules: Mapping[str, tuple[str, ...]]) -> Callable[[str, str], frozenset[str]]:
    """A :func:`middleware` policy from ``"METHOD /path/prefix"`` → roles; the longest matching prefix
    decides, and a route no rule names is open to no peer."""
    table = sorted(((k.split(" ", 1)[0], k.split(" ", 1)[1], frozenset(v)) for k, v in rules.items()),
                   key=lambda r: len(r[1]), reverse=True)

    def policy(method: str, path: str) -> frozenset[str]:
        return next((roles for m, p, roles in table if m == method and path.startswith(p)), frozenset())

    return policy
