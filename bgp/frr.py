"""FRR per router namespace: zebra, bfdd and bgpd, each its own class with its own paths.

Every daemon of a router shares the router's directory ``D`` (owned by frr:frr) for its vty socket
(``--vty_socket D``), zserv socket (``-z D/zserv.api``), pid file and log; ``-P 0`` keeps vty off TCP.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
import subprocess
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, ClassVar

from bgp.kind import RouterKind, SessionChange, log_time, register
from core.daemon import Daemon, NodeEnv
from core.wait import socket_accepts
from model.constants import LOCAL_PREF, RELATION_COMMUNITY
from model.profiles import BfdSpec
from model.topology import Router

FRR_BIN = Path("/usr/lib/frr")
VTYSH = "/usr/bin/vtysh"
#: How a dry run reports a config error (lib/vty.c: "<error> on config line N: <line>").
_CONFIG_ERROR = "on config line"
_UNREADABLE = "can't open configuration file"
#: bgpd's line for a session change (``bgp log-neighbor-changes``), e.g. ``2026/12/05 20:20:14.676 BGP:
#: [N9HHH-F8H1M] %ADJCHANGE: neighbor 10.0.0.3(r3) in vrf default Down BFD down received``.
_ADJCHANGE = re.compile(r"^(\S+ \S+) BGP: .*%ADJCHANGE: neighbor ([0-9.]+)\(.*\) in vrf \S+ (Up|Down) ?(.*)$")
_LOG_TIME = "%Y/%m/%d %H:%M:%S.%f"


def prepare_dir(path: Path) -> None:
    """Create a router directory the frr user can write (daemons drop privileges to frr:frr)."""
    path.mkdir(parents=True, exist_ok=True)
    frr = pwd.getpwnam("frr")
    shutil.chown(path, frr.pw_uid, frr.pw_gid)


def vtysh(router_dir: Path, command: str, daemon: str | None = None, timeout: float = 10.0) -> str:
    """Run one vtysh command against the router whose sockets are in ``router_dir``.

    Raises subprocess.CalledProcessError / TimeoutExpired as subprocess does.
    """
    argv = [VTYSH, "--vty_socket", str(router_dir)]
    if daemon:
        argv += ["-d", daemon]
    res = subprocess.run([*argv, "-c", command], capture_output=True, text=True, timeout=timeout, check=True)
    return res.stdout


def vtysh_json(router_dir: Path, command: str, daemon: str | None = None) -> Any:
    """``vtysh -c '<command> json'`` parsed; raises ValueError if the answer is not JSON."""
    return json.loads(vtysh(router_dir, command, daemon) or "null")


class FrrDaemon(Daemon):
    """Common command line and dry run of the FRR daemons."""

    extra_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, env: NodeEnv, router: Router) -> None:
        super().__init__(env)
        self.router = router

    def common_args(self) -> list[str]:
        d = self.env.dir
        return [str(FRR_BIN / self.name), "-u", "frr", "-g", "frr", "-P", "0", "--vty_socket", str(d),
                "-z", str(d / "zserv.api"), "-f", str(self.path(".conf")), "-i", str(self.path(".pid")),
                *self.extra_args]

    def argv(self) -> list[str]:
        return self.common_args()

    def validate(self) -> None:
        """``<daemon> -C``: FRR exits 0 even on errors, so its output is scanned for config errors."""
        out = self.run_check([*self.common_args(), "-C"], "dry run (-C)")
        # It also exits 0 when it cannot read the file at all (as user frr): that is no dry run.
        bad = [line for line in out.splitlines() if _CONFIG_ERROR in line or _UNREADABLE in line]
        if bad:
            raise self.error(f"dry run (-C) rejected {self.path('.conf')}: {' | '.join(bad)}")

    def ready(self) -> bool:
        return socket_accepts(self.env.dir / f"{self.name}.vty")

    def header(self) -> list[str]:
        # The log file in the config, not ``--log file:``: FRR 8.4 keeps a command-line target at whole
        # seconds whatever the precision asked; milliseconds place a session's changes against the faults.
        return ["frr defaults traditional", f"hostname {self.router.name}", f"log file {self.path('.log')}",
                "log timestamp precision 3", "!"]


class Zebra(FrrDaemon):
    """The RIB/FIB manager: learns interface addresses, installs BGP's routes into the kernel."""

    name = "zebra"

    def render_config(self) -> dict[Path, str]:
        lines = self.header()
        for intf in self.router.interfaces:
            lines += [f"interface {intf.name}", f" description to {intf.peer_node}", "exit", "!"]
        return {self.path(".conf"): "\n".join(lines) + "\n"}


