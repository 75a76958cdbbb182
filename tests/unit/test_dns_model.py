"""The lab's DNS as data: the ``dns`` section checked and resolved (model), the platform's zone for a
control-plane state (dnsd.platform), and the health agent's hand-made SOA query (health.checks)."""

from __future__ import annotations

import asyncio
import copy
import socket
from ipaddress import IPv4Network
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
import yaml

from core.errors import TopologyError
from dnsd.platform import Base, check_state, platform_zone
from dnsd.zone import render
from health.checks import DnsCheck, soa_problem, soa_query
from model.graph import predict_routes
from model.load import build_topology
from tests.conftest import TOPOLOGIES

GLOBAL: dict[str, Any] = yaml.safe_load((TOPOLOGIES / "global.yaml").read_text())


def with_dns(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GLOBAL)
    data["dns"].update(changes)
    return data


def test_global_has_a_root_a_hidden_primary_three_providers_and_two_resolvers_per_region() -> None:
    topo = build_topology(GLOBAL)
    d = topo.dns
    assert d is not None and d.zone == "edge.test."
    assert [n.name for n in d.of_role("provider")] == ["p1-na-w", "p1-eu-w", "p1-ap-w", "p2-na-e", "p2-eu-e",
                                                       "p2-ap-e", "p3-eu-e"]
    assert [(p.name, p.kind, str(p.address), p.ns_name) for p in d.providers] == [
        ("p1", "knot", "198.51.100.1", "ns1.edge.test."), ("p2", "nsd", "198.51.100.2", "ns2.edge.test."),
        ("p3", "knot", str(d.node("p3-eu-e").address), "ns3.edge.test.")]
    # Anycast nodes speak BGP to their router (a customer of it); the unicast backup does not.
    assert d.node("p3-eu-e").speaker is None
    speaker = d.node("p2-eu-e").speaker
    assert speaker is not None and speaker.asn == 64702 and speaker.prefixes == (IPv4Network("198.51.100.2/32"),)
    assert "p2-eu-e" in [n.node for n in topo.router("eu-e").neighbors]
    check = speaker.profile.health.checks[0]
    assert (check.kind, check.host, check.port, check.query) == ("dns", "198.51.100.2", 53, "edge.test.")
    # A region's clients ask both of its resolvers, each starting with another kind.
    r1, r2 = d.node("r1-eu").address, d.node("r2-eu").address
    assert d.resolvers_for("eu-c1") == (r1, r2) and d.resolvers_for("eu-c2") == (r2, r1)
    # Each router reaches a node of the anycast provider two AS hops away at most; ap-e's two equal paths
    # (via ap-w and via na-w) go to the lower router-id, na-w's.
    routes = predict_routes(topo, IPv4Network("198.51.100.1/32"))
    assert {r: sorted(p.pops) if p else None for r, p in routes.items()} == {
        "na-w": ["p1-na-w"], "na-e": ["p1-na-w"], "eu-w": ["p1-eu-w"], "eu-e": ["p1-eu-w"], "ap-w": ["p1-ap-w"],
        "ap-e": ["p1-na-w"]}


