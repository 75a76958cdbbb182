"""Zones as data (dnsd.zone): what a server would refuse is refused here first, with its name."""

from __future__ import annotations

import pytest

from dnsd.zone import Record, Zone, ZoneError, render

EDGE = Zone("edge.test.", 7, "ns1", (Record("@", "NS", "ns1"), Record("ns1", "A", "10.3.0.9"),
                                     Record("*", "A", "203.0.113.1", ttl=30), Record("v", "TXT", "x")))


def test_a_zone_renders_absolute_names_and_its_soa() -> None:
    text = render(EDGE)
    assert text.splitlines() == [
        "$ORIGIN edge.test.", "$TTL 60", "@ SOA ns1.edge.test. hostmaster.edge.test. 7 60 10 3600 30",
        "edge.test. NS ns1.edge.test.", "ns1.edge.test. A 10.3.0.9", "*.edge.test. 30 A 203.0.113.1",
        'v.edge.test. TXT "x"']
    root = Zone(".", 1, "a.root.test.", (Record("@", "NS", "a.root.test."),))
    assert "@ SOA a.root.test. hostmaster. 1" in render(root)


@pytest.mark.parametrize(("zone", "words"), [
    (Zone("edge.test", 1, "ns1"), "must be absolute"),
    (Zone("edge.test.", 0, "ns1"), "serial 0"),
    (Zone("edge.test.", 1, "ns1", (Record("x.other.", "A", "10.0.0.1"),)), "x.other. is outside the zone"),
    (Zone("edge.test.", 1, "ns1", (Record("bad_name", "A", "10.0.0.1"),)), "is not a DNS name"),
    (Zone("edge.test.", 1, "ns1", (Record("a", "A", "300.1.1.1"),)), "is not an IPv4 address"),
    (Zone("edge.test.", 1, "ns1", (Record("a", "MX", "x"),)), "record type 'MX'"),
])
def test_what_a_server_would_refuse_is_refused_with_its_name(zone: Zone, words: str) -> None:
    with pytest.raises(ZoneError, match=words):
        render(zone)
