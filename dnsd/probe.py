"""One DNS query from inside a node's namespace (dnspython over a socket made there)."""

from __future__ import annotations

import socket

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from core.errors import AnylabError
from core.netns import socket_in


def ask(netns: str | None, server: str, name: str, rdtype: str = "A", timeout: float = 0.5,
        recursion: bool = False, nsid: bool = False) -> dns.message.Message | None:
    """``server``'s answer to ``name``/``rdtype`` (None: no answer within ``timeout``); with ``nsid`` the
    query asks the server to name itself (RFC 5001: :func:`nsid_of`)."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    if not recursion:
        query.flags &= ~dns.flags.RD
    if nsid:
        query.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")])
    try:
        sock = socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) if netns else socket.socket(socket.AF_INET,
                                                                                               socket.SOCK_DGRAM)
    except AnylabError:
        return None
    with sock:
        sock.setblocking(False)  # dnspython waits on a given socket with select, up to the timeout
        try:
            return dns.query.udp(query, server, timeout=timeout, sock=sock)
        except (dns.exception.DNSException, OSError):
            return None


def soa_serial(netns: str | None, server: str, zone: str, timeout: float = 0.5) -> int | None:
    """The serial ``server`` answers for ``zone``'s SOA with authority (None: no such answer)."""
    reply = ask(netns, server, zone, "SOA", timeout=timeout)
    if reply is None or reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
        return None
    for rrset in reply.answer:
        for rr in rrset:
            return int(rr.serial)
    return None


def nsid_of(reply: dns.message.Message) -> str | None:
    """The server's name in ``reply``'s NSID option (None: it gave none)."""
    for option in reply.options:
        if option.otype == dns.edns.OptionType.NSID:
            return option.to_wire().decode("ascii", "replace") or None
    return None
