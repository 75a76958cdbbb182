"""The design's per-PoP autoscaling rules as a pure state machine: ``step(config, state, sample) ->
(state, actions)``, one machine per PoP, fed one :class:`Sample` of the PoP's in-service servers at a time.

| rule (the design's)                             | here (lab-scaled periods)                         |
|-------------------------------------------------|---------------------------------------------------|
| add a server: CPU > 70 % for 5 min              | mean utilisation > ``up_utilisation`` for ``up_for_s`` |
| add a server: request queue depth > 1000, 1 min | requests in isolates > ``up_queue`` for ``queue_for_s`` |
| remove a server: CPU < 30 % for 15 min          | mean utilisation < ``down_utilisation`` for ``down_for_s`` |
| cooldown 5 min; 4 … 100 servers                 | ``cooldown_s`` after any change; ``min_servers`` … ``max_servers`` |

"CPU" is the server's utilisation (requests taken on / its capacity, see :mod:`protect.limits`): on a
2-core box running every PoP, a PoP's CPU share says nothing about its load. A condition must hold on
every sample for its whole period (a dip restarts it); after a change nothing happens for the cooldown,
and a condition's clock starts again after it, so one burst adds one server, not several.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Config:
    min_servers: int = 1
    max_servers: int = 4
    up_utilisation: float = 0.7
    up_for_s: float = 10.0
    up_queue: float = 1000.0
    queue_for_s: float = 5.0
    down_utilisation: float = 0.3
    down_for_s: float = 30.0
    cooldown_s: float = 15.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_servers <= self.max_servers:
            raise ValueError(f"need 1 ≤ min_servers ({self.min_servers}) ≤ max_servers ({self.max_servers})")
        if not 0 <= self.down_utilisation < self.up_utilisation:
            raise ValueError("down_utilisation must be below up_utilisation")


@dataclass(frozen=True)
class Sample:
    """The PoP at ``t``: how many servers are in service, their mean utilisation and their requests in
    isolates (summed)."""

    t: float
    servers: int
    utilisation: float
    queue: float = 0.0


Rule = Literal["utilisation_high", "queue_deep", "utilisation_low"]


@dataclass(frozen=True)
class State:
    #: Since when each rule's condition has held without a break (absent: it does not hold now).
    since: tuple[tuple[Rule, float], ...] = ()
    last_change: float = float("-inf")


@dataclass(frozen=True)
class Scale:
    """Bring the PoP to ``servers`` servers (one more or one fewer), because of ``rule``."""

    servers: int
    rule: Rule


def _holding(sample: Sample, cfg: Config) -> list[Rule]:
    rules: list[Rule] = []
    if sample.utilisation > cfg.up_utilisation:
        rules.append("utilisation_high")
    if sample.queue > cfg.up_queue:
        rules.append("queue_deep")
    if sample.utilisation < cfg.down_utilisation:
        rules.append("utilisation_low")
    return rules


def step(cfg: Config, state: State, sample: Sample) -> tuple[State, list[Scale]]:
    """One sample: the new state, and at most one :class:`Scale` action."""
    previous = dict(state.since)
    since = {rule: previous.get(rule, sample.t) for rule in _holding(sample, cfg)}
    if sample.t - state.last_change < cfg.cooldown_s:
        # Conditions seen during the cooldown only count from its end.
        since = {rule: max(t, state.last_change + cfg.cooldown_s) for rule, t in since.items()}
        return replace(state, since=tuple(since.items())), []
    periods: dict[Rule, float] = {"utilisation_high": cfg.up_for_s, "queue_deep": cfg.queue_for_s,
                                  "utilisation_low": cfg.down_for_s}
    due = [rule for rule, t in since.items() if sample.t - t >= periods[rule]]
    action: Scale | None = None
    up = [r for r in due if r != "utilisation_low"]
    if up and sample.servers < cfg.max_servers:
        action = Scale(sample.servers + 1, up[0])
    elif "utilisation_low" in due and sample.servers > cfg.min_servers:
        action = Scale(sample.servers - 1, "utilisation_low")
    if action is None:
        return replace(state, since=tuple(since.items())), []
    return State(since=(), last_change=sample.t), [action]
