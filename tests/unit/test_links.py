"""The link shaper's pure parts: the nfnetlink_queue encoding, the relay's deadlines and loss model, the
kernel rulesets."""

from __future__ import annotations

import random
import struct

import pytest

from lab.links import apply, nfqueue
from lab.links.relay import DirShape, Direction, deadline, gilbert, handle, jitter_sample, shape_from


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
    assert -0.002 <= min(uni) and max(uni) <= 0.002
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


def test_nft_loss_ruleset_replaces_the_table_at_once() -> None:
    text = apply.nft_loss({"eth1": 0.01, "eth2": 0.0})
    assert text.startswith("table inet anylab_links {}\ndelete table inet anylab_links\n")
    assert 'oifname "eth1" numgen random mod 1000000 < 10000 counter drop' in text
    assert "eth2" not in text
    assert "chain" not in apply.nft_loss({})


def test_iptables_queues_sends_each_relayed_direction_to_its_queue() -> None:
    text = apply.iptables_queues([apply.Relayed("eth1", 2, 3), apply.Relayed("eth2", None, 5)])
    assert "-A POSTROUTING -o eth1 -j NFQUEUE --queue-num 2" in text
    assert "-A PREROUTING -i eth1 -j NFQUEUE --queue-num 3" in text
    assert "-o eth2" not in text and "-A PREROUTING -i eth2 -j NFQUEUE --queue-num 5" in text
    assert "bypass" not in text  # a dead relay drops: a shaped link never turns into a bare one


def test_tc_bandwidth() -> None:
    cmds = apply.tc_bandwidth("eth1", 10.0, None)
    assert cmds[0] == ["qdisc", "del", "dev", "eth1", "root"]
    assert "10000kbit" in cmds[2] and cmds[3][-1] == str(apply.DEFAULT_QUEUE)
    assert apply.tc_bandwidth("eth1", None, None) == cmds[:1]
