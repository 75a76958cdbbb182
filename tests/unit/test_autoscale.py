"""The per-PoP autoscaling rules (protect.autoscale), as tables of samples → actions."""

from __future__ import annotations

import pytest

from protect.autoscale import Config, Sample, Scale, State, step

CFG = Config(min_servers=1, max_servers=3, up_utilisation=0.7, up_for_s=10, up_queue=100, queue_for_s=5,
             down_utilisation=0.3, down_for_s=30, cooldown_s=15)


def run(samples: list[tuple[float, int, float, float]], cfg: Config = CFG) -> list[tuple[float, Scale]]:
    """Feed (t, servers, utilisation, queue) samples; returns (t, action) for every action."""
    state, out = State(), []
    for t, servers, u, q in samples:
        state, actions = step(cfg, state, Sample(t, servers, u, q))
        out += [(t, a) for a in actions]
    return out


@pytest.mark.parametrize(("samples", "expected"), [
    # CPU > 70 % for the whole period adds a server, once
    ([(t, 1, 0.8, 0) for t in range(0, 12)], [(10, Scale(2, "utilisation_high"))]),
    # a dip below restarts the period
    ([(0, 1, 0.8, 0), (5, 1, 0.6, 0), (6, 1, 0.8, 0), (15, 1, 0.8, 0), (16, 1, 0.8, 0)],
     [(16, Scale(2, "utilisation_high"))]),
    # the queue rule has its own, shorter period
    ([(t, 1, 0.5, 500) for t in range(0, 6)], [(5, Scale(2, "queue_deep"))]),
    # at max_servers nothing more is added
    ([(t, 3, 0.9, 0) for t in range(0, 12)], []),
    # below 30 % for 30 s removes one; never below min_servers
    ([(t, 2, 0.1, 0) for t in range(0, 31)], [(30, Scale(1, "utilisation_low"))]),
    ([(t, 1, 0.1, 0) for t in range(0, 31)], []),
])
def test_rules(samples: list[tuple[float, int, float, float]], expected: list[tuple[float, Scale]]) -> None:
    assert run(samples) == expected


def test_after_a_change_the_cooldown_holds_and_the_period_starts_again_after_it() -> None:
    samples = [(float(t), 1 if t <= 10 else 2, 0.9, 0.0) for t in range(0, 60)]
    got = run(samples)
    # +1 at 10 s; the cooldown ends at 25 s, the 10 s period then runs from there: +1 at 35 s
    assert got == [(10.0, Scale(2, "utilisation_high")), (35.0, Scale(3, "utilisation_high"))]


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="min_servers"):
        Config(min_servers=3, max_servers=2)
    with pytest.raises(ValueError, match="below"):
        Config(up_utilisation=0.3, down_utilisation=0.5)
