"""Catchment prediction: BGP's decision process as the lab configures FRR."""

from __future__ import annotations

from typing import Any

import pytest

from model.graph import busiest_pop, exports, mermaid, predict_catchment, predict_routes
from model.load import build_topology, load_topology
from tests.conftest import TOPOLOGIES


def line(pops: list[dict[str, Any]]) -> dict[str, Any]:
    """c1 - r1 - r2 - r3, with PoPs attached where the test says."""
    return {
        "name": "line",
        "regions": [{"name": "x"}],
        "routers": [{"name": f"r{i}", "asn": 65000 + i, "region": "x"} for i in (1, 2, 3)],
        "links": [{"a": "r1", "b": "r2"}, {"a": "r2", "b": "r3"}],
        "pops": [{"region": "x", **p} for p in pops],
        "clients": [{"name": "c1", "region": "x", "router": "r1"}],
    }


@pytest.mark.parametrize(
    ("pops", "expected", "why"),
    [
        ([{"name": "a", "asn": 64601, "upstreams": ["r1"]}, {"name": "b", "asn": 64602, "upstreams": ["r3"]}],
         "a", "shorter AS path"),
        ([{"name": "a", "asn": 64601, "upstreams": ["r1"], "prepend": 3},
          {"name": "b", "asn": 64602, "upstreams": ["r3"]}], "b", "prepending makes a the longer path"),
        ([{"name": "a", "asn": 64601, "upstreams": ["r1"], "prepend": 2},
          {"name": "b", "asn": 64602, "upstreams": ["r3"]}], "a",
         "equal length (3): lowest neighbour router-id (a's server 10.254.0.1 < r2's 10.255.0.2)"),
        ([{"name": "a", "asn": 64601, "upstreams": ["r1"], "med": 50},
          {"name": "b", "asn": 64601, "upstreams": ["r1"], "med": 10}], "b",
         "same neighbour AS: lower MED wins"),
        ([{"name": "a", "asn": 64601, "upstreams": ["r1"], "med": 10},
          {"name": "b", "asn": 64602, "upstreams": ["r1"], "med": 50}], "a",
         "different neighbour AS: MED ignored, router-id decides (a listed first)"),
        ([{"name": "b", "asn": 64602, "upstreams": ["r1"], "med": 10},
          {"name": "a", "asn": 64601, "upstreams": ["r1"], "med": 50}], "b",
         "different neighbour AS: MED ignored, router-id decides (b listed first)"),
        ([{"name": "a", "asn": 64601, "upstreams": ["r1"]}, {"name": "b", "asn": 64601, "upstreams": ["r1"]}],
         "a|b", "same ASN, same attributes: ECMP across PoPs"),
        ([{"name": "a", "asn": 64601, "upstreams": ["r3"]}, {"name": "b", "asn": 64601, "upstreams": ["r3"],
                                                           "med": 5}],
         "a", "MED at r3 decides; MED is not passed on, r1 just follows r3"),
    ],
)
def test_decision_process(pops: list[dict[str, Any]], expected: str, why: str) -> None:
    topo = build_topology(line(pops))
    assert predict_catchment(topo) == {"c1": expected}, why


def test_as_paths_and_loop_prevention() -> None:
    topo = build_topology(line([{"name": "a", "asn": 64601, "upstreams": ["r3"]}]))
    routes = predict_routes(topo, topo.anycast[0])
    assert routes["r3"] is not None and routes["r3"].as_path == (64601,)
    assert routes["r2"] is not None and routes["r2"].as_path == (65003, 64601)
    assert routes["r1"] is not None and routes["r1"].as_path == (65002, 65003, 64601)


def test_two_pops_prefers_sjc() -> None:
    assert predict_catchment(load_topology(TOPOLOGIES / "two_pops.yaml")) == {"c1": "sjc"}


def test_global_catchment_and_busiest() -> None:
    topo = load_topology(TOPOLOGIES / "global.yaml")
    catchment = predict_catchment(topo)
    assert catchment == {"na-c1": "ord", "na-c2": "ord", "eu-c1": "fra", "eu-c2": "fra",
                         "ap-c1": "sin", "ap-c2": "sin"}
    assert busiest_pop(catchment) == "fra"  # tie of two clients each: alphabetical


def test_withdrawn_pop_moves_clients_where_expected() -> None:
    data = load_topology(TOPOLOGIES / "global.yaml").spec.model_dump(mode="json")
    data["anycast"] = [{"prefix": "203.0.113.1/32", "pops": [p["name"] for p in data["pops"] if p["name"] != "fra"]}]
    data["pops"] = [p for p in data["pops"] if p["name"] != "fra"]
    catchment = predict_catchment(build_topology(data))
    assert catchment["eu-c1"] == "ams" and catchment["eu-c2"] == "cdg"


def test_mermaid_lists_every_node() -> None:
    topo = load_topology(TOPOLOGIES / "two_pops.yaml")
    text = mermaid(topo)
    assert text.startswith("flowchart LR")
    for name in topo.node_names():
        assert name in text


def test_valley_free_prefers_customer_routes_over_shorter_ones() -> None:
    """valley_free.yaml: a holds near over its peer b (2 AS hops) and far down its customers (3 AS
    hops); local preference picks far. Without relations the shorter path wins."""
    topo = load_topology(TOPOLOGIES / "valley_free.yaml")
    assert predict_catchment(topo) == {"ca": "far", "ct": "near", "cb": "near"}
    routes = predict_routes(topo, topo.anycast[0])
    a = routes["a"]
    assert a is not None and a.as_path == (65030, 65040, 64602) and a.learned_from == "customer"
    plain = topo.spec.model_dump(mode="json")
    for link in plain["links"]:
        link["relation"] = None
    assert predict_catchment(build_topology(plain))["ca"] == "near"


def test_valley_free_export_keeps_peer_routes_from_providers() -> None:
    """Without far, a's best is near through its peer b: a passes it to its customer c, never to its
    provider t1 (t1 keeps only its own customer route through b)."""
    data = load_topology(TOPOLOGIES / "valley_free.yaml").spec.model_dump(mode="json")
    data["pops"] = [p for p in data["pops"] if p["name"] != "far"]
    topo = build_topology(data)
    routes = predict_routes(topo, topo.anycast[0])
    a, c, t1 = routes["a"], routes["c"], routes["t1"]
    assert a is not None and a.learned_from == "peer" and a.as_path == (65020, 64601)
    assert c is not None and c.as_path == (65010, 65020, 64601)
    assert t1 is not None and t1.as_path == (65020, 64601)
    assert exports(a, "customer") and not exports(a, "provider") and not exports(a, "peer")
