"""The control plane's scaling trigger (protect.api_scale): table-tested."""

from __future__ import annotations

import pytest

from protect.api_scale import AddReplica, Config, Sample, State, step

CFG = Config(p99_ms=500, for_s=3, min_samples=20, max_replicas=3, cooldown_s=10)


def run(samples: list[tuple[float, int, float | None, int]]) -> list[tuple[float, int]]:
    state, added = State(), []
    for t, replicas, p99, count in samples:
        state, actions = step(CFG, state, Sample(t, replicas, p99, count))
        added += [(t, a.replicas) for a in actions]
    return added


@pytest.mark.parametrize(("samples", "added"), [
    # Slow for 3 s on every sample: one more replica at t=3.
    ([(t, 1, 800.0, 50) for t in range(6)], [(3, 2)]),
    # At the trigger, not over it: nothing.
    ([(t, 1, 500.0, 50) for t in range(6)], []),
    # Slow but few answers (a handful of slow calls): nothing.
    ([(t, 1, 900.0, 5) for t in range(6)], []),
    # A dip restarts the clock.
    ([(0, 1, 800.0, 50), (1, 1, 800.0, 50), (2, 1, 100.0, 50), (3, 1, 800.0, 50), (5, 1, 800.0, 50),
      (6, 1, 800.0, 50)], [(6, 2)]),
    # Still slow after a replica: the next one only after the cooldown and another for_s.
    ([(t, 1 if t <= 3 else 2, 800.0, 50) for t in range(20)], [(3, 2), (16, 3)]),
    # Never past max_replicas.
    ([(t, 3, 900.0, 50) for t in range(30)], []),
    # No answers at all: nothing.
    ([(t, 1, None, 0) for t in range(6)], []),
])
def test_replicas_are_added_by_the_designs_rule(samples: list[tuple[float, int, float | None, int]],
                                                 added: list[tuple[float, int]]) -> None:
    assert run(samples) == added


def test_an_action_names_the_p99_that_caused_it() -> None:
    state = State()
    for t in range(4):
        state, actions = step(CFG, state, Sample(t, 1, 750.0, 40))
    assert actions == [AddReplica(2, 750.0)]


def test_a_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        Config(max_replicas=0)
