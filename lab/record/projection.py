"""Availability projected to the design's scale from what a soak measured (issue 25), written out so a reader
can redo it with other rates.

For each fault class *c*:

- ``n_c``: how many targets the class has at the design's scale (Stage 3: 300 PoPs, 3 000 servers, …);
- ``mtbf_c``: the mean time between failures of one target, days (the soak's catalogue: the design's
  30 days per PoP, and the rates :func:`lab.faults.chaos.catalogue` states for the rest);
- ``share_c``: the fraction of all users one fault of the class touches (a PoP's catchment, 1/300);
- ``d_c``: the seconds of requests one fault cost each client it affected, measured by the soak (the worse of
  probes and HTTP; a fault that affected nobody counts 0), plus ``extra[m]`` for a class detected by mechanism
  *m*: ``health`` (the health agent's checks) or ``silence`` (a server gone silent: BFD in the lab, the hold
  timer with the design's timers). The lab's timers are tighter than the design's; ``extra`` puts the
  difference back.

Faults a year: ``f_c = n_c × 365 / mtbf_c``. User-seconds lost a year, per user: ``u_c = f_c × d_c × share_c``.
Availability: ``1 − Σ u_c / 31 536 000``. The model assumes faults independent and users spread evenly over
targets; a region's share is its users, a control-plane or storage region's share the users whose requests
need it (0 for the deployed code's request path: existing deployments keep running, the design's
"Control plane failure: existing deployments continue").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

YEAR_S = 365 * 86400.0


@dataclass(frozen=True)
class Scale:
    """One fault class at the design's scale: its targets, the share of users one fault touches, what
    detects it (``health``, ``silence``, or None: the failure is signalled, a carrier or a closed session),
    and where the numbers come from."""

    targets: int
    share: float
    detected: str | None
    basis: str


#: Stage 3 of the design (300 PoPs, 3 000 servers, 3 DO/KV/control-plane regions as the lab's); each PoP two
#: upstream links; each region ~1/3 of the users; DNS from 3 providers × 10 anycast nodes.
STAGE3: dict[str, Scale] = {
    "pop": Scale(300, 1 / 300, "silence", "300 PoPs; one PoP's catchment"),
    "server": Scale(3000, 1 / 3000, "silence", "3 000 servers; one server's share of its PoP"),
    "service": Scale(3000, 1 / 3000, "health", "the edge service of each server"),
    "speaker": Scale(3000, 1 / 3000, None, "the BGP speaker of each server"),
    "link": Scale(600, 1 / 300, None, "two upstream links a PoP; a cut moves that PoP's users"),
    "link-degrade": Scale(600, 1 / 300, None, "as link; loss and delay, no withdrawal"),
    "region": Scale(3, 1 / 3, "silence", "every PoP of one of 3 regions"),
    "kv": Scale(3, 1 / 3, None, "a region's KV master; its region's writers"),
    "do": Scale(3, 1 / 3, None, "a region's DO host; the objects it owns"),
    "control-plane": Scale(3, 0.0, None, "deploys wait; requests do not need it"),
    "origin": Scale(300, 1 / 300, None, "an origin behind the PoPs, ~1 a PoP"),
    "dns": Scale(30, 1 / 30, None, "3 providers × 10 anycast nodes; resolvers retry another"),
}


def project(classes: Mapping[str, Mapping[str, Any]], scale: Mapping[str, Scale],
            extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The projected availability from a soak's per-class figures (``classes``: the soak report's rows, each
    with ``design_mtbf_days`` and ``loss_s``) at ``scale``: per class its inputs and ``u_c``, and the total.
    A class the soak did not inject, or the scale does not know, is listed as not projected (its cost is
    unknown, not zero). Raises KeyError for a row without the fields."""
    rows: dict[str, Any] = {}
    lost = 0.0
    missing = []
    for name, row in sorted(classes.items()):
        sc = scale.get(name)
        measured = [k["per_affected_client_s"] for k in row["loss_s"].values()
                    if k["per_affected_client_s"] is not None]
        if sc is None or not measured:
            missing.append(name)
            continue
        d = max(measured) + (extra or {}).get(sc.detected or "", 0.0)
        per_year = sc.targets * 365.0 / row["design_mtbf_days"]
        u = per_year * d * sc.share
        lost += u
        rows[name] = {"targets": sc.targets, "mtbf_days": row["design_mtbf_days"],
                      "faults_per_year": round(per_year, 2), "loss_s_per_affected_user": round(d, 4),
                      "share": sc.share, "user_s_per_year": round(u, 6), "basis": sc.basis}
    return {"classes": rows, "not_projected": missing, "extra_s": dict(extra or {}),
            "user_s_lost_per_year": round(lost, 4),
            "availability": 1.0 - lost / YEAR_S}
