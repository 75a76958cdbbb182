"""The PoP platform in a running lab: deploys through the control plane reach clients over anycast,
switch atomically, roll back, and survive the control plane being down or cut off (Level 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from control_plane.client import ControlPlaneError
from core.errors import WaitTimeout
from core.wait import wait_for
from lab.cli.main import status_data
from lab.run.lab import Lab
from tests.conftest import TOPOLOGIES

WORKER = "async def fetch(request, env, ctx):\n    return env.VERSION\n"
#: Requests a client sends in a loop over one keep-alive connection, printing one JSON line each.
LOOP = """
import http.client, json, sys, time
conn = http.client.HTTPConnection("203.0.113.1", 80, timeout=5)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    conn.request("GET", "/", headers={"Host": "app.example"})
    r = conn.getresponse()
    print(json.dumps([r.status, r.read().decode()]), flush=True)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.from_file(TOPOLOGIES / "two_pops.yaml", name="tplat") as running:
        yield running


def in_node(lab: Lab, node: str, code: str, *args: str, timeout: float = 30) -> str:
    return subprocess.run(["nsenter", f"--net={lab.netns[node]}", "--", sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=timeout, check=True).stdout


GET = """
import http.client, json
conn = http.client.HTTPConnection("203.0.113.1", 80, timeout=5)
conn.request("GET", "/", headers={"Host": "app.example"})
r = conn.getresponse()
print(json.dumps([r.status, r.read().decode()]))
"""


def get(lab: Lab) -> tuple[int, str]:
    status, body = json.loads(in_node(lab, 'c1', GET))
    return int(status), str(body)


def deploy(lab: Lab, version: str, timeout: float = 30.0) -> str | None:
    return lab.deploy("app", "app.example", WORKER, {"VERSION": version}, timeout=timeout).version


def test_deploy_switches_atomically_under_load_and_rolls_back(lab: Lab) -> None:
    v1 = deploy(lab, "v1")
    assert get(lab) == (200, "v1")
    load = subprocess.Popen(["nsenter", f"--net={lab.netns['c1']}", "--", sys.executable, "-c", LOOP, "3"],
                            stdout=subprocess.PIPE, text=True)
    deployed = lab.deploy("app", "app.example", WORKER, {"VERSION": "v2"})
    out, _ = load.communicate(timeout=30)
    answers = [tuple(json.loads(line)) for line in out.splitlines()]
    bodies = [body for _status, body in answers]
    # Every request answered 200 by one whole version, and once v2 answered, v1 never again.
    assert answers and all(status == 200 for status, _ in answers)
    assert set(bodies) <= {"v1", "v2"} and "v2" in bodies
    assert "v1" not in bodies[bodies.index("v2"):]
    assert max(deployed.propagation.values()) < 5.0  # a long poll answers at once; 5 s is a loaded CI box
    back = lab.rollback("app")
    assert back.placement == {"sjc": v1, "lax": v1} and get(lab) == (200, "v1")


def test_control_plane_down_keeps_serving_from_disk_and_refuses_deploys(lab: Lab) -> None:
    deploy(lab, "before-outage")
    lab.fail("control-down", "control")
    try:
        with pytest.raises(ControlPlaneError, match="it is down: deployed workers keep serving"):
            deploy(lab, "during-outage")
        assert get(lab) == (200, "before-outage")
        assert status_data("tplat")["control_plane"]["up"] is False
        # The edge worker restarted while the control plane is down serves its last good set from disk.
        lab.fail("service-crash", "sjc-s1")
        lab.restore("sjc-s1")
        assert get(lab) == (200, "before-outage")
    finally:
        lab.restore("control")
    assert deploy(lab, "after-outage") and get(lab) == (200, "after-outage")


def test_control_plane_cut_off_records_the_deploy_and_servers_take_it_when_back(lab: Lab) -> None:
    deploy(lab, "old")
    lab.fail("control-cut", "control")
    try:
        with pytest.raises(WaitTimeout, match="the deploy is recorded"):
            deploy(lab, "new", timeout=2.0)
        assert get(lab) == (200, "old")
    finally:
        lab.restore("control")
    client = lab.control_plane_api()
    placement = client.deployments()["workers"]["app"]["placement"]
    client.wait_applied("app", placement, 0.0, timeout=30)  # the syncers' backoff is ≤ 2 s, long polls ≤ 25 s
    assert get(lab) == (200, "new")


@pytest.mark.parametrize(("header", "status"), [(None, 401), ("Bearer wrong", 401)])
def test_the_api_on_the_lab_network_wants_the_token(lab: Lab, header: str | None, status: int) -> None:
    """From a PoP server (clients have no route to the control node: only the anycast prefix)."""
    code = ("import http.client, sys\n"
            f"c = http.client.HTTPConnection('{lab.topo.control.address}', {lab.topo.control.port}, timeout=5)\n"
            "h = {'Authorization': sys.argv[1]} if sys.argv[1] else {}\n"
            "c.request('POST', '/v1/workers/evil', body=b'{}', headers=h)\n"
            "print(c.getresponse().status)")
    assert in_node(lab, "sjc-s1", code, header or "").strip() == str(status)


def test_http_load_sees_keepalive_connections_break_when_anycast_moves(lab: Lab) -> None:
    """A graceful drain of sjc: every keep-alive connection c1 had to sjc is reset by lax once its
    packets go there; users opening a connection per request move without (or with at most one, a
    connection caught in the switch) failure; afterwards lax serves both."""
    from lab.measure.runner import HttpSpec, measure

    result, _ = measure(lab, "drain", "sjc", http=HttpSpec(rate=50, connections=2))
    (run,) = result["runs"]
    ka, nc = run["http"]["c1"]["ka"], run["http"]["c1"]["nc"]
    assert ka["broken_connections"] >= 1 and set(ka["errors"]) == {"reset"}, ka
    assert nc["failed"] <= 1, nc
    assert ka["servers_before"] == nc["servers_before"] == ["sjc/sjc-s1"]
    assert ka["servers_after"] == nc["servers_after"] == ["lax/lax-s1"]
    assert ka["latency_ms"]["after"]["n"] >= 10 and nc["latency_ms"]["after"]["n"] >= 10
    assert result["catchment_restored"]


HOSTILE = {
    "spin": ("async def fetch(request, env, ctx):\n    while True:\n        pass\n", 503, "cpu_limit"),
    "bomb": ("async def fetch(request, env, ctx):\n    return str(len(bytearray(256 << 20)))\n", 503,
             "memory_limit"),
    "raiser": ("async def fetch(request, env, ctx):\n    raise ValueError('boom')\n", 500, "worker_exception"),
    # The control plane's node, straight from worker code: the edge refuses it (tenant.egress) and counts it.
    "snoop": ("async def fetch(request, env, ctx):\n    return (await env.fetch('http://10.3.0.1:8000/')).body\n",
              500, "worker_exception"),
    # 60 subrequests to the lab's origin (a destination the edge allows): the 51st is over the limit.
    "storm": ("async def fetch(request, env, ctx):\n    for _ in range(60):\n"
              "        await env.fetch('http://origin/')\n", 500, "subrequest_limit"),
}
STATUS = """
import http.client, json, sys
out = {}
for host in sys.argv[1:]:
    c = http.client.HTTPConnection("203.0.113.1", 80, timeout=10)
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    out[host] = [r.status, r.getheader("x-anylab-error"), r.read().decode()]
print(json.dumps(out))
"""


def test_hostile_workers_get_their_documented_error_and_a_neighbour_keeps_answering(lab: Lab) -> None:
    """Deployed through the control plane and reached through anycast, on the same server as a good one."""
    deploy(lab, "good")
    for name, (code, _status, _error) in HOSTILE.items():
        lab.deploy(name, f"{name}.example", code)
    hosts = [f"{n}.example" for n in HOSTILE]
    got = json.loads(in_node(lab, "c1", STATUS, *hosts, "app.example", timeout=60))
    for name, (_code, status, error) in HOSTILE.items():
        assert got[f"{name}.example"][:2] == [status, error], (name, got[f"{name}.example"])
    assert got["app.example"] == [200, None, "good"]
    assert "SubrequestRefused" in str(got["snoop.example"]) and "is not an origin" in str(got["snoop.example"])
    server = lab.topo.pop(str(lab.catchment()["c1"]).split("|")[0]).servers[0]  # the one c1 reaches
    wait_for(lambda: json.loads((lab.node_dir(server) / "protect.json").read_text())["counters"]["egress_refused"]
             >= 1, timeout=5, what=f"{server}'s protect.json to count the refusal")