def bfd_profile_name(bfd: BfdSpec) -> str:
    return f"anylab-{bfd.interval_ms}x{bfd.multiplier}"


class Bfdd(FrrDaemon):
    """BFD: one profile per distinct BFD setting of the router's sessions; bgpd asks for the sessions."""

    name = "bfdd"
    dependencies = ("zebra",)

    def common_args(self) -> list[str]:
        return [*super().common_args(), "--bfdctl", str(self.env.dir / "bfdd.sock")]

    def render_config(self) -> dict[Path, str]:
        lines = self.header()
        specs = {n.profile.bfd for n in self.router.neighbors if n.profile.bfd is not None}
        if specs:
            lines.append("bfd")
            for bfd in sorted(specs, key=bfd_profile_name):
                lines += [f" profile {bfd_profile_name(bfd)}", f"  transmit-interval {bfd.interval_ms}",
                          f"  receive-interval {bfd.interval_ms}", f"  detect-multiplier {bfd.multiplier}",
                          " exit", " !"]
            lines += ["exit", "!"]
        return {self.path(".conf"): "\n".join(lines) + "\n"}


_FROM = {rel: f"ANYLAB-FROM-{rel.upper()}" for rel in LOCAL_PREF}
_TO_UPSTREAM = "ANYLAB-TO-UPSTREAM"


def _policy_lines() -> list[str]:
    """Valley-free policy (see :mod:`model.graph`): every route learned is tagged with what it was
    learned from (one community of :data:`RELATION_COMMUNITY`, replacing any other) and given that
    relation's local preference; to peers and providers only untagged (own) and customer routes go."""
    lines = []
    for rel, name in _FROM.items():
        lines += [f"route-map {name} permit 10", f" set community {RELATION_COMMUNITY[rel]}",
                  f" set local-preference {LOCAL_PREF[rel]}", "exit", "!"]
    lines += [*(f"bgp community-list standard ANYLAB-NOT-CUSTOMER permit {RELATION_COMMUNITY[rel]}"
                for rel in ("peer", "provider")), "!",
              f"route-map {_TO_UPSTREAM} deny 10", " match community ANYLAB-NOT-CUSTOMER", "exit", "!",
              f"route-map {_TO_UPSTREAM} permit 20", "exit", "!"]
    return lines


class Bgpd(FrrDaemon):
    """eBGP to every neighbour; originates attached client subnets and the loopback."""

    name = "bgpd"
    dependencies = ("zebra",)
    extra_args = ("-p", "179")

    def render_config(self) -> dict[Path, str]:
        r, t = self.router, self.router.profile
        lines = [
            *self.header(),
            # Route-maps before the neighbours that use them: bgpd resolves a neighbour's route-map by
            # name when it reads the line, and one defined later is only bound after its delay timer
            # (5 s) — measured: updates arriving in between were denied and never looked at again.
            *(_policy_lines() if any(n.relation for n in r.neighbors) else []),
            f"router bgp {r.asn}",
            f" bgp router-id {r.loopback}",
            # Every session up and down in the log, with why (the soak tells a fault's from a flap).
            " bgp log-neighbor-changes",
            # eBGP announces nothing without a policy otherwise (RFC 8212 default in FRR).
            " no bgp ebgp-requires-policy",
            " no bgp network import-check",
            # Deterministic choices, so the graph's catchment prediction matches (see model.graph).
            " bgp deterministic-med",
            " bgp bestpath compare-routerid",
            f" timers bgp {t.keepalive} {t.hold}",
        ]
        if t.graceful_restart:
            lines += [" bgp graceful-restart", f" bgp graceful-restart restart-time {t.graceful_restart}"]
        for n in r.neighbors:
            p = n.profile
            lines += [
                f" neighbor {n.address} remote-as {n.asn}",
                f" neighbor {n.address} description {n.node}",
                f" neighbor {n.address} timers {p.keepalive} {p.hold}",
                f" neighbor {n.address} timers connect 1",
                f" neighbor {n.address} advertisement-interval {p.mrai}",
            ]
            if p.bfd is not None:
                lines.append(f" neighbor {n.address} bfd profile {bfd_profile_name(p.bfd)}")
        lines += [" !", " address-family ipv4 unicast", f"  network {r.loopback}/32"]
        lines += [f"  network {net}" for net in r.host_subnets]
        lines.append("  maximum-paths 16")
        for n in r.neighbors:
            if n.relation:
                lines.append(f"  neighbor {n.address} route-map {_FROM[n.relation]} in")
                if n.relation != "customer":
                    lines.append(f"  neighbor {n.address} route-map {_TO_UPSTREAM} out")
        lines += [" exit-address-family", "exit", "!"]
        return {self.path(".conf"): "\n".join(lines) + "\n"}

    def ready(self) -> bool:
        """bgpd answers ``show bgp summary json``: asked only once its vty socket accepts — each asking is
        a vtysh run (tens of ms of CPU), and at 100 routers starting at once most would be refused."""
        if not socket_accepts(self.env.dir / "bgpd.vty"):
            return False
        try:
            summary = vtysh_json(self.env.dir, "show bgp summary json", daemon="bgpd")
        except (subprocess.SubprocessError, ValueError):
            return False
        return isinstance(summary, dict)


