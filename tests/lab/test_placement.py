"""The multi-host prototype: global.yaml partitioned over 3 "hosts" (one region each), the links
between regions VXLAN tunnels over an underlay. BGP converges to the same prediction, the tunnels are
what carries it, and a withdrawal moves clients across a tunnel within the same bound as on one host.
The health agents are :data:`model.profiles.LOADED_BOX`'s (the subject is routing; fast's 30 ms checks
withdraw healthy servers on this 2-core machine).

Timing bound: the withdrawal of ams crosses at most 3 bgpd hops to reach every EU client's router
(FRR holds an update ≈ 50 ms, zebra 10 ms); VXLAN adds microseconds. MARGIN_S covers a busy machine.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from core.netns import NETNS_DIR
from core.wait import wait_for
from lab.run.lab import Lab
from lab.run.net import HOST, UNDERLAY
from model.placement import place
from model.profiles import LOADED_BOX
from tests.conftest import TOPOLOGIES
from tests.lab.catchment import settled

HOPS, BGPD_HOLD_S, ZEBRA_HOLD_S, MARGIN_S = 3, 0.05, 0.01, 1.0
SHIFT_BOUND_S = HOPS * (BGPD_HOLD_S + ZEBRA_HOLD_S) + MARGIN_S


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "global.yaml", name="tplace", profile=LOADED_BOX, hosts=3) as running:
        yield running


def link_kind(lab: Lab, node: str, intf: str) -> str:
    out = subprocess.run(["ip", "-n", f"anylab-tplace-{node}", "-d", "-j", "link", "show", intf],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)[0].get("linkinfo", {})
    return str(info.get("info_kind", "veth?"))


def test_converges_to_the_prediction_over_tunnels(lab: Lab) -> None:
    settled(lab, lambda: {"catchment": lab.catchment()})  # equal to the prediction, a false alarm waited out
    assert all(s.up == s.total for s in lab.sessions())
    p = place(lab.topo, 3)
    assert len(p.cut) >= 3
    for a, b in p.cut:
        assert link_kind(lab, a.node, a.name) == link_kind(lab, b.node, b.name) == "vxlan"
    a, b = next((i, j) for i, j in lab.topo.links() if (i, j) not in set(p.cut))
    assert link_kind(lab, a.node, a.name) == "veth"
    hosts = [f"anylab-tplace-{HOST}{h}" for h in range(3)] + [f"anylab-tplace-{UNDERLAY}"]
    assert all((NETNS_DIR / h).exists() for h in hosts)


def test_withdrawal_moves_clients_across_a_tunnel(lab: Lab) -> None:
    """With every other EU PoP withdrawn the EU clients are on fra; withdrawing fra sends them to
    another region, over the tunnels, within the same bound as on one host."""
    eu = ("eu-c1", "eu-c2")
    others = ("ams", "lhr", "cdg")
    try:
        for pop in others:
            lab.withdraw(pop)
        wait_for(lambda: all(lab.catchment()[c] == "fra" for c in eu) or None, timeout=10.0,
                 what="the EU clients on fra", describe=lambda: str(lab.catchment()))
        t = lab.withdraw("fra")
        shifts = lab.wait_shifted(eu, t)
    finally:
        for pop in ("fra", *others):
            lab.announce(pop)
    for shift in shifts.values():
        assert shift.to_pop is not None and lab.topo.pop(shift.to_pop).region != "eu"
        assert shift.shift_s is not None and shift.shift_s < SHIFT_BOUND_S
