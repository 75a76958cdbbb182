"""The platform's zone (``edge.test.``) as data, pure: what the hidden primary serves for a given state of
the control plane.

- ``@ NS ns<i>`` for every provider, with the address each answers on (glue in ``test.`` too);
- ``www`` → the platform's anycast address (the front door every HTTP user resolves);
- ``<worker>`` → the anycast address, for every worker deployed somewhere. There is no wildcard: a name
  resolves only once its deploy has reached the provider that answers (a wildcard would answer before);
- ``<pop>.pop`` → the PoP's servers in service (their own addresses), for every PoP of a region not
  withdrawn from DNS — what the runbook's containment pulls.

The serial is the control plane's generation (its etcd revision: the same in every region, only growing),
at least 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dnsd.zone import LABEL_RE, Record, Soa, Zone

#: The records of a fresh lab's zone, before the control plane has said anything.
EMPTY_STATE: Mapping[str, Any] = {"generation": 0, "workers": [], "pops": {}, "withdrawn": []}


@dataclass(frozen=True)
class Base:
    """What the zone always holds, from the topology."""

    origin: str
    #: (name server's name, address) per provider, in the delegation's order.
    ns: tuple[tuple[str, str], ...]
    anycast: str
    #: Server → its own address (a PoP's name points at its servers in service).
    servers: Mapping[str, str]
    ttl: int = 30
    negative_ttl: int = 5
    expire_s: int = 600

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Base:
        """Raises KeyError/ValueError/TypeError for a malformed one."""
        return cls(str(data["origin"]), tuple((str(n), str(a)) for n, a in data["ns"]), str(data["anycast"]),
                   {str(k): str(v) for k, v in data["servers"].items()}, int(data["ttl"]),
                   int(data["negative_ttl"]), int(data["expire_s"]))

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "ns": [list(x) for x in self.ns], "anycast": self.anycast,
                "servers": dict(self.servers), "ttl": self.ttl, "negative_ttl": self.negative_ttl,
                "expire_s": self.expire_s}


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def check_state(data: Any) -> dict[str, Any]:
    """``data`` (what a control plane answered) as the state :func:`platform_zone` takes; raises
    ValueError naming what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("the DNS state is not a JSON object")
    generation = data.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError(f"generation {generation!r} is not a whole number ≥ 0")
    if not _strings(data.get("workers")) or not _strings(data.get("withdrawn")):
        raise ValueError("'workers' and 'withdrawn' must be lists of names")
    pops = data.get("pops")
    if not isinstance(pops, dict) or not all(
            isinstance(info, dict) and isinstance(info.get("region"), str) and _strings(info.get("servers"))
            for info in pops.values()):
        raise ValueError("'pops' must map each PoP to its region and servers")
    return data


def platform_zone(base: Base, state: Mapping[str, Any]) -> Zone:
    """The zone for the control plane's ``state`` (:meth:`control_plane.store.View.dns`, as
    :func:`check_state` passes it). A worker whose name is not a DNS label (``_`` is allowed in names)
    gets no name."""
    records: list[Record] = []
    for name, address in base.ns:
        records.append(Record("@", "NS", name))
        records.append(Record(name, "A", address))
    records.append(Record("www", "A", base.anycast))
    records += [Record(w, "A", base.anycast) for w in sorted(state["workers"]) if LABEL_RE.match(w) and w != "*"]
    withdrawn = set(state["withdrawn"])
    pops: Mapping[str, Any] = state["pops"]
    for pop in sorted(pops):
        info = pops[pop]
        if info["region"] in withdrawn or not LABEL_RE.match(pop):
            continue
        addresses: Sequence[str] = [base.servers[s] for s in info["servers"] if s in base.servers]
        records += [Record(f"{pop}.pop", "A", a) for a in addresses]
    primary = base.ns[0][0]
    # Refresh and retry are short (NOTIFY carries every change; these bound a lost one); expire says how
    # long a provider answers with the primary gone.
    soa = Soa(refresh=60, retry=10, expire=base.expire_s, minimum=base.negative_ttl)
    return Zone(base.origin, max(1, int(state["generation"])), primary, tuple(records), base.ttl, soa)
