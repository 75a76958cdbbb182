"""The lab's DNS: its fixed names and numbers (the resolved nodes are :class:`model.topology.Dns`: which
node serves what, where it hangs, and which resolvers each client uses). What the zones contain is decided
later (:mod:`lab.run.dns`) from that and the control plane's state.

Node names stay short because an interface is called ``<node>-eth0`` (15 characters at most):
``dns-root`` (the root and ``test.``), ``dns-hidden`` (the platform zone's hidden primary),
``<provider>-<router>`` (a provider's node), ``r<k>-<region>`` (the region's k-th resolver kind).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

ROOT_NODE = "dns-root"
HIDDEN_NODE = "dns-hidden"
#: The lab's top-level domain (RFC 6761 reserves ``test.`` for testing: never a real one).
TLD = "test."
ROOT_NS = "a.root.test."
TLD_NS = "ns.test."
DNS_PORT = 53


def service_address(prefix: IPv4Network) -> IPv4Address:
    """The address a provider answers on within its anycast prefix (the first host; a /32's only one)."""
    return next(iter(prefix.hosts())) if prefix.prefixlen < 31 else prefix.network_address
