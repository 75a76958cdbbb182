"""A two-minute chaos soak on global.yaml (issue 25): faults keep coming and overlap (seed 7: ~30 of ten
classes, two at a time at most), under probes, HTTP users, DO clients and KV writers from every region.

What must hold whatever the faults did: no acknowledged KV write lost, the DO history linearizable with
nothing acknowledged lost, no lab process restarted that no fault touched, none leaked or gone, every
client back on its predicted PoP, every lost request charged to a fault or to a health agent's flap on a
server no fault touched (reported; the lab runs health checks for a loaded box, fast's 30 ms ones flap),
none unexplained, every client a fault affected served again before the soak ended, every record followed.
The availability itself is reported, not bounded: it is what the soak measures (bench/chaos.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.measure.chaos import ChaosSpec, run_soak, soak_topology
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES

SOAK_S, SEED = 120.0, 7


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(soak_topology(TOPOLOGIES / "global.yaml"), name="tchaos") as running:
        yield running


def test_a_two_minute_soak_keeps_every_invariant_and_explains_every_lost_request(lab: Lab) -> None:
    result = run_soak(lab, ChaosSpec(SOAK_S, SEED))
    assert result["errors"] == [] and len(result["faults"]) >= 10, (result["errors"], len(result["faults"]))
    inv = result["invariants"]
    assert inv["kv_acked"] > 0 and inv["kv_lost"] == {}, inv
    assert inv["do_linearizable"] and inv["do_acked_lost"] == 0, result["do"]
    assert inv["restarted_outside_schedule"] == [] and inv["catchment_back"], inv
    assert inv["processes"]["new"] == [] and inv["processes"]["gone"] == [], inv["processes"]
    assert inv["records_missed"] == 0 and result["timeline"]["probes"] and result["worst_minute"] is not None
    a = result["availability"]
    for kind in ("probes", "http"):
        got = a[kind]
        assert got["unexplained"] == 0, (kind, got["unexplained_at"], result["flaps"])
        # Every lost request is in the accounting once: charged to one fault, to a health flap, or unexplained.
        assert got["valid"] - got["good"] == (sum(got["lost_by_fault"].values()) + got["after_a_flap"]
                                              + got["unexplained"])
    unrecovered = {f["name"]: f["affected"] for f in result["faults"] if f["recover_s"] is None}
    assert not unrecovered, unrecovered
    assert a["valid"] > 0 and a["value"] is not None
