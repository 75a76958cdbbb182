"""Generated topologies shaped like the design's scaling stages, with real-world AS relationships.

The shape is the Internet's in miniature: one tier-1 transit AS per region (``t1-<region>``), the
tier-1s peering settlement-free in a full mesh; regional transit ASes (``<region>-tNN``) buying transit
from their region's tier-1 (a few also from the next region's, as multi-homed networks do) and peering
with their neighbours in the region (an IXP); PoPs buying transit from one or two regional transits; and
client ("eyeball") networks hanging off regional transits. Every router link carries its relation, so
the routers export valley-free and a PoP's backup is where real BGP would send its clients.

Deterministic: the same :class:`Shape` (seed included) gives the same topology, byte for byte.
:func:`stage` gives the design's stages ("Scaling Stages": 1 PoP of 4 servers; 50 PoPs of 4 in one
region; 300 PoPs of 10 in several); the lab runs 1 server per PoP at stages 2 and 3 by default (one box
cannot hold 3 000 server stacks; ``docs/scaling.md`` has what it would take).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

REGION_NAMES = ("na", "eu", "ap", "sa", "af", "me", "oc", "ca")
TIER1_ASN = 65001
TRANSIT_ASN = 65100
POP_ASN = 64601
#: ASNs per region for its transits (65100 + 50 × region index + k).
TRANSIT_ASN_STRIDE = 50


@dataclass(frozen=True)
class Shape:
    """What to generate. ``multihome`` is the share of PoPs (and of transits) with a second provider."""

    name: str
    regions: int = 3
    transits_per_region: int = 4
    pops_per_region: int = 4
    servers: int = 1
    clients_per_region: int = 2
    multihome: float = 0.5
    seed: int = 1
    profile: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError naming the field and the allowed range if the shape cannot be generated."""
        limits = {"regions": (1, len(REGION_NAMES)), "transits_per_region": (1, TRANSIT_ASN_STRIDE - 1),
                  "pops_per_region": (1, 99), "servers": (1, 64), "clients_per_region": (1, 20)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{name} = {value} is out of range; use {lo}..{hi}")
        if self.regions * self.pops_per_region > TIER1_ASN - POP_ASN - 1:
            raise ValueError(f"{self.regions * self.pops_per_region} PoPs exceed the PoP ASN range; "
                             f"use at most {TIER1_ASN - POP_ASN - 1}")
        if not 0.0 <= self.multihome <= 1.0:
            raise ValueError(f"multihome = {self.multihome} is out of range; use 0..1")


def generate(shape: Shape) -> dict[str, Any]:
    """The topology as the dict a YAML file would hold; raises ValueError (see :meth:`Shape.check`)."""
    shape.check()
    rng = random.Random(shape.seed)
    regions = REGION_NAMES[:shape.regions]
    t1 = {r: f"t1-{r}" for r in regions}
    routers: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    pops: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    for i, r in enumerate(regions):
        routers.append({"name": t1[r], "asn": TIER1_ASN + i, "region": r})
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            links.append({"a": t1[a], "b": t1[b], "relation": "peer"})
    pop_index = 0
    for i, r in enumerate(regions):
        transits = [f"{r}-t{k + 1:02d}" for k in range(shape.transits_per_region)]
        foreign = t1[regions[(i + 1) % len(regions)]]
        for k, t in enumerate(transits):
            routers.append({"name": t, "asn": TRANSIT_ASN + TRANSIT_ASN_STRIDE * i + k, "region": r})
            links.append({"a": t1[r], "b": t, "relation": "provider"})
            if foreign != t1[r] and rng.random() < shape.multihome / 2:
                links.append({"a": foreign, "b": t, "relation": "provider"})
        if len(transits) >= 3:
            for k, t in enumerate(transits):
                links.append({"a": t, "b": transits[(k + 1) % len(transits)], "relation": "peer"})
        elif len(transits) == 2:
            links.append({"a": transits[0], "b": transits[1], "relation": "peer"})
        for j in range(shape.pops_per_region):
            first = transits[j % len(transits)]
            upstreams = [first]
            if len(transits) > 1 and rng.random() < shape.multihome:
                upstreams.append(rng.choice([t for t in transits if t != first]))
            pops.append({"name": f"{r}-p{j + 1:02d}", "region": r, "asn": POP_ASN + pop_index,
                         "servers": shape.servers, "upstreams": upstreams})
            pop_index += 1
        homes = rng.sample(transits, min(shape.clients_per_region, len(transits)))
        homes += [rng.choice(transits) for _ in range(shape.clients_per_region - len(homes))]
        for c, home in enumerate(homes):
            clients.append({"name": f"{r}-c{c + 1}", "region": r, "router": home})
    settings: dict[str, Any] = dict(shape.settings)
    if shape.profile:
        settings["profile"] = shape.profile
    out: dict[str, Any] = {
        "name": shape.name,
        "description": (f"{len(pops)} PoPs, {len(routers)} routers in {len(regions)} regions, generated "
                        f"(seed {shape.seed}) by model.generate"),
    }
    if settings:
        out["settings"] = settings
    out.update({"regions": [{"name": r} for r in regions], "routers": routers, "links": links, "pops": pops,
                "clients": clients})
    return out


#: Probing at 1 kHz while ``anylab measure`` runs, 10 Hz otherwise (see ``settings.probe_idle_hz``).
#: Measured here (a nested VM, where every system call is dear): a probe costs ≈ 105 µs of CPU at the
#: prober and ≈ 60 µs at the edge answering it, so each client at 1 kHz takes ≈ 17 % of a core: stage 3
#: has one client per region (6), stage 2 four. Each server one process (``server_process: folded``) and
#: its KV replica asking its master every 6 s when idle: the idle floor of hundreds of servers.
SCALE_SETTINGS = {"probe_rate_hz": 1000.0, "probe_idle_hz": 10.0, "server_process": "folded", "kv_poll_s": 6.0}

#: The design's stages as the lab runs them on one box (servers per PoP: the design's at stage 1 only).
STAGES: dict[int, Shape] = {
    1: Shape("stage-1", regions=1, transits_per_region=2, pops_per_region=1, servers=4, clients_per_region=2),
    2: Shape("stage-2", regions=1, transits_per_region=12, pops_per_region=50, clients_per_region=4,
             profile="scale", settings=dict(SCALE_SETTINGS)),
    3: Shape("global-300", regions=6, transits_per_region=16, pops_per_region=50, clients_per_region=1,
             profile="scale", settings=dict(SCALE_SETTINGS)),
}
def stage(number: int, **overrides: Any) -> dict[str, Any]:
    """Stage ``number`` (1–3) of the design, with ``overrides`` of :class:`Shape` fields."""
    if number not in STAGES:
        raise ValueError(f"stage {number} does not exist; use 1, 2 or 3")
    base = STAGES[number]
    fields = {**base.__dict__, **overrides}
    return generate(Shape(**fields))
