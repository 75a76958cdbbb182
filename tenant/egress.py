"""Where a deployment's code may send requests, decided by the edge for a sandboxed isolate (which has no
network of its own and asks the edge over its channel, :mod:`tenant.isolate`). Pure.

Allowed: the lab's origins (the ``ANYLAB_HOSTS`` map worker code resolves names through); the PoP
server's KV replica for the deployment's *own* KV namespaces (its bindings), with the account header set
by the edge to the deployment's account whatever the worker sent; the PoP server's DO router for the
deployment's *own* Durable Object classes (script and class of one of its bindings). Everything else — the
control plane, KV masters, DO hosts and directory, other servers, another deployment's namespace or
objects — is refused with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Where the PoP server's KV replica and DO router listen for worker code (tenant.worker_api's defaults).
KV_PORT = 8101
DO_PORT = 8102
LOCAL = "127.0.0.1"
#: The replica's calls worker code makes (tenant.worker_api.KvNamespace).
KV_CALLS = frozenset({("POST", "get"), ("POST", "put"), ("POST", "delete"), ("GET", "list")})


def origins_of(hosts: str) -> frozenset[tuple[str, int]]:
    """The origins of an ``ANYLAB_HOSTS`` value (``name=address:port,…``, as worker code resolves names)."""
    out = set()
    for item in hosts.split(","):
        _name, _, where = item.partition("=")
        address, _, port = where.partition(":")
        if address:
            try:
                out.add((address, int(port or 80)))
            except ValueError:
                continue
    return frozenset(out)


@dataclass(frozen=True)
class Egress:
    """What one deployment may reach."""

    account: str
    kv_namespaces: frozenset[str]
    do_classes: frozenset[tuple[str, str]]
    origins: frozenset[tuple[str, int]]

    @classmethod
    def of(cls, name: str, account: str, bindings: dict[str, Any], origins: frozenset[tuple[str, int]]) -> Egress:
        """The egress of deployment ``name`` from its bindings (a DO binding without a script is its own)."""
        kv = frozenset(str(v["kv_namespace"]) for v in bindings.values() if isinstance(v, dict) and "kv_namespace" in v)
        do = frozenset((str(v.get("script") or name), str(v["durable_object"])) for v in bindings.values()
                       if isinstance(v, dict) and "durable_object" in v)
        return cls(account, kv, do, origins)

    def check(self, host: str, port: int, method: str, path: str, headers: dict[str, str],
              body: bytes) -> tuple[str | None, dict[str, str]]:
        """(the reason it is refused, or None; the headers to send). Never raises."""
        if (host, port) in self.origins:
            return None, headers
        if host == LOCAL and port == KV_PORT:
            # Exactly /v1/kv/NS/OP[?query] with a bound NS and a known OP: no dot segments, no encodings,
            # nothing the replica's router would read differently from this check.
            parts = path.split("?", 1)[0].split("/")
            if len(parts) != 5 or parts[:3] != ["", "v1", "kv"] or (method, parts[4]) not in KV_CALLS:
                return f"{method} {path!r} is not a KV call", headers
            if parts[3] not in self.kv_namespaces:
                return f"KV namespace {parts[3]!r} is not bound to this deployment", headers
            rest = {k: v for k, v in headers.items() if k.lower() != "x-anylab-account"}
            return None, {**rest, "X-Anylab-Account": self.account}
        if host == LOCAL and port == DO_PORT:
            if (method, path) != ("POST", "/v1/do"):
                return f"{method} {path} is not a Durable Object call", headers
            try:
                script, cls, _hex = str(json.loads(body)["key"]).split("/")
            except (ValueError, KeyError, TypeError):
                return "a Durable Object call without a key script/Class/id", headers
            if (script, cls) not in self.do_classes:
                return f"Durable Object class {script}/{cls} is not bound to this deployment", headers
            return None, headers
        return f"{host}:{port} is not an origin of this lab (the lab's own services are not reachable)", headers
