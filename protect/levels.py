"""The design's degradation levels (L0 normal … L4 control plane down) computed for one PoP from live
signals; pure. Levels are not exclusive — a PoP can be KV-degraded and overloaded at once — so the
answer is the highest level that applies and every condition that holds, each with its reason.

| level | trigger (the design's)            | signal here                                              |
|-------|-----------------------------------|----------------------------------------------------------|
| L1    | KV replication lag > 5 min        | the PoP replica's lag > ``kv_stale_after_s``, or its master unreachable |
| L2    | PoP CPU > 90 %                    | the PoP's utilisation (CPU or in-flight / capacity) > 0.9 |
| L3    | multiple PoP failures             | ≥ 2 PoPs down (withdrawn or unreachable) in the lab       |
| L4    | control plane unreachable         | the PoP's last sync with the control plane failed         |
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Signals:
    kv_lag_s: float = 0.0
    kv_master_reachable: bool = True
    utilisation: float = 0.0
    pops_down: int = 0
    control_reachable: bool = True
    kv_stale_after_s: float = 300.0


@dataclass(frozen=True)
class Level:
    level: int
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"L{self.level}"


def level(s: Signals) -> Level:
    """The highest level whose trigger holds (L0 when none) and the reason for each that does."""
    reasons: dict[int, str] = {}
    if not s.kv_master_reachable:
        reasons[1] = "KV master unreachable: reads stale, writes queued"
    elif s.kv_lag_s > s.kv_stale_after_s:
        reasons[1] = f"KV lag {s.kv_lag_s:.0f} s > {s.kv_stale_after_s:.0f} s: reads stale, writes queued"
    if s.utilisation > 0.9:
        reasons[2] = f"utilisation {s.utilisation:.0%} > 90 %: shedding from P3"
    if s.pops_down >= 2:
        reasons[3] = f"{s.pops_down} PoPs down: traffic concentrated on the healthy ones"
    if not s.control_reachable:
        reasons[4] = "control plane unreachable: no new deployments, existing code runs"
    return Level(max(reasons, default=0), reasons)
