"""A DNS zone as data, and its zone file (RFC 1035 master format), pure.

Names are absolute (ending in a dot) or relative to the zone's origin; :func:`check` refuses what a
server would refuse later (a name outside the zone, a bad label, an A record that is not an IPv4
address) with one line naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from core.errors import AnylabError

LABEL_RE = re.compile(r"^(\*|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$")
TYPES = ("A", "NS", "CNAME", "TXT")


class ZoneError(AnylabError):
    pass


@dataclass(frozen=True)
class Record:
    name: str
    type: str
    value: str
    ttl: int | None = None


@dataclass(frozen=True)
class Soa:
    """The SOA's timers (s): how often secondaries check, retry, and when they stop answering."""

    refresh: int = 60
    retry: int = 10
    expire: int = 3600
    minimum: int = 30


@dataclass(frozen=True)
class Zone:
    origin: str
    serial: int
    primary_ns: str
    records: tuple[Record, ...] = ()
    ttl: int = 60
    soa: Soa = field(default_factory=Soa)
    contact: str = "hostmaster"


def absolute(name: str, origin: str) -> str:
    """``name`` made absolute against ``origin`` (``@`` is the origin)."""
    if name == "@":
        return origin
    return name if name.endswith(".") else f"{name}.{origin}" if origin != "." else f"{name}."


def check_name(name: str, what: str) -> None:
    labels = name.rstrip(".").split(".") if name != "." else []
    if len(name) > 254 or not all(LABEL_RE.match(label) for label in labels):
        raise ZoneError(f"{what}: {name!r} is not a DNS name (labels of a-z, 0-9 and '-', or '*')")


def check(zone: Zone) -> None:
    """Raises ZoneError naming the first record a server would refuse."""
    if not zone.origin.endswith("."):
        raise ZoneError(f"zone origin {zone.origin!r} must be absolute (end with '.')")
    check_name(zone.origin, "zone origin")
    if not 0 < zone.serial < 2**32:
        raise ZoneError(f"zone {zone.origin}: serial {zone.serial} is not in 1..2^32-1")
    for r in zone.records:
        name = absolute(r.name, zone.origin)
        check_name(name, f"zone {zone.origin} record")
        if zone.origin != "." and not (name == zone.origin or name.endswith("." + zone.origin)):
            raise ZoneError(f"zone {zone.origin}: {name} is outside the zone")
        if r.type not in TYPES:
            raise ZoneError(f"zone {zone.origin}: record type {r.type!r} (use one of {', '.join(TYPES)})")
        if r.type == "A":
            try:
                IPv4Address(r.value)
            except ValueError:
                raise ZoneError(f"zone {zone.origin}: {name} A {r.value!r} is not an IPv4 address") from None
        elif r.type in ("NS", "CNAME"):
            check_name(absolute(r.value, zone.origin), f"zone {zone.origin} {r.type} target")


def render(zone: Zone) -> str:
    """The zone file; raises ZoneError (check) first."""
    check(zone)
    s = zone.soa
    contact = absolute(zone.contact, zone.origin)
    lines = [f"$ORIGIN {zone.origin}", f"$TTL {zone.ttl}",
             f"@ SOA {absolute(zone.primary_ns, zone.origin)} {contact} "
             f"{zone.serial} {s.refresh} {s.retry} {s.expire} {s.minimum}"]
    for r in zone.records:
        value = f'"{r.value}"' if r.type == "TXT" else absolute(r.value, zone.origin) if r.type in ("NS", "CNAME") \
            else r.value
        ttl = f" {r.ttl}" if r.ttl is not None else ""
        lines.append(f"{absolute(r.name, zone.origin)}{ttl} {r.type} {value}")
    return "\n".join(lines) + "\n"
