"""The lab's fixed numbers: names, reserved ASNs, the address plan, the services' ports and node names,
and what a link's business relation means to BGP (local preference, communities)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Network

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
DEFAULT_ANYCAST = "203.0.113.1/32"
#: ASNs BGP reserves (RFC 7607 zero, AS_TRANS 23456, 65535, 4294967295). Private ranges are not required:
#: a lab may mimic public ASNs.
RESERVED_ASNS = {0, 23456, 65535, 4294967295}

# Deterministic address pools. Each /31 pool is indexed by the declaration order of what it numbers.
ROUTER_LOOPBACKS = IPv4Network("10.255.0.0/16")
SERVER_LOOPBACKS = IPv4Network("10.254.0.0/16")
CORE_LINKS = IPv4Network("10.0.0.0/16")
POP_LINKS = IPv4Network("10.1.0.0/16")
CLIENT_LINKS = IPv4Network("10.2.0.0/16")
CONTROL_LINKS = IPv4Network("10.3.0.0/16")
KV_LINKS = IPv4Network("10.4.0.0/16")
ORIGIN_LINKS = IPv4Network("10.5.0.0/16")
#: The DNS nodes' links (root, hidden primary, providers' nodes, resolvers), in that order.
DNS_LINKS = IPv4Network("10.6.0.0/16")
#: The monitoring node's link (one node: Prometheus, Alertmanager and the lab's alert receiver).
MON_LINKS = IPv4Network("10.7.0.0/16")
MON_NODE = "mon"
PROMETHEUS_PORT = 9090
#: The backup node's link (the primary region's backup store and its service), its node and port.
BACKUP_LINKS = IPv4Network("10.8.0.0/16")
BACKUP_NODE = "bk"
#: The DR region's copy of the backup store (and its cold archive), on the same address pool.
BACKUP_DR_NODE = "drbk"
#: The DR region (``backup.dr_servers``): the copy and a standby platform on the DR router, a region of
#: their own that no regional fault touches: the PoP ``dr`` (servers ``dr-s1``…), the control plane node
#: ``cp-dr`` and the storage node ``kv-dr`` (links on the backup pool after the copy's, in that order).
DR_REGION = "dr"
DR_POP = "dr"
DR_CONTROL_NODE = "cp-dr"
DR_STORAGE_NODE = "kv-dr"
BACKUP_PORT = 8400
#: The backup service's operator socket, in the backup node's directory.
BACKUP_SOCKET = "backup.sock"
#: An origin's HTTP port on the lab network (workers reach it with ``env.fetch("http://NAME/…")``).
ORIGIN_PORT = 80
#: The KV masters' HTTP API on the lab network, and each PoP server's local KV replica (127.0.0.1).
KV_PORT = 8100
KV_REPLICA_PORT = 8101
#: The Durable Object host on each region's storage node (beside the KV master), and the directory on
#: the control node.
DO_HOST_PORT = 8200
DO_DIRECTORY_PORT = 8300
#: The control plane's node name, and the port of its HTTP API on the lab network.
CONTROL_NODE = "control"
CONTROL_PORT = 8000
#: Each region's control plane node (``cp-<region>``, beside the region's KV master): the API on
#: CONTROL_PORT and the region's etcd member (clients on ETCD_CLIENT_PORT, peers on ETCD_PEER_PORT).
CONTROL_PLANE_PREFIX = "cp-"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
#: Everything inside the lab is numbered from here; servers route it back towards their upstreams.
LAB_SUPERNET = IPv4Network("10.0.0.0/8")

#: A link's relation seen from its other end.
INVERSE_RELATION: Mapping[str, str] = {"provider": "customer", "customer": "provider", "peer": "peer"}
#: Local preference by what the neighbour a route came from is (customer routes earn money, provider
#: routes cost it): the same numbers in the FRR and BIRD configs and in the catchment prediction.
LOCAL_PREF: Mapping[str, int] = {"customer": 200, "peer": 100, "provider": 50}
DEFAULT_LOCAL_PREF = 100
#: The community a router tags a learned route with, by relation (private ASN 64512's).
RELATION_COMMUNITY: Mapping[str, str] = {"customer": "64512:1", "peer": "64512:2", "provider": "64512:3"}
