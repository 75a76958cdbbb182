"""The control plane's state, pure: immutable, content-hashed worker versions and where each is deployed.

An upload becomes an *artifact*: the canonical JSON of what a PoP needs to run the worker (code, host,
path prefix, bindings, limits, pool sizes). Its SHA-256 names it; the first 12 hex digits are the
version. The same upload twice is the same version. A *placement* says which version of a worker each
PoP runs; every deploy or rollback is one new placement, kept in a history so rollback restores the
previous one.

The state lives in etcd (:mod:`control_plane.shared`), one key per fact under :data:`PREFIX`:

=====================  ===========================================================================
``v/<version>``        ``{name, sha256, bytes}``: an uploaded version (the bytes are in the regions'
                       artifact stores, :mod:`control_plane.artifacts`)
``h/<name>``           the worker's placements, oldest first (the last :data:`HISTORY_KEPT`)
``ns/<namespace>``     the account whose worker bound the KV namespace first
``s/<pop>``            the PoP's servers in service (scaling), when not all of its servers
``req/<id>``           the reply to an operator's request, so that one retried in another region is
                       answered, not done twice
``dw/<region>``        the region is withdrawn from DNS (the runbook's containment): its PoPs' own
                       names leave the platform's zone
``hd/<region>``        deployments to the region are halted (the runbook's containment): a deploy
                       leaves its PoPs as they are
=====================  ===========================================================================

:class:`View` is a region's copy of those keys (kept by an etcd watch) and the functions ``plan_*``
compute what a request changes, raising :class:`BadRequest` (the caller's fault: the message says what
to change), :class:`NotFound` or :class:`Conflict`. The *generation* the PoPs' long polls wait on is the
etcd revision of the last change to a placement or a PoP's servers, the same number in every region.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
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


#: Where the control plane's keys live in etcd.
PREFIX = "/anylab/cp/"
#: Placements kept per worker: how far back rollback can go.
HISTORY_KEPT = 100


def key(kind: str, name: str) -> str:
    return f"{PREFIX}{kind}/{name}"


@dataclass(frozen=True)
class Pop:
    name: str
    region: str
    servers: tuple[str, ...]


@dataclass(frozen=True)
class Upload:
    """A checked upload: its version, SHA-256, canonical bytes, account and KV namespaces bound."""

    name: str
    version: str
    sha256: str
    data: bytes
    account: str
    namespaces: tuple[str, ...]


class View:
    """A copy of the control plane's keys (see the module docstring), with the etcd mod revision of each."""

    def __init__(self, pops: Iterable[Pop]) -> None:
        self.configured = {p.name: p for p in pops}
        self.pops = dict(self.configured)
        #: version → (name, sha256)
        self.versions: dict[str, tuple[str, str]] = {}
        #: name → list of placements (pop → version), the last one current.
        self.history: dict[str, list[dict[str, str]]] = {}
        #: KV namespace → the account whose worker bound it first: no other account's worker may bind it.
        self.namespaces: dict[str, str] = {}
        #: key → its mod revision (what a compare-and-swap compares).
        self.mod: dict[str, int] = {}
        #: Regions withdrawn from DNS, and regions deployments are halted to.
        self.withdrawn: set[str] = set()
        self.halted: set[str] = set()
        self.revision = 0
        self.generation = 0

    def take(self, other: View) -> None:
        """Become ``other`` (a fresh load), in place: whoever holds this view sees the new state."""
        self.__dict__.update(other.__dict__)

    def apply(self, k: str, value: bytes | None, mod_revision: int) -> bool:
        """Take one key's new value (None: deleted); whether it changes what a PoP should run. Raises
        ValueError for a value that is not what the control plane writes."""
        kind, _, name = k.removeprefix(PREFIX).partition("/")
        self.revision = max(self.revision, mod_revision)
        if value is None:
            self.mod.pop(k, None)
        else:
            self.mod[k] = mod_revision
        data = None if value is None else json.loads(value)
        if kind == "v":
            if data is None:
                self.versions.pop(name, None)
            else:
                self.versions[name] = (str(data["name"]), str(data["sha256"]))
            return False
        if kind == "ns":
            if data is None:
                self.namespaces.pop(name, None)
            else:
                self.namespaces[name] = str(data)
            return False
        if kind == "h":
            if data is None:
                self.history.pop(name, None)
            else:
                self.history[name] = [{str(p): str(v) for p, v in placement.items()} for placement in data]
        elif kind == "dw":
            (self.withdrawn.add if data else self.withdrawn.discard)(name)
        elif kind == "hd":
            (self.halted.add if data else self.halted.discard)(name)
            return False  # what a PoP runs does not change: only what later deploys reach
        elif kind == "s" and name in self.configured:
            servers = tuple(str(s) for s in data) if data else self.configured[name].servers
            self.pops[name] = replace(self.configured[name], servers=servers)
        else:
            return False
        self.generation = max(self.generation, mod_revision)
        return True

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

    def desired(self, pop: str) -> list[dict[str, str]]:
        """What ``pop`` should run: ``[{name, version, sha256}]`` sorted by name."""
        out = []
        for name in sorted(self.history):
            version = self.placement(name).get(pop)
            if version is not None and version in self.versions:
                out.append({"name": name, "version": version, "sha256": self.versions[version][1]})
        return out

    def servers_of(self, placement: dict[str, str]) -> dict[str, str]:
        """Server → the version it should run, for the PoPs in ``placement``."""
        return {s: v for pop, v in placement.items() if pop in self.pops for s in self.pops[pop].servers}

    def dns(self) -> dict[str, Any]:
        """What the platform's zone is made of (the DNS hidden primary's long poll): the workers deployed
        somewhere, each PoP's region and servers in service, the regions withdrawn from DNS."""
        return {"generation": self.generation,
                "workers": sorted(name for name in self.history if self.placement(name)),
                "pops": {p.name: {"region": p.region, "servers": list(p.servers)} for p in self.pops.values()},
                "withdrawn": sorted(self.withdrawn)}

    def listing(self) -> dict[str, Any]:
        return {"generation": self.generation, "revision": self.revision,
                "workers": {name: {"placement": self.placement(name), "deploys": len(hist),
                                   "versions": sorted(v for v, (n, _s) in self.versions.items() if n == name)}
                            for name, hist in sorted(self.history.items())},
                "uploaded": sorted({n for n, _s in self.versions.values()} - set(self.history))}