@pytest.mark.parametrize(("changes", "words"), [
    ({"providers": [{"name": "p1", "kind": "knot", "anycast": "198.51.100.1/32", "routers": ["na-w"]}]},
     "needs both 'anycast'"),
    ({"providers": [{"name": "p3", "kind": "knot", "routers": ["na-w", "eu-w"]}]}, "a unicast provider has one node"),
    ({"providers": [{"name": "p3", "kind": "powerdns", "routers": ["na-w"]}]}, "kind"),
    ({"providers": [{"name": "p3", "kind": "knot", "routers": ["nowhere"]}]}, "unknown router 'nowhere'"),
    ({"providers": [{"name": "p1", "kind": "knot", "anycast": "203.0.113.0/24", "asn": 64701,
                     "routers": ["na-w"]}]}, "overlaps the platform anycast prefix"),
    ({"providers": [{"name": "p1", "kind": "knot", "anycast": "10.9.0.0/24", "asn": 64701,
                     "routers": ["na-w"]}]}, "overlaps the lab network"),
    ({"providers": [{"name": "p1", "kind": "knot", "anycast": "198.51.100.1/32", "asn": 65110,
                     "routers": ["na-w"]}]}, "ASN 65110 is already used by router na-w"),
    ({"resolvers": ["unbound", "unbound"]}, "names a resolver kind twice"),
    ({"resolvers": ["powerdns"]}, "resolvers"),
    ({"zone": "Edge_1"}, "not a valid node name"),
])
def test_a_bad_dns_section_is_refused_naming_the_field(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(TopologyError, match=words):
        build_topology(with_dns(**changes))


def test_a_name_too_long_for_an_interface_is_refused() -> None:
    data = with_dns()
    data["dns"]["providers"][0]["name"] = "provider"  # provider-na-w-eth0: 18 characters
    with pytest.raises(TopologyError, match="longer than 15"):
        build_topology(data)


BASE = Base("edge.test.", (("ns1.edge.test.", "198.51.100.1"), ("ns2.edge.test.", "10.6.0.17")), "203.0.113.1",
            {"ord-s1": "10.1.0.1", "fra-s1": "10.1.0.9"}, ttl=30, negative_ttl=5, expire_s=600)
STATE = {"generation": 12, "workers": ["hello", "bad_name"], "withdrawn": [],
         "pops": {"ord": {"region": "na", "servers": ["ord-s1"]}, "fra": {"region": "eu", "servers": ["fra-s1"]}}}


def test_the_platform_zone_names_every_deployed_worker_and_every_pop_of_a_region_not_withdrawn() -> None:
    zone = platform_zone(BASE, STATE)
    assert zone.serial == 12 and zone.soa.expire == 600 and zone.soa.minimum == 5 and zone.ttl == 30
    lines = render(zone).splitlines()
    assert "hello.edge.test. A 203.0.113.1" in lines and "www.edge.test. A 203.0.113.1" in lines
    assert not any("bad_name" in line or line.startswith("*") for line in lines)  # no wildcard, no bad label
    assert "ord.pop.edge.test. A 10.1.0.1" in lines and "fra.pop.edge.test. A 10.1.0.9" in lines
    assert lines.count("edge.test. NS ns1.edge.test.") == 1 and "ns2.edge.test. A 10.6.0.17" in lines
    withdrawn = render(platform_zone(BASE, {**STATE, "withdrawn": ["eu"]})).splitlines()
    assert "ord.pop.edge.test. A 10.1.0.1" in withdrawn and not any("fra.pop" in line for line in withdrawn)
    assert platform_zone(BASE, {**STATE, "generation": 0}).serial == 1  # a serial is never 0


@pytest.mark.parametrize(("state", "words"), [
    ([], "not a JSON object"),
    ({**STATE, "generation": "7"}, "generation '7'"),
    ({**STATE, "generation": True}, "generation True"),
    ({**STATE, "workers": "hello"}, "lists of names"),
    ({**STATE, "withdrawn": [1]}, "lists of names"),
    ({**STATE, "pops": {"ord": {"region": "na"}}}, "'pops' must map"),
])
def test_a_control_plane_answer_of_the_wrong_shape_is_refused_before_it_is_used(state: object, words: str) -> None:
    assert check_state(STATE) is STATE
    with pytest.raises(ValueError, match=words):
        check_state(state)


def answer(query: bytes, aa: bool = True, rcode: int = 0, with_soa: bool = True) -> bytes:
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    if aa:
        r.flags |= dns.flags.AA
    r.set_rcode(dns.rcode.Rcode(rcode))
    if with_soa:
        r.answer.append(dns.rrset.from_text("edge.test.", 30, "IN", "SOA", "ns1.edge.test. h.edge.test. 1 2 3 4 5"))
    return r.to_wire()


def test_the_hand_made_soa_query_is_a_real_query_and_only_an_authoritative_answer_passes() -> None:
    wire = soa_query("edge.test.", 0x1234)
    q = dns.message.from_wire(wire)
    assert q.id == 0x1234 and str(q.question[0]) == "edge.test. IN SOA" and not q.flags & dns.flags.RD
    assert soa_problem(answer(wire), 0x1234) is None
    assert soa_problem(answer(wire), 0x1235) == "no answer to our query"
    assert soa_problem(answer(wire, aa=False), 0x1234) == "answer without authority (the zone is not loaded)"
    assert soa_problem(answer(wire, rcode=2), 0x1234) == "rcode 2"
    assert soa_problem(answer(wire, with_soa=False), 0x1234) == "no SOA in the answer"
    assert soa_problem(wire, 0x1234) == "not a response"


def test_the_dns_check_passes_on_a_server_that_answers_and_times_out_on_a_silent_one() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    async def run() -> tuple[str | None, bool]:
        loop = asyncio.get_running_loop()

        def reply() -> None:
            data, addr = server.recvfrom(512)
            server.sendto(answer(data), addr)

        loop.add_reader(server.fileno(), reply)
        ok = await DnsCheck("127.0.0.1", port, "edge.test.", 1.0).probe()
        loop.remove_reader(server.fileno())
        try:
            await asyncio.wait_for(DnsCheck("127.0.0.1", port, "edge.test.", 0.05).probe(), 0.05)
        except TimeoutError:
            return ok, True
        return ok, False

    with server:
        ok, timed_out = asyncio.run(run())
    assert ok is None and timed_out
