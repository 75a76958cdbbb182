"""Timer profiles: BGP timers, BFD, MRAI, graceful restart and the health agent's settings, by name.

A topology selects one (``settings.profile: fast``) and a router or PoP may select another or override
single fields (``profile: {base: seed, hold: 9}``; without ``base`` the topology's profile is the base).

=========== ============ ========== =========== ======================================= ==========
profile     keepalive/   BFD        MRAI        health: interval / fast / rise / fall /  what for
            hold                                timeout
=========== ============ ========== =========== ======================================= ==========
seed        30 / 90 s    none       30 s        1 s / 1 s / 2 / 5 / 1 s                  the design
internet    60 / 180 s   none       30 s        5 s / 1 s / 3 / 3 / 5 s                  defaults
datacenter  3 / 9 s      none       0           1 s / 0.2 s / 3 / 3 / 0.5 s              DC fabric
fast        1 / 3 s      50 ms × 3  0           50 ms / 20 ms / 2 / 2 / 30 ms           the lab
scale       3 / 9 s      none       0           1 s / 0.1 s / 2 / 2 / 0.3 s              300 PoPs
=========== ============ ========== =========== ======================================= ==========

``seed`` reproduces the design document's failover timeline (health check detects in 5 s); ``internet``
is FRR's "traditional" timers (60/180 s), the eBGP MRAI RFC 4271 suggests (30 s, still many vendors'
default; FRR 8.4's own is 0) and ExaBGP healthcheck's defaults; ``fast`` is what the lab tunes for: BFD
between PoP servers and their upstreams and a health decision ≤ 110 ms (a hung check counted at its
timeout); ``scale`` keeps a lab of
hundreds of PoPs within its idle budget (≤ 0.2 % of a core per server): no BFD (measured: FRR's bfdd
takes ≈ 0.14 % of a core per session at 300 ms, ≈ 900 sessions at 300 PoPs), so a silent failure is
found by the hold timer (6–9 s) as on the Internet; a health check runs once a second and decides
within 1.4 s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.timers import detection_bound

ProfileName = Literal["seed", "internet", "datacenter", "fast", "scale"]
DEFAULT_PROFILE: ProfileName = "fast"
HEALTH_PORT = 8080


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BfdSpec(_Spec):
    """BFD between neighbours: ``interval_ms`` for transmit and receive, down after ``multiplier`` misses."""

    interval_ms: int = Field(50, ge=10, le=60000)
    multiplier: int = Field(3, ge=2, le=255)

    @property
    def detect_s(self) -> float:
        return self.interval_ms * self.multiplier / 1000.0


class CheckSpec(_Spec):
    """One health check. ``http``: GET ``url`` expecting ``status`` (and ``body`` in the answer);
    ``tcp``: connect to ``host:port``; ``command``: ``argv`` exits 0; ``dns``: ``host:port`` answers an
    SOA query for ``query`` with authority (what a DNS node's health agent asks)."""

    kind: Literal["http", "tcp", "command", "dns"] = "http"
    url: str = f"http://127.0.0.1:{HEALTH_PORT}/healthz"
    status: int = Field(200, ge=100, le=599)
    body: str | None = "ok"
    host: str = "127.0.0.1"
    port: int = Field(HEALTH_PORT, ge=1, le=65535)
    argv: tuple[str, ...] = ()
    query: str = ""

    @model_validator(mode="after")
    def _complete(self) -> CheckSpec:
        if self.kind == "dns" and not self.query.endswith("."):
            raise ValueError("a dns check needs 'query': the zone whose SOA it asks for, absolute (e.g. edge.test.)")
        if self.kind == "command" and not self.argv:
            raise ValueError("a command check needs argv; give the command as a list, e.g. [test, -f, /x]")
        if self.kind == "http" and not self.url.startswith("http://"):
            raise ValueError(f"'{self.url}' is not an http:// URL; give e.g. http://127.0.0.1:8080/healthz")
        return self


class DemoteSpec(_Spec):
    """How a demoted announcement is made less preferred: prepend the PoP's ASN, raise the MED."""

    prepend: int = Field(3, ge=0, le=16)
    med: int = Field(0, ge=0, le=4294967295)

    @model_validator(mode="after")
    def _something(self) -> DemoteSpec:
        if self.prepend == 0 and self.med == 0:
            raise ValueError("a demotion that changes nothing; set prepend ≥ 1 or med ≥ 1")
        return self


class OverloadSpec(_Spec):
    """Demote the announcement of a server whose utilisation stays ≥ ``above`` for ``after_s`` seconds,
    until it has stayed < ``below`` for ``restore_after_s`` (see :mod:`health.fsm`)."""

    above: float = Field(0.9, gt=0.0, le=10.0)
    after_s: float = Field(2.0, ge=0.0, le=3600.0)
    below: float = Field(0.5, ge=0.0, le=10.0)
    restore_after_s: float = Field(5.0, ge=0.0, le=3600.0)

    @model_validator(mode="after")
    def _hysteresis(self) -> OverloadSpec:
        if self.below >= self.above:
            raise ValueError(f"below ({self.below}) must be under above ({self.above})")
        return self


class HealthSpec(_Spec):
    """The health agent of every PoP server (see :mod:`health.fsm` for the semantics)."""

    interval: float = Field(0.05, gt=0, le=3600)
    fast_interval: float = Field(0.02, gt=0, le=3600)
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(2, ge=1, le=100)
    timeout: float = Field(0.03, gt=0, le=600)
    on_down: Literal["withdrawn", "demoted"] = "withdrawn"
    drain_mode: Literal["withdrawn", "demoted"] = "demoted"
    debounce: float = Field(0.0, ge=0, le=3600)
    demote: DemoteSpec = DemoteSpec()
    #: Demote the announcement while the server is overloaded (off unless set).
    overload: OverloadSpec | None = None
    checks: tuple[CheckSpec, ...] = (CheckSpec(),)
    combine: Literal["all", "any"] = "all"
    #: Commands run on every health change, with STATE (and SERVER, POP) in their environment.
    hooks: tuple[tuple[str, ...], ...] = ()

    @property
    def detection_bound(self) -> float:
        """Worst case from a failure to the down decision (:func:`core.timers.detection_bound`)."""
        return detection_bound(self.interval, self.fast_interval, self.fall, self.timeout)


class Profile(_Spec):
    """A complete, resolved profile."""

    name: str = DEFAULT_PROFILE
    keepalive: int = Field(1, ge=0, le=21845)
    hold: int = Field(3, ge=0, le=65535)
    bfd: BfdSpec | None = None
    #: Minimum route advertisement interval (seconds) towards every neighbour.
    mrai: int = Field(0, ge=0, le=600)
    #: Graceful restart time in seconds (0: off). With it, a crashed speaker's routes are kept that long.
    graceful_restart: int = Field(0, ge=0, le=3600)
    health: HealthSpec = HealthSpec()

    @property
    def silence_detect_s(self) -> float:
        """How long a neighbour that fell silent (no BGP NOTIFICATION, no link down) keeps its routes: BFD's
        detection time when BFD runs, else the hold time (0: never)."""
        return self.bfd.detect_s if self.bfd is not None else float(self.hold)

    @field_validator("hold")
    @classmethod
    def _hold(cls, value: int) -> int:
        if value != 0 and value < 3:
            raise ValueError("hold time must be 0 or at least 3 seconds (RFC 4271); use 3 or more")
        return value

    @model_validator(mode="after")
    def _keepalive_below_hold(self) -> Profile:
        if self.hold and not 0 < self.keepalive * 3 <= self.hold:
            raise ValueError(f"keepalive {self.keepalive} s does not fit hold {self.hold} s; "
                             "use keepalive ≤ hold / 3")
        return self


_HEALTH_SEED = {"interval": 1.0, "fast_interval": 1.0, "rise": 2, "fall": 5, "timeout": 1.0}
NAMED: dict[str, dict[str, Any]] = {
    "seed": {"keepalive": 30, "hold": 90, "bfd": None, "mrai": 30, "health": _HEALTH_SEED},
    "internet": {"keepalive": 60, "hold": 180, "bfd": None, "mrai": 30,
                 "health": {"interval": 5.0, "fast_interval": 1.0, "rise": 3, "fall": 3, "timeout": 5.0}},
    "datacenter": {"keepalive": 3, "hold": 9, "bfd": None, "mrai": 0,
                   "health": {"interval": 1.0, "fast_interval": 0.2, "rise": 3, "fall": 3, "timeout": 0.5}},
    "fast": {"keepalive": 1, "hold": 3, "bfd": {"interval_ms": 50, "multiplier": 3}, "mrai": 0,
             "health": {"interval": 0.05, "fast_interval": 0.02, "rise": 2, "fall": 2, "timeout": 0.03}},
    "scale": {"keepalive": 3, "hold": 9, "bfd": None, "mrai": 0,
              "health": {"interval": 1.0, "fast_interval": 0.1, "rise": 2, "fall": 2, "timeout": 0.3}},
}

#: ``fast``'s health agent at timings that ride out a loaded 2-core box: for runs whose subject is not the
#: health check (a link's shape, a soak's availability). Measured: global.yaml idles at ~70 % of this box's two
#: cores, and under a soak's workloads fast's 30 ms timeout failed ~17 checks a second on servers no fault
#: touched, each a withdrawal (HTTP users lost ~30 % of their requests to them); with these, none in 60 s.
LOADED_BOX_HEALTH: dict[str, Any] = {"interval": 0.2, "fast_interval": 0.1, "rise": 2, "fall": 3, "timeout": 0.5}
#: ``fast`` with :data:`LOADED_BOX_HEALTH`, as a profile reference (``load_topology(..., profile=LOADED_BOX)``).
LOADED_BOX: dict[str, Any] = {"base": "fast", "health": LOADED_BOX_HEALTH}


def expand(value: Any, default_base: str = DEFAULT_PROFILE) -> Any:
    """Turn a profile reference (a name, or a mapping with an optional ``base`` and overrides) into the
    full mapping pydantic validates as a :class:`Profile`. Anything else is returned unchanged for
    pydantic to reject. Raises ValueError for an unknown profile name."""
    if isinstance(value, Profile):
        return value
    if isinstance(value, str):
        value = {"base": value}
    if not isinstance(value, dict):
        return value
    overrides = dict(value)
    named_as = str(overrides.pop("name", "")).rstrip("*")  # a dumped profile names its base
    base = overrides.pop("base", named_as or default_base)
    if base not in NAMED:
        raise ValueError(f"unknown profile '{base}'; use one of: {', '.join(NAMED)}")
    merged: dict[str, Any] = {"name": base, **NAMED[base]}
    for key, val in overrides.items():
        if key == "health" and isinstance(val, dict):
            merged["health"] = {**merged["health"], **val}
        else:
            merged[key] = val
    try:
        changed = Profile.model_validate(merged) != Profile.model_validate({"name": base, **NAMED[base]})
    except ValueError:
        changed = True  # invalid: pydantic reports it when it validates the result
    if changed:
        merged["name"] = f"{base}*"  # a modified profile says so wherever it is reported
    return merged


def named(name: str) -> Profile:
    """The named profile; raises ValueError for an unknown name."""
    return Profile.model_validate(expand(name))
