"""A deployment: one version of one worker, as the control plane hands it to a PoP and a PoP's store
keeps it — its code, host and path, bindings, limits, isolate pool bounds, rate limits, traffic class and
account. Checked on arrival: a malformed deployment or code that cannot load is a DeployError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protect.limits import PRIORITIES, Priority
from tenant.isolate import DeployError, Limits, check_code


@dataclass(frozen=True)
class Deployment:
    """One version of one worker, as the control plane hands it to a PoP."""

    name: str
    version: str
    host: str
    code: str
    path_prefix: str = "/"
    bindings: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    min_isolates: int = 0
    max_isolates: int = 4
    idle_s: float = 300.0
    #: The design's per-deployment rate limits (burst per second, sustained per minute) and the
    #: deployment's traffic class (P0 never shed … P3 shed first).
    rate_per_s: float = 10_000.0
    rate_per_min: float = 100_000.0
    priority: Priority = "P1"
    #: The account it is billed to and limited as (by default the deployment's own name).
    account: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        """Raises DeployError naming the field for anything malformed, and for code that cannot load.
        A field the upload leaves out takes the dataclass's default (written once, above)."""
        try:
            optional = {name: convert(data[name]) for name, convert in _OPTIONAL.items() if name in data}
            dep = cls(name=str(data["name"]), version=str(data["version"]), host=str(data["host"]).lower(),
                      code=str(data["code"]), account=str(data.get("account") or data["name"]), **optional)
        except KeyError as exc:
            raise DeployError(f"deployment lacks the field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise DeployError(f"malformed deployment: {exc}") from None
        if not dep.path_prefix.startswith("/") or not 0 <= dep.min_isolates <= dep.max_isolates or dep.max_isolates < 1:
            raise DeployError(f"{dep.name}: path_prefix must start with '/' and 0 ≤ min_isolates ≤ max_isolates ≥ 1")
        if dep.priority not in PRIORITIES or dep.rate_per_s <= 0 or dep.rate_per_min <= 0:
            raise DeployError(f"{dep.name}: priority is one of {', '.join(PRIORITIES)}; rates are positive")
        check_code(dep.code, dep.limits)
        for name, value in dep.bindings.items():  # a Durable Object class is the deployment's own
            if isinstance(value, dict) and "durable_object" in value:
                value.setdefault("script", dep.name)
                if value["script"] != dep.name:  # the edge would refuse its calls anyway (tenant.egress)
                    raise DeployError(f"{dep.name}: binding {name} names class {value['durable_object']} of "
                                      f"worker {value['script']!r}; a deployment binds its own classes only")
            if isinstance(value, dict) and "kv_namespace" in value:
                value["account"] = dep.account  # the KV replica limits the account's reads and writes
        return dep


#: How each optional field of an upload is read (its default is the dataclass's).
_OPTIONAL: dict[str, Callable[[Any], Any]] = {
    "path_prefix": str, "bindings": dict, "limits": lambda d: Limits(**d), "min_isolates": int,
    "max_isolates": int, "idle_s": float, "rate_per_s": float, "rate_per_min": float, "priority": str,
}
