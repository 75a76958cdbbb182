"""The link shaper's pure parts: the nfnetlink_queue encoding, the relay's deadlines and loss model, the
kernel rulesets."""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import TopologyError, UsageError
from lab.links import apply, nfqueue
from lab.links.plan import find, kernel_of, links_of, relay_config, with_changes
from lab.links.relay import Direction, DirShape, deadline, gilbert, handle, jitter_sample, shape_from
from lab.run.controller_socket import _link_fields
from model.geo import CITIES, great_circle_km, propagation_ms
from model.load import build_topology, load_topology
from model.topology import Shape


def packet_message(queue: int, packet_id: int) -> bytes:
    hdr = nfqueue.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 4))
    return nfqueue.message(nfqueue.NFQNL_MSG_PACKET, queue, nfqueue.attr(9, b"xx") + hdr)


def test_parse_finds_packet_ids_after_other_attributes() -> None:
    buf = packet_message(3, 77) + packet_message(3, 78)
    assert [p.packet_id for p in nfqueue.parse(buf)] == [77, 78]


def test_parse_reads_errors_and_ignores_a_truncated_tail() -> None:
    err = struct.pack("=IHHII", 36, nfqueue.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    assert [p.error for p in nfqueue.parse(err)] == [1]
    assert list(nfqueue.parse(packet_message(0, 5)[:-3])) == []
    assert list(nfqueue.parse(b"\xff" * 7)) == []


def test_verdict_batch_names_the_queue_and_the_highest_id() -> None:
    msg = nfqueue.verdict(258, 9, True, batch=True)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and kind == (3 << 8) | nfqueue.NFQNL_MSG_VERDICT_BATCH and flags == 1
    assert struct.unpack_from("!H", msg, 18)[0] == 258
    assert struct.unpack_from("!II", msg, 24) == (nfqueue.NF_ACCEPT, 9)


@pytest.mark.parametrize(("now", "last", "delay", "jit", "want"), [
    (10.0, 0.0, 0.020, 0.0, 10.020),     # the delay
    (10.0, 10.5, 0.020, 0.0, 10.5),      # never before the packet ahead: order kept
    (10.0, 0.0, 0.005, -0.010, 10.0),    # jitter never makes it leave before it came
    (10.0, 0.0, 0.020, 0.003, 10.023),
])
def test_deadline(now: float, last: float, delay: float, jit: float, want: float) -> None:
    assert deadline(now, last, DirShape(delay_s=delay), jit) == pytest.approx(want)


def test_gilbert_reaches_the_asked_loss_in_runs_of_the_asked_length() -> None:
    shape = DirShape(loss=0.05, burst=4.0)
    rng = random.Random(7)
    bad, drops, runs, prev = False, 0, 0, False
    n = 400_000
    for _ in range(n):
        bad, drop = gilbert(bad, rng.random(), shape)
        drops += drop
        runs += drop and not prev
        prev = drop
    assert drops / n == pytest.approx(0.05, rel=0.05)
    assert drops / runs == pytest.approx(4.0, rel=0.05)
    assert gilbert(True, 0.0, DirShape()) == (False, False)  # no loss asked: never drops


def test_jitter_draws_stay_in_their_distribution() -> None:
    rng = random.Random(1)
    uni = [jitter_sample(DirShape(jitter_s=0.002), rng) for _ in range(10_000)]
    assert min(uni) >= -0.002 and max(uni) <= 0.002
    normal = [jitter_sample(DirShape(jitter_s=0.002, distribution="normal"), rng) for _ in range(10_000)]
    sd = (sum(x * x for x in normal) / len(normal)) ** 0.5
    assert sd == pytest.approx(0.002, rel=0.05)
    assert jitter_sample(DirShape(), rng) == 0.0


def test_direction_releases_in_order_and_drops_only_what_the_model_lost() -> None:
    d = Direction(0, "eth1 out", DirShape(delay_s=0.010))
    rng = random.Random(0)
    d.take(1.000, [1, 2], rng)
    d.take(1.004, [3], rng)
    assert d.due(1.009) == ([], None)
    assert d.due(1.0105) == ([], 2)
    assert d.due(2.0) == ([], 3)
    assert (d.passed, d.dropped, d.max_held) == (3, 0, 3)
    lossy = Direction(1, "eth1 in", DirShape(loss=0.5, burst=2.0))
    lossy.take(1.0, list(range(1000)), random.Random(3))
    drops, top = lossy.due(1.0)
    assert top == 999 or 999 in drops
    assert 400 < len(drops) < 600


@pytest.mark.parametrize("bad", [
    {"delay_s": -1}, {"delay_s": "5"}, {"delay_s": True}, {"loss": 1.0}, {"burst": 0.5},
    {"distribution": "pareto"}, {"nope": 1}, [1, 2],
])
def test_shape_from_refuses_what_is_not_a_shape(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        shape_from(bad)  # type: ignore[arg-type]


def test_control_set_and_stats() -> None:
    dirs = {4: Direction(4, "eth2 out", DirShape())}
    got = handle({"op": "set", "queue": 4, "shape": {"delay_s": 0.03, "loss": 0.01}}, dirs)
    assert got["shape"]["delay_s"] == 0.03 and dirs[4].shape.loss == 0.01
    assert handle({"op": "stats"}, dirs)["queues"][0]["link"] == "eth2 out"
    with pytest.raises(KeyError):
        handle({"op": "set", "queue": 5, "shape": {}}, dirs)
    with pytest.raises(ValueError):
        handle({"op": "reboot"}, dirs)


def test_nft_loss_ruleset_refills_the_chain_at_once_and_never_deletes_it() -> None:
    # Deleting a hooked chain would make the kernel drop every packet the namespace's relay holds.
    text = apply.nft_loss({"eth1": 0.01, "eth2": 0.0})
    assert "flush chain inet anylab_links out\n" in text and "delete" not in text
    assert 'add rule inet anylab_links out oifname "eth1" numgen random mod 1000000 < 10000 counter drop' in text
    assert "eth2" not in text
    empty = apply.nft_loss({})
    assert "flush chain" in empty and "add rule" not in empty and "delete" not in empty


def test_iptables_queues_sends_each_relayed_direction_to_its_queue() -> None:
    text = apply.iptables_queues([apply.Relayed("eth1", 2, 3), apply.Relayed("eth2", None, 5)])
    assert "-A POSTROUTING -o eth1 -j NFQUEUE --queue-num 2" in text
    assert "-A PREROUTING -i eth1 -j NFQUEUE --queue-num 3" in text
    assert "-o eth2" not in text and "-A PREROUTING -i eth2 -j NFQUEUE --queue-num 5" in text
    assert "bypass" not in text  # a dead relay drops: a shaped link never turns into a bare one
    # Loaded with --noflush: the chains are emptied, never deleted (which would drop what the relay holds).
    assert "-F PREROUTING" in text and "-F POSTROUTING" in text


def test_tc_bandwidth() -> None:
    cmds = apply.tc_bandwidth("eth1", 10.0, None)
    assert cmds[0] == ["qdisc", "del", "dev", "eth1", "root"]
    assert "10000kbit" in cmds[2] and cmds[3][-1] == str(apply.DEFAULT_QUEUE)
    assert apply.tc_bandwidth("eth1", None, None) == cmds[:1]


# -- the topology's side: fields, locations, distance, which end does what ------------------------

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def two_pops(**edits: object) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((TOPOLOGIES / "two_pops.yaml").read_text())
    data.update(edits)
    return data


def test_great_circle_and_fibre() -> None:
    # London–New York ≈ 5 570 km: 27.8 ms one way at 200 km/ms, more with a route factor
    assert great_circle_km(CITIES["lhr"], CITIES["nyc"]) == pytest.approx(5550, rel=0.02)
    assert propagation_ms(CITIES["lhr"], CITIES["nyc"]) == pytest.approx(27.7, abs=0.3)
    assert propagation_ms(CITIES["lhr"], CITIES["nyc"], 1.5) == pytest.approx(41.6, abs=0.5)
    assert propagation_ms(CITIES["ord"], CITIES["ord"]) == 0.0


def test_global_geo_delays_come_from_distance_and_colocated_ends_are_bare() -> None:
    topo = load_topology(TOPOLOGIES / "global_geo.yaml")
    shapes = {lk.key: lk.shape for lk in links_of(topo)}
    atlantic = shapes["na-e:eu-w"]
    assert atlantic is not None and atlantic.from_distance and atlantic.delay_ms == pytest.approx(29.5, abs=0.2)
    assert shapes["na-w:sjc-s1"] is None  # sjc's server sits with its router
    assert shapes["na-w:control"] is None  # services are local to their router
    # every link has its router end first: the relay side
    assert all(lk.owner.node in {r.name for r in topo.routers} for lk in links_of(topo))


def test_link_fields_and_access_links() -> None:
    data = two_pops()
    data["links"][0].update({"delay": 10, "jitter": 1, "loss": 0.5, "bandwidth": 100, "queue": 50})
    data["clients"][0]["access"] = {"delay": 3, "loss": 1, "loss_burst": 3}
    topo = build_topology(data, "t")
    shapes = {lk.key: lk.shape for lk in links_of(topo)}
    first = data["links"][0]
    core = shapes[find(links_of(topo), first["a"], first["b"]).key]
    assert core == Shape(10.0, 1.0, "uniform", 0.5, 1.0, 100.0, 50)
    client = data["clients"][0]
    access = shapes[find(links_of(topo), client["name"], client["router"]).key]
    assert access is not None and access.relayed() and access.loss_burst == 3.0


@pytest.mark.parametrize(("where", "field", "value", "says"), [
    ("link", "delay", -1, "greater than or equal to 0"),
    ("link", "delay", True, "not a number"),
    ("link", "loss", 100, "less than 100"),
    ("link", "loss_burst", 3, "loss_burst needs a loss"),
    ("link", "queue", 10, "queue is the rate limit's queue"),
    ("link", "jitter_distribution", "pareto", "uniform"),
    ("router", "location", "xyz", "unknown city code 'xyz'"),
    ("router", "location", [91, 0], "is not a place"),
    ("router", "location", [1, 2, 3], "city code or [latitude, longitude]"),
])
def test_bad_shape_fields_are_one_clear_error(where: str, field: str, value: object, says: str) -> None:
    data = two_pops()
    (data["links"][0] if where == "link" else data["routers"][0])[field] = value
    with pytest.raises(TopologyError, match=re.escape(says)):
        build_topology(data, "t")


def test_kernel_and_relay_split_per_end() -> None:
    data = two_pops()
    data["links"][0].update({"delay": 10, "loss": 2, "bandwidth": 50})
    topo = build_topology(data, "t")
    links = links_of(topo)
    lk = find(links, data["links"][0]["a"], data["links"][0]["b"])
    shapes = {x.key: x.shape for x in links}
    owner, far = kernel_of(lk.owner.node, links, shapes), kernel_of(lk.far.node, links, shapes)
    assert owner.losses == {lk.owner.name: 0.02} and far.losses == {lk.far.name: 0.02}  # each end's way out
    assert owner.bandwidth[lk.owner.name] == (50.0, None) and far.bandwidth[lk.far.name] == (50.0, None)
    assert [r.interface for r in owner.relayed] == [lk.owner.name] and far.relayed == []  # both ways at the owner
    cfg = relay_config(lk.owner.node, links, shapes, seed=1)
    assert [q["queue"] for q in cfg["queues"]] == list(lk.queues)
    assert cfg["queues"][0]["shape"]["delay_s"] == 0.01 and cfg["queues"][0]["shape"]["loss"] == 0.0


def test_with_changes() -> None:
    base = Shape(delay_ms=20.0, from_distance=True)
    changed = with_changes(base, {"delay_ms": 50.0, "loss_pct": 1.0})
    assert changed == Shape(delay_ms=50.0, loss_pct=1.0)  # no longer from distance
    assert with_changes(base, {"delay_ms": 0.0}) is None  # bare again
    with pytest.raises(UsageError, match="--loss-burst needs a loss"):
        with_changes(None, {"loss_burst": 3.0})
    with pytest.raises(UsageError, match="--queue"):
        with_changes(None, {"queue": 10})
    with pytest.raises(UsageError, match="no link between 'na-w' and 'nowhere'"):
        find(links_of(load_topology(TOPOLOGIES / "global_geo.yaml")), "na-w", "nowhere")


@pytest.mark.parametrize("bad", [{"delay_ms": "5"}, {"delay_ms": -1}, {"delay_ms": True}, {"nope": 1},
                                 {"jitter_distribution": "pareto"}, {"queue": [1]}])
def test_controller_checks_a_link_change_field_by_field(bad: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        _link_fields(bad)
    assert _link_fields({"delay_ms": 5, "bandwidth_mbit": None}) == {"delay_ms": 5.0, "bandwidth_mbit": None}
