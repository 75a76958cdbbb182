"""A client's stub resolver, as a user's machine has one: it asks its recursive resolvers in order (the
next when one does not answer within ``timeout`` or answers SERVFAIL/REFUSED), within an overall
``deadline``, and — for a user's connections — caches each answer for its TTL, no longer.

The lab's numbers (2 s a resolver, 5 s in all) sit between glibc's defaults (5 s a server, 2 attempts)
and a browser's; a resolution that gets no address within the deadline has *failed*, as a user's would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from core.clock import monotonic

TIMEOUT_S = 2.0
DEADLINE_S = 5.0


@dataclass(frozen=True)
class Answer:
    """One resolution: the first A address (None: failed), its TTL, the resolver that answered (the last
    asked, if none did), the rcode (None: no answer), how long it took, how many resolvers were asked,
    and whether it came from the stub's cache."""

    name: str
    address: str | None
    ttl: int
    server: str
    rcode: str | None
    seconds: float
    tries: int
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.address is not None


class Stub:
    """Resolvers are addresses (port 53) or (address, port) pairs."""

    def __init__(self, resolvers: Sequence[str | tuple[str, int]], timeout: float = TIMEOUT_S,
                 deadline: float = DEADLINE_S, cache: bool = True) -> None:
        if not resolvers:
            raise ValueError("a stub needs at least one resolver")
        self.resolvers = [(r, 53) if isinstance(r, str) else r for r in resolvers]
        self.timeout, self.deadline, self.cache = timeout, deadline, cache
        #: name → (answer, monotonic time it expires)
        self.cached: dict[str, tuple[Answer, float]] = {}

    async def resolve(self, name: str) -> Answer:
        """``name``'s A record as the user's machine would get it; never raises (a failure is an Answer
        without an address)."""
        t0 = monotonic()
        hit = self.cached.get(name) if self.cache else None
        if hit is not None and hit[1] > t0:
            return Answer(name, hit[0].address, int(hit[1] - t0), hit[0].server, hit[0].rcode, 0.0, 0, True)
        query = dns.message.make_query(name, dns.rdatatype.A)  # recursion desired
        rcode: str | None = None
        tries = 0
        server = self.resolvers[0][0]
        while monotonic() - t0 < self.deadline:
            server, port = self.resolvers[tries % len(self.resolvers)]
            tries += 1
            wait = min(self.timeout, self.deadline - (monotonic() - t0))
            try:
                reply = await dns.asyncquery.udp(query, server, timeout=wait, port=port)
            except (dns.exception.DNSException, OSError):
                rcode = None
                continue
            rcode = dns.rcode.to_text(reply.rcode())
            if reply.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                continue  # that resolver cannot answer now: the next may
            for rrset in reply.answer:
                if rrset.rdtype == dns.rdatatype.A:
                    answer = Answer(name, rrset[0].address, rrset.ttl, server, rcode, monotonic() - t0, tries)
                    if self.cache and rrset.ttl > 0:
                        self.cached[name] = (answer, monotonic() + rrset.ttl)
                    return answer
            break  # NXDOMAIN or no address: an answer, not a resolver to skip
        return Answer(name, None, 0, server, rcode, monotonic() - t0, tries)