def router_daemons(env: NodeEnv, router: Router) -> list[FrrDaemon]:
    """The daemons of one FRR router, in start order (dependencies first); bfdd only if a session has
    BFD."""
    if not any(n.profile.bfd for n in router.neighbors):
        return [Zebra(env, router), Bgpd(env, router)]  # no session wants BFD: no bfdd to keep idle
    return [Zebra(env, router), Bfdd(env, router), Bgpd(env, router)]


def adjchanges(log: Path) -> list[SessionChange]:
    """The session changes in a bgpd log (lines in another form are not changes: skipped)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        m = _ADJCHANGE.match(line)
        t = log_time(m.group(1), _LOG_TIME) if m else None
        if m and t is not None:
            out.append(SessionChange(t, m.group(2), m.group(3) == "Up", m.group(4).strip()))
    return out


def established_peers(router_dir: Path) -> dict[str, str]:
    """Neighbour address → BGP state, from ``show bgp summary json``; raises as vtysh_json does."""
    summary = vtysh_json(router_dir, "show bgp summary json", daemon="bgpd") or {}
    peers = summary.get("ipv4Unicast", {}).get("peers", {})
    return {addr: str(info.get("state", "?")) for addr, info in peers.items()}


@register
class Frr(RouterKind):
    """``kind: frr``: zebra, bfdd (where a session has BFD) and bgpd; state through vtysh."""

    name = "frr"
    cli = "vtysh"

    def cli_argv(self, router_dir: Path, args: list[str]) -> list[str]:
        return [VTYSH, "--vty_socket", str(router_dir), *args]

    def daemons(self, env: NodeEnv, router: Router) -> list[Daemon]:
        prepare_dir(env.dir)  # the daemons drop privileges to frr:frr and write here
        return list(router_daemons(env, router))

    def sessions(self, router_dir: Path, router: Router) -> dict[str, str]:
        return established_peers(router_dir)

    def bfd_peers(self, router_dir: Path) -> dict[str, str]:
        return {str(peer.get("peer")): str(peer.get("status", "?")).lower()
                for peer in vtysh_json(router_dir, "show bfd peers json", daemon="bfdd") or []}

    def session_changes(self, router_dir: Path, router: Router) -> list[SessionChange]:
        return adjchanges(router_dir / "bgpd.log")

    def _paths(self, router_dir: Path, prefix: IPv4Network) -> list[dict[str, Any]]:
        data = vtysh_json(router_dir, f"show bgp ipv4 unicast {prefix} json", daemon="bgpd") or {}
        paths: list[dict[str, Any]] = data.get("paths", [])
        return paths

    def best_as_path(self, router_dir: Path, prefix: IPv4Network) -> tuple[int, ...] | None:
        for path in self._paths(router_dir, prefix):
            if path.get("bestpath", {}).get("overall"):
                text = str(path.get("aspath", {}).get("string", "")).strip()
                return tuple(int(a) for a in text.split()) if text else ()
        return None

    def as_paths(self, router_dir: Path, prefix: IPv4Network) -> list[tuple[int, ...]]:
        return sorted(tuple(int(a) for a in str(p.get("aspath", {}).get("string", "")).split())
                      for p in self._paths(router_dir, prefix))