def check_upload(view: View, name: str, upload: Any) -> Upload:
    """An upload checked against the view: BadRequest for a bad one or a KV namespace of another account."""
    version, sha, data = artifact_of(name, upload)
    account = str(upload.get("account") or name)
    bound = sorted({str(v["kv_namespace"]) for v in upload.get("bindings", {}).values()
                    if isinstance(v, dict) and "kv_namespace" in v})
    for ns in bound:
        owner = view.namespaces.get(ns, account)
        if owner != account:
            raise BadRequest(f"KV namespace {ns!r} belongs to account {owner!r}: a worker of account "
                             f"{account!r} may not bind it")
    return Upload(name, version, sha, data, account, tuple(bound))


def plan_deploy(view: View, name: str, version: str, pops: Iterable[str]) -> list[dict[str, str]]:
    """The worker's history once ``pops`` run ``version`` (other PoPs keep theirs), leaving out the PoPs of
    halted regions. Raises Conflict when every PoP asked for is in a halted region."""
    asked = list(pops)
    pops = [p for p in asked if p not in view.pops or view.pops[p].region not in view.halted]
    if asked and not pops:
        raise Conflict(f"deployments to {', '.join(sorted(view.halted))} are halted (the runbook's containment); "
                       "deploy elsewhere or lift the halt")
    owner = view.versions.get(version, (None, None))[0]
    if owner is None:
        raise NotFound(f"no version {version!r}; upload the worker first")
    if owner != name:
        raise BadRequest(f"version {version} belongs to worker {owner!r}, not {name!r}")
    placement = {**view.placement(name), **dict.fromkeys(pops, version)}
    return [*view.history.get(name, []), placement][-HISTORY_KEPT:]


def plan_rollback(view: View, name: str) -> list[dict[str, str]]:
    """The worker's history once back at the placement before the current one (none before the first
    deploy: the worker is removed). Raises NotFound for a worker never deployed, Conflict when there is
    nothing left."""
    hist = view.history.get(name)
    if not hist:
        raise NotFound(f"worker {name!r} has never been deployed")
    if hist == [{}]:
        raise Conflict(f"worker {name!r} has no earlier deployment to roll back to")
    return hist[:-1] or [{}]
