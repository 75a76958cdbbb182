"""The fault catalogue's planning: what each scenario touches, and the errors for bad requests."""

from __future__ import annotations

import pytest

from core.errors import UsageError
from lab.faults.catalogue import FAULTS, _nft_cut, _nft_silence, plan
from lab.faults.scenarios import SCENARIOS
from model.load import load_topology
from tests.conftest import TOPOLOGIES

GLOBAL = load_topology(TOPOLOGIES / "global.yaml")
FAILOVER = load_topology(TOPOLOGIES / "failover.yaml")


@pytest.mark.parametrize(("topo", "scenario", "target", "servers", "routers", "links"), [
    (FAILOVER, "service-crash", "sjc", ("sjc-s1", "sjc-s2"), (), ()),
    (FAILOVER, "server-silent", "sjc-s2", ("sjc-s2",), (), ()),
    (FAILOVER, "server-crash", "sjc-s1", ("sjc-s1",), (), (("sjc-s1", "sjc-s1-eth0"),)),
    (FAILOVER, "link-down", "r1:r3", (), (), (("r1", "r1-eth1"),)),
    (FAILOVER, "flap", "lax", ("lax-s1",), (), (("lax-s1", "lax-s1-eth0"),)),
    (GLOBAL, "pop-down", "ord", ("ord-s1",), (), ()),
    (GLOBAL, "region-down", "eu", ("fra-s1", "ams-s1", "lhr-s1", "cdg-s1"), ("eu-w", "eu-e"), ()),
    (GLOBAL, "pops-down", "eu", ("fra-s1", "ams-s1", "lhr-s1", "cdg-s1"), (), ()),
    (GLOBAL, "control-down", "control", (), (), ()),
    (GLOBAL, "kv-master-crash", "eu", (), (), ()),
    (GLOBAL, "kv-master-crash", "kv-na", (), (), ()),
    (GLOBAL, "do-crash", "eu", (), (), ()),
    (GLOBAL, "do-cut", "kv-na", (), (), ()),
    (GLOBAL, "storage-partition", "eu", (), (), ()),
    (GLOBAL, "kv-master-wipe", "kv-na", (), (), ()),
    (GLOBAL, "do-host-wipe", "eu", (), (), ()),
    (GLOBAL, "clock-ahead", "kv-na", (), (), ()),
    (GLOBAL, "clock-behind", "eu", (), (), ()),
])
def test_plans(topo: object, scenario: str, target: str, servers: tuple[str, ...], routers: tuple[str, ...],
               links: tuple[tuple[str, str], ...]) -> None:
    p = plan(topo, scenario, target)  # type: ignore[arg-type]
    assert (set(p.servers), p.routers, p.links) == (set(servers), routers, links)
    hosts = {"control": ("cp-na", "cp-eu", "cp-apac"), "eu": ("kv-eu",), "kv-na": ("kv-na",)}.get(target, ())
    if scenario == "region-down":
        hosts += ("cp-eu",)  # its control plane goes with the region
    assert p.hosts == (() if scenario == "pops-down" else hosts)  # the region's storage stays up


@pytest.mark.parametrize(("scenario", "target", "words"), [
    ("meteor", "sjc", "unknown scenario 'meteor'; use one of: service-crash"),
    ("drain", "nowhere", "unknown target 'nowhere'"),
    ("link-down", "sjc", "link-down does not apply to pop 'sjc'; it takes a link"),
    ("pop-down", "sjc-s1", "pop-down does not apply to server 'sjc-s1'"),
    ("link-down", "r2:r3", "no link 'r2:r3'; router links are: r1:r2, r1:r3"),
    ("link-down", "r2:sjc-s1", "is not a link between two routers"),
    ("region-down", "r1", "does not apply to router 'r1'"),
    ("control-cut", "sjc", "control-cut does not apply to pop 'sjc'; it takes a control"),
    ("drain", "control", "drain does not apply to control 'control'"),
])
def test_bad_requests_name_the_problem(scenario: str, target: str, words: str) -> None:
    with pytest.raises(UsageError) as err:
        plan(FAILOVER, scenario, target)
    assert words in str(err.value)


def test_flap_is_bounded() -> None:
    with pytest.raises(UsageError, match=r"1\.\.100 cycles"):
        plan(FAILOVER, "flap", "sjc", count=1000)
    with pytest.raises(UsageError, match="period"):
        plan(FAILOVER, "flap", "sjc", period=0.01)


def test_silence_keeps_loopback() -> None:
    rules = _nft_silence(forwarding=True)
    assert rules.count('!= "lo" drop') == 3 and "hook forward" in rules
    assert "hook forward" not in _nft_silence(forwarding=False)


def test_a_partition_drops_every_address_named_both_ways() -> None:
    rules = _nft_cut("10.0.0.1", "10.0.0.2")
    assert rules.count("{ 10.0.0.1, 10.0.0.2 } drop") == 2 and "ip saddr" in rules and "ip daddr" in rules


def test_every_scenario_has_one_entry_in_the_catalogue() -> None:
    """The command line reads the names from lab.faults.scenarios without loading the catalogue."""
    assert list(FAULTS) == list(SCENARIOS)
