"""global.yaml: twelve PoPs in three regions; observed catchment equals the graph's prediction.

The lab runs ``fast`` with the health agents of :data:`model.profiles.LOADED_BOX`: this module's subject is
routing, and fast's 30 ms checks withdrew healthy servers several times a minute here (fra-s1 five times in
11 s right after up; CI once compared a catchment taken during three such withdrawals)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from core.wait import wait_for
from lab.cli.main import status_data
from lab.load.overload import level_of
from lab.run.lab import Lab
from model.profiles import LOADED_BOX
from tests.conftest import TOPOLOGIES
from tests.lab.catchment import settled


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "global.yaml", name="tglobal", profile=LOADED_BOX) as running:
        yield running




def test_observed_catchment_equals_predicted(lab: Lab) -> None:
    settled(lab, lambda: {"catchment": lab.catchment()})


def test_status_json_matches_prediction(lab: Lab) -> None:
    data = settled(lab, lambda: status_data("tglobal"))
    assert data["topology"] == "global"
    assert data["catchment"] == data["predicted"] == lab.predicted()
    assert data["sessions_up"] == data["sessions_total"] > 0
    assert all(all(d.values()) for d in data["daemons"].values())
    assert data["control_plane"]["up"] is True


def test_withdrawing_busiest_pop_moves_only_its_clients(lab: Lab) -> None:
    """fra withdrawn: its two clients move to their own routers' PoPs, every other client stays where it was
    (a health agent's false alarm elsewhere is waited out; a client that stays moved fails); fra announced
    again, they come back. fra is announced again even when an assertion fails, so that the module's later
    tests start from the prediction."""
    before = settled(lab, lambda: {"catchment": lab.catchment()})["catchment"]
    others = {c: p for c, p in before.items() if not c.startswith("eu")}
    t = lab.withdraw("fra")
    try:
        shifts = lab.wait_shifted(["eu-c1", "eu-c2"], t)
        assert {c: s.to_pop for c, s in shifts.items()} == {"eu-c1": "ams", "eu-c2": "cdg"}
        after_s = max(s.shift_s or 0 for s in shifts.values()) + t
        settled(lab, lambda: {"catchment": {c: p for c, p in lab.catchment(after=after_s).items() if c in others}},
                expected=others)
    finally:
        t = lab.announce("fra")
    back = lab.wait_shifted(["eu-c1", "eu-c2"], t)
    assert {c: s.to_pop for c, s in back.items()} == {"eu-c1": "fra", "eu-c2": "fra"}
    settled(lab, lambda: {"catchment": lab.catchment()})


def test_region_down_leaves_other_regions_alone_and_restores(lab: Lab) -> None:
    """Every PoP server and router of eu silent: eu's clients lose everything (their own router is
    down), no other client loses a probe or moves, and after the restore the catchment is predicted."""
    from lab.measure.runner import measure

    result, _ = measure(lab, "region-down", "eu")
    (run,) = result["runs"]
    others = {c: r for c, r in run["clients"].items() if not c.startswith("eu")}
    assert others and all(r["lost"] == 0 and r["shift_s"] is None for r in others.values()), others
    assert result["catchment_restored"]


def test_a_deployed_worker_answers_every_client_from_its_pop(lab: Lab) -> None:
    """Deploy once, reach it through the anycast address from every client: each is served by the PoP
    the catchment predicts, named in X-Anylab-Server."""
    import subprocess
    import sys

    lab.deploy("whoami", "whoami.example", "async def fetch(request, env, ctx):\n    return 'ok'\n")
    fetch = ("import urllib.request as u\n"
             "r = u.urlopen(u.Request('http://203.0.113.1/', headers={'Host': 'whoami.example'}), timeout=5)\n"
             "print(r.status, r.headers['X-Anylab-Server'], r.read().decode())")
    predicted = settled(lab, lambda: {"catchment": lab.catchment()})["catchment"]
    for client in predicted:
        out = subprocess.run(["nsenter", f"--net={lab.netns[client]}", "--", sys.executable, "-c", fetch],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        assert out[0] == "200" and out[1].split("/")[0] == predicted[client] and out[2] == "ok", (client, out)


def test_a_regional_deploy_serves_only_that_regions_clients(lab: Lab) -> None:
    """Deployed to eu only: eu's clients get it from their PoP, the others a 404 naming the host."""
    import subprocess
    import sys

    deployed = lab.deploy("eu-only", "eu-only.example", "async def fetch(request, env, ctx):\n    return 'eu'\n",
                          regions=["eu"])
    assert set(deployed.placement) == {p.name for p in lab.topo.pops if p.region == "eu"}
    assert set(deployed.propagation) == {s.name for s in lab.topo.servers}
    fetch = ("import http.client\n"
             "c = http.client.HTTPConnection('203.0.113.1', 80, timeout=5)\n"
             "c.request('GET', '/', headers={'Host': 'eu-only.example'})\n"
             "r = c.getresponse()\nprint(r.status, r.read().decode())")
    for client in lab.predicted():
        out = subprocess.run(["nsenter", f"--net={lab.netns[client]}", "--", sys.executable, "-c", fetch],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        if client.startswith("eu"):
            assert out.strip() == "200 eu", (client, out)
        else:
            assert out.startswith("404 ") and "no_deployment" in out, (client, out)


def test_two_silent_pops_are_level_3_at_the_servers_watching_them(lab: Lab) -> None:
    """The design's Level 3 (multiple PoP failures), from what a server's spillover router sees: the PoPs
    it watches stop answering its load polls (every 1 s while idle; silent after 2.5 s)."""
    server = lab.topo.pop(lab.topo.pops[0].name).servers[0]
    peers = json.loads((lab.node_dir(server) / "edge-peers.json").read_text())
    down = list(dict.fromkeys(p["pop"] for p in peers))[:2]

    def level() -> int | None:
        return level_of(lab, server)

    for pop in down:
        lab.fail("pop-down", pop)
    try:
        # Silent 2.5 s after the last answer (up to 1 s before the fault), the level computed every 1 s:
        # 4.5 s, and 3 s of margin for a busy box.
        wait_for(lambda: level() == 3 or None, timeout=7.5, what=f"level 3 at {server} with {down} down",
                 interval=0.1, describe=lambda: f"level {level()}")
    finally:
        for pop in down:
            lab.restore(pop)
    wait_for(lambda: level() == 0 or None, timeout=10.0, what=f"level 0 at {server} again", interval=0.1)
