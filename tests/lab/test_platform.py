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
    cp = lab.topo.control_planes[0]
    code = ("import http.client, sys\n"
            f"c = http.client.HTTPConnection('{cp.address}', {cp.port}, timeout=5)\n"
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
    assert ka["servers_before"] == nc["servers_before"] == ["sjc/sjc-s1"], (ka, nc)
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


#: Sends the requests of argv[1] (JSON: [name, address, port, method, target, body (base64), headers])
#: from the node it runs in, in order, printing {name: [status, reason or error]}.
RAW = """
import base64, http.client, json, sys
out = {}
for name, address, port, method, target, body, headers in json.loads(sys.argv[1]):
    c = http.client.HTTPConnection(address, port, timeout=5)
    c.request(method, target, body=base64.b64decode(body), headers={"Content-Type": "application/json", **headers})
    r = c.getresponse()
    raw = r.read()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {}
    out[name] = [r.status, answer.get("reason") or answer.get("error")]
print(json.dumps(out))
"""


def test_every_internal_endpoint_refuses_what_its_peers_did_not_sign_and_keeps_serving(lab: Lab) -> None:
    """Issue 19, from a PoP server's namespace (what a compromised server or a stray process there could
    send): every internal endpoint of the KV master, the DO host and directory and the control plane's
    PoP paths refuses a request without credentials, signed with another lab's keys, changed after it
    was signed, or replayed — each counted by the service — and everything keeps serving afterwards."""
    import base64

    from core.peer_auth import PeerKeys, Signer, node_key, read_secret
    from kv.client import KvClient
    from model.constants import DO_DIRECTORY_PORT, DO_HOST_PORT

    master, control = lab.topo.kv_masters[0], lab.topo.control
    region = master.region
    cp = lab.topo.control_plane_of(region)

    def key_of(node: str, file: str, peer: str) -> Signer:  # a real peer's own key, read as root
        return Signer(peer, read_secret(lab.node_dir(node) / file))

    server = lab.topo.pops[0].servers[0]
    replica = key_of(server, "kv-replica-peer-kv-replica.key", f"kv-replica/{server}")
    endpoints = [  # (service, address, port, method, target, body, a peer that may call it)
        ("kv replicate", str(master.address), master.port, "POST", "/v1/replicate", {"ns": "t", "entries": []},
         key_of(master.name, "kv-master-peer-kv-master.key", f"kv-master/{master.name}")),
        ("kv changes", str(master.address), master.port, "GET", "/v1/changes?since=%7B%7D&wait=0", None, replica),
        ("kv put", str(master.address), master.port, "POST", "/v1/kv/t/put", {"key": "probe", "value": ""}, replica),
        ("do call", str(master.address), DO_HOST_PORT, "POST", "/v1/call", {"key": "x"},
         key_of(server, "edge-peer-do-router.key", f"do-router/{server}")),
        ("do install", str(master.address), DO_HOST_PORT, "POST", "/v1/install",
         {"key": "t/C/x", "snapshot": {"seq": 9, "epoch": 1000, "data": {}}},
         key_of(master.name, "do-host-peer-do-host.key", f"do-host/{region}")),
        ("do replicate", str(master.address), DO_HOST_PORT, "POST", "/v1/replicate", {"key": "t/C/x", "entries": []},
         key_of(master.name, "do-host-peer-do-host.key", f"do-host/{region}")),
        ("do lease", str(control.address), DO_DIRECTORY_PORT, "POST", "/v1/lease", {"region": region, "objects": {}},
         key_of(master.name, "do-host-peer-do-host.key", f"do-host/{region}")),
        ("do where", str(control.address), DO_DIRECTORY_PORT, "GET", "/v1/where", None,
         key_of(server, "edge-peer-do-router.key", f"do-router/{server}")),
        ("cp artifact", str(cp.address), cp.port, "GET", "/v1/artifacts/0123456789ab", None,
         key_of(server, "edge-peer-pop.key", f"pop/{server}")),
    ]
    other_lab = PeerKeys.make()
    requests = []
    for name, address, port, method, target, payload, peer in endpoints:
        body = b"" if payload is None else json.dumps(payload).encode()
        authority = f"{address}:{port}"
        role, node = peer.peer.split("/", 1)
        stranger = Signer(peer.peer, node_key(other_lab.secrets[role], node))  # the same name, another lab
        good = peer.headers(method, authority, target, body)
        changed = body + b" " if body else b"{}"
        for case, sent, headers in (("unsigned", body, {}),
                                    ("other lab", body, stranger.headers(method, authority, target, body)),
                                    ("changed", changed, peer.headers(method, authority, target, body)),
                                    ("first", body, good), ("replayed", body, good)):
            requests.append([f"{name}: {case}", address, port, method, target,
                             base64.b64encode(sent).decode(), headers])
    got = json.loads(in_node(lab, server, RAW, json.dumps(requests), timeout=60))
    expect_reason = {"unsigned": "missing", "other lab": "bad_signature", "changed": "bad_signature",
                     "replayed": "replayed"}
    for name, *_ in endpoints:
        for case, reason in expect_reason.items():
            status, why = got[f"{name}: {case}"]
            if name == "cp artifact" and case == "unsigned":  # no peer header: taken as the operator's, no token
                assert status == 401, (name, case, got)
                continue
            assert (status, why) == (401, reason), (name, case, got[f"{name}: {case}"])
        assert got[f"{name}: first"][0] != 401, (name, got[f"{name}: first"])  # a peer's own request is taken
    # Counted by each service, and each keeps serving.
    master_status = KvClient(lab.node_dir(master.name) / "kv.sock").status()
    assert master_status["auth_refused"]["missing"] >= 3 and master_status["auth_refused"]["replayed"] >= 3
    assert lab.do_host(region)["auth_refused"]["bad_signature"] >= 6
    assert lab.do_directory()["auth_refused"]["replayed"] >= 2
    assert lab.control_plane_api().call("GET", "/v1/status")["auth_refused"]["bad_signature"] >= 2
    assert KvClient(lab.node_dir(master.name) / "kv.sock").put("t", "after", b"ok")["committed"]
    deploy(lab, "after-the-corpus")
    assert get(lab) == (200, "after-the-corpus")
    assert lab.wait_do_leases(timeout=10)
