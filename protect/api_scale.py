"""The design's control plane scaling trigger as a pure state machine: "add control-plane replicas across
regions when API latency p99 > 500 ms" — one machine per region, fed one :class:`Sample` of the region's
API answer times at a time: ``step(config, state, sample) -> (state, actions)``.

| rule (the design's)          | here (lab-scaled)                                                       |
|------------------------------|-------------------------------------------------------------------------|
| API latency p99 > 500 ms     | p99 over the API's last window > ``p99_ms``, on every sample for ``for_s``, |
|                              | with at least ``min_samples`` answers in the window (a few slow calls   |
|                              | are not a load)                                                         |
| (no period or bound given)   | ``cooldown_s`` after a replica is added, at most ``max_replicas``       |

Replicas are only added: the design names no rule to remove them, and a lab's load is bounded (the
replicas go with ``anylab down``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    p99_ms: float = 500.0
    for_s: float = 3.0
    min_samples: int = 20
    max_replicas: int = 3
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if self.p99_ms <= 0 or self.for_s < 0 or self.min_samples < 1 or self.max_replicas < 1:
            raise ValueError("p99_ms > 0, for_s ≥ 0, min_samples ≥ 1 and max_replicas ≥ 1")


@dataclass(frozen=True)
class Sample:
    """A region's API at ``t``: its API processes running, and the p99 (ms) and count of the answers in
    its latency window (p99 None: no answers)."""

    t: float
    replicas: int
    p99_ms: float | None
    count: int


@dataclass(frozen=True)
class State:
    #: Since when the p99 has been over the trigger without a break (None: it is not now).
    since: float | None = None
    last_change: float = float("-inf")


@dataclass(frozen=True)
class AddReplica:
    """Run ``replicas`` API processes in the region (one more)."""

    replicas: int
    p99_ms: float


def step(cfg: Config, state: State, sample: Sample) -> tuple[State, list[AddReplica]]:
    """One sample: the new state, and at most one :class:`AddReplica`."""
    over = sample.p99_ms is not None and sample.p99_ms > cfg.p99_ms and sample.count >= cfg.min_samples
    if not over:
        return State(None, state.last_change), []
    since = state.since if state.since is not None else sample.t
    # A replica added is given the cooldown before the slowness counts again.
    since = max(since, state.last_change + cfg.cooldown_s) if state.last_change > float("-inf") else since
    if sample.t - since >= cfg.for_s and sample.replicas < cfg.max_replicas:
        assert sample.p99_ms is not None
        return State(None, sample.t), [AddReplica(sample.replicas + 1, sample.p99_ms)]
    return State(since, state.last_change), []
