"""The control plane's state: immutable, content-hashed worker versions and where each is deployed.

An upload becomes an *artifact*: the canonical JSON of what a PoP needs to run the worker (code, host,
path prefix, bindings, limits, pool sizes). Its SHA-256 names it; the first 12 hex digits are the
version. The same upload twice is the same version. A *placement* says which version of a worker each
PoP runs; every deploy or rollback is one new placement, kept in a history so rollback restores the
previous one. Every change bumps a generation number that the PoPs' long polls wait on.

Everything is kept on disk (``artifacts/<version>.json``, ``state.json`` replaced atomically), so a
restarted control plane knows what it knew. Methods raise :class:`BadRequest` (the caller's fault: the
message says what to change), :class:`NotFound` or :class:`Conflict`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import AnylabError
from tenant.deployment import Deployment
from tenant.isolate import DeployError, Limits

HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: Upload fields and their meaning; anything else is refused so a typo is not silently ignored.
UPLOAD_FIELDS = {"code", "host", "path_prefix", "bindings", "limits", "min_isolates", "max_isolates", "idle_s",
                 "rate_per_s", "rate_per_min", "priority", "account"}


class ApiError(AnylabError):
    status = 500


class BadRequest(ApiError):
    status = 400


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


def canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def artifact_of(name: str, upload: Any) -> tuple[str, str, bytes]:
    """Check an upload and make it an artifact: ``(version, sha256, bytes)``.

    Raises BadRequest naming the field and the fix (unknown fields, bad host, code over the size
    limit, code that does not compile…)."""
    if not NAME_RE.match(name):
        raise BadRequest(f"worker name {name!r} is not valid: use lower-case letters, digits, '-' and '_'")
    if not isinstance(upload, dict):
        raise BadRequest("the body must be a JSON object with at least 'code' and 'host'")
    unknown = set(upload) - UPLOAD_FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(UPLOAD_FIELDS))}")
    for key in ("code", "host"):
        if not isinstance(upload.get(key), str) or not upload[key]:
            raise BadRequest(f"'{key}' is missing or not a string")
    host = upload["host"].lower()
    if not HOST_RE.match(host):
        raise BadRequest(f"'host' {upload['host']!r} is not a host name (e.g. hello.example)")
    bindings = upload.get("bindings", {})
    if not isinstance(bindings, dict) or not all(isinstance(k, str) and k.isidentifier() for k in bindings):
        raise BadRequest("'bindings' must be an object whose keys are identifiers (env.NAME)")
    limits = upload.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - set(Limits.__dataclass_fields__):
        raise BadRequest(f"'limits' may only set {', '.join(Limits.__dataclass_fields__)}")
    if not all(isinstance(v, int | float) and v > 0 for v in limits.values()):
        raise BadRequest("every limit must be a positive number")
    artifact = {"name": name, **upload, "host": host}
    try:
        Deployment.from_json({**artifact, "version": "0"})  # size, syntax, pool sizes, prefix
    except DeployError as exc:
        raise BadRequest(str(exc)) from None
    data = canonical(artifact)
    sha = hashlib.sha256(data).hexdigest()
    return sha[:12], sha, data


@dataclass(frozen=True)
class Pop:
    name: str
    region: str
    servers: tuple[str, ...]


class Store:
    """Artifacts and placements under ``root``; not thread-safe (the API runs on one event loop)."""

    def __init__(self, root: Path, pops: Iterable[Pop]) -> None:
        self.root = root
        self.pops = {p.name: p for p in pops}
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        self.generation = 0
        #: name → list of placements (pop → version), the last one current.
        self.history: dict[str, list[dict[str, str]]] = {}
        #: version → (name, sha256)
        self.versions: dict[str, tuple[str, str]] = {}
        #: KV namespace → the account whose worker bound it first: no other account's worker may bind it.
        self.namespaces: dict[str, str] = {}
        state = root / "state.json"
        if state.exists():
            saved = json.loads(state.read_text())
            self.generation = int(saved["generation"])
            self.history = {k: [dict(p) for p in v] for k, v in saved["history"].items()}
            self.versions = {k: (v[0], v[1]) for k, v in saved["versions"].items()}
            self.namespaces = {str(k): str(v) for k, v in saved.get("namespaces", {}).items()}

    def _save(self) -> None:
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps({"generation": self.generation, "history": self.history,
                                   "versions": self.versions, "namespaces": self.namespaces}))
        tmp.replace(self.root / "state.json")

    def upload(self, name: str, upload: Any) -> dict[str, Any]:
        """Store an upload as an immutable version; returns ``{name, version, sha256, bytes, new}``."""
        version, sha, data = artifact_of(name, upload)
        account = str(upload.get("account") or name)
        bound = {str(v["kv_namespace"]) for v in upload.get("bindings", {}).values()
                 if isinstance(v, dict) and "kv_namespace" in v}
        for ns in sorted(bound):
            owner = self.namespaces.get(ns, account)
            if owner != account:
                raise BadRequest(f"KV namespace {ns!r} belongs to account {owner!r}: a worker of account "
                                 f"{account!r} may not bind it")
        path = self.root / "artifacts" / f"{version}.json"
        new = version not in self.versions
        if new:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            self.versions[version] = (name, sha)
            self.namespaces.update(dict.fromkeys(bound - set(self.namespaces), account))
            self._save()
        return {"name": name, "version": version, "sha256": sha, "bytes": len(data), "new": new}

    def artifact(self, version: str) -> bytes:
        if version not in self.versions:
            raise NotFound(f"no version {version!r}")
        return (self.root / "artifacts" / f"{version}.json").read_bytes()

    def targets(self, pops: Iterable[str] = (), regions: Iterable[str] = ()) -> list[str]:
        """The PoPs named, plus those of the regions named; all PoPs when neither is given."""
        pops, regions = list(pops), list(regions)
        known_regions = sorted({p.region for p in self.pops.values()})
        for p in pops:
            if p not in self.pops:
                raise BadRequest(f"unknown PoP {p!r}; there are: {', '.join(sorted(self.pops))}")
        for r in regions:
            if r not in known_regions:
                raise BadRequest(f"unknown region {r!r}; there are: {', '.join(known_regions)}")
        if not pops and not regions:
            return sorted(self.pops)
        return sorted({*pops, *(p.name for p in self.pops.values() if p.region in regions)})

    def placement(self, name: str) -> dict[str, str]:
        return dict(self.history.get(name, [{}])[-1])

    def deploy(self, name: str, version: str, pops: Iterable[str]) -> dict[str, Any]:
        """Make ``pops`` run ``version`` of worker ``name`` (other PoPs keep theirs)."""
        owner = self.versions.get(version, (None, None))[0]
        if owner is None:
            raise NotFound(f"no version {version!r}; upload the worker first")
        if owner != name:
            raise BadRequest(f"version {version} belongs to worker {owner!r}, not {name!r}")
        placement = {**self.placement(name), **dict.fromkeys(pops, version)}
        self.history.setdefault(name, []).append(placement)
        self.generation += 1
        self._save()
        return {"name": name, "version": version, "placement": placement, "generation": self.generation}

    def rollback(self, name: str) -> dict[str, Any]:
        """Go back to the placement before the current one (none before the first deploy: the worker
        is removed). Raises NotFound for a worker never deployed, Conflict when there is nothing left."""
        hist = self.history.get(name)
        if not hist:
            raise NotFound(f"worker {name!r} has never been deployed")
        if hist == [{}]:
            raise Conflict(f"worker {name!r} has no earlier deployment to roll back to")
        hist.pop()
        if not hist:
            hist.append({})
        self.generation += 1
        self._save()
        return {"name": name, "placement": dict(hist[-1]), "generation": self.generation}

    def desired(self, pop: str) -> list[dict[str, str]]:
        """What ``pop`` should run: ``[{name, version, sha256}]`` sorted by name."""
        out = []
        for name in sorted(self.history):
            version = self.placement(name).get(pop)
            if version is not None:
                out.append({"name": name, "version": version, "sha256": self.versions[version][1]})
        return out

    def listing(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "workers": {name: {"placement": self.placement(name), "deploys": len(hist),
                                   "versions": sorted(v for v, (n, _s) in self.versions.items() if n == name)}
                            for name, hist in sorted(self.history.items())},
                "uploaded": sorted({n for n, _s in self.versions.values()} - set(self.history))}
