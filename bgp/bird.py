"""BIRD 2 per namespace: a router (``kind: bird``), or BFD alone beside ExaBGP on a PoP server.

One daemon, one config, one control socket (``D/<name>.ctl``); dry run ``bird -p``; readiness and state
through ``birdc``. BIRD's defaults ``error wait time 60, 300`` would block reconnects for minutes after
a fault, so every session sets ``error wait time 1, 5; error forget time 10``. BIRD has no MRAI: it
sends updates as soon as its best path changes (the profile's ``mrai`` does not apply to it).
"""

from __future__ import annotations

import re
import subprocess
from ipaddress import IPv4Network
from pathlib import Path

from bgp.kind import RouterKind, SessionChange, log_time, register
from core.daemon import Daemon, NodeEnv
from model.constants import LOCAL_PREF, RELATION_COMMUNITY
from model.profiles import BfdSpec
from model.topology import Router, Server

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"


_BGP_STATES = ("Established", "OpenConfirm", "OpenSent", "Active", "Connect", "Idle")


def birdc(sock: Path, command: str, timeout: float = 10.0, check: bool = True) -> str:
    """One ``birdc`` command; raises subprocess.CalledProcessError / TimeoutExpired as subprocess does
    (birdc exits 1 for an answer such as "Network not found": pass ``check=False`` to read it)."""
    res = subprocess.run([BIRDC, "-s", str(sock), *command.split()], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
    return res.stdout


def _bfd_options(bfd: BfdSpec) -> str:
    return f"interval {bfd.interval_ms} ms; multiplier {bfd.multiplier};"


class BirdBase(Daemon):
    """Command line, dry run and readiness shared by every BIRD instance."""

    def socket(self) -> Path:
        return self.path(".ctl")

    def argv(self) -> list[str]:
        return [BIRD, "-f", "-c", str(self.path(".conf")), "-s", str(self.socket()), "-P", str(self.path(".pid"))]

    def validate(self) -> None:
        self.run_check([BIRD, "-p", "-c", str(self.path(".conf"))], "dry run (bird -p)")

    def ready(self) -> bool:
        try:
            return "Daemon is up and running" in birdc(self.socket(), "show status", timeout=2.0)
        except (subprocess.SubprocessError, OSError):
            return False

    def header(self, router_id: str) -> list[str]:
        return [f"router id {router_id};", f'log "{self.path(".log")}" all;', "timeformat protocol iso long;",
                "protocol device { scan time 10; }", ""]


def _community(rel: str) -> str:
    asn, value = RELATION_COMMUNITY[rel].split(":")
    return f"({asn}, {value})"


def _policy_lines() -> list[str]:
    """Valley-free policy, as FRR's (:func:`bgp.frr._policy_lines`): tag what a route was learned from,
    set that relation's local preference; to peers and providers only own and customer routes."""
    lines = []
    for rel, pref in LOCAL_PREF.items():
        lines += [f"filter anylab_from_{rel} {{", "  bgp_community = -empty-;",
                  f"  bgp_community.add({_community(rel)});", f"  bgp_local_pref = {pref};", "  accept;", "}"]
    lines += ["filter anylab_to_upstream {", "  if source = RTS_STATIC then accept;",
              f"  if source = RTS_BGP && {_community('customer')} ~ bgp_community then accept;", "  reject;", "}"]
    return lines


class Bird(BirdBase):
    """A transit router: eBGP to every neighbour, its best path into the kernel, client subnets originated."""

    name = "bird"

    def __init__(self, env: NodeEnv, router: Router) -> None:
        super().__init__(env)
        self.router = router

    def render_config(self) -> dict[Path, str]:
        r, t = self.router, self.router.profile
        lines = self.header(str(r.loopback))
        lines += [
            # Only BGP's routes go to the kernel. No ECMP ("merge paths"): BIRD 2.0.12 merges paths from
            # different neighbour ASes (FRR does not) and, measured here, left a stale multipath route
            # in the kernel when one merged path was withdrawn — a forwarding loop between two routers.
            "protocol kernel { ipv4 { export where source = RTS_BGP; }; }",
            "protocol static anylab_origin {",
            "  ipv4;",
            f"  route {r.loopback}/32 blackhole;",
            *(f"  route {net} blackhole;" for net in r.host_subnets),
            "}",
        ]
        if any(n.profile.bfd for n in r.neighbors):
            lines.append("protocol bfd { }")
        lines += [
            "template bgp anylab_peer {",
            f"  local as {r.asn};",
            "  error wait time 1, 5;",
            "  error forget time 10;",
            "  connect retry time 1;",
            # Every state change in the log (at milliseconds: BIRD's default log time format).
            "  debug { states };",
            "  deterministic med on;",
            *([f"  graceful restart on; graceful restart time {t.graceful_restart};"] if t.graceful_restart
              else ["  graceful restart off;"]),
            "  ipv4 { import all; export where source ~ [RTS_BGP, RTS_STATIC]; };",
            "}",
        ]
        if any(n.relation for n in r.neighbors):
            lines += _policy_lines()
        for i, n in enumerate(r.neighbors):
            p = n.profile
            lines += [
                f"protocol bgp n{i} from anylab_peer {{",
                f'  description "{n.node}";',
                f"  neighbor {n.address} as {n.asn};",
                f"  source address {n.local_address};",
                f'  interface "{n.interface}";',
                "  direct;",
                f"  hold time {p.hold}; keepalive time {p.keepalive};" if p.hold else "  hold time 0;",
                *([f"  bfd {{ {_bfd_options(p.bfd)} }};"] if p.bfd else []),
                *([f"  ipv4 {{ import filter anylab_from_{n.relation}; "
                   + ("export where source ~ [RTS_BGP, RTS_STATIC]; };" if n.relation == "customer"
                      else "export filter anylab_to_upstream; };")] if n.relation else []),
                "}",
            ]
        return {self.path(".conf"): "\n".join(lines) + "\n"}


class BirdBfd(BirdBase):
    """BFD alone on a PoP server (ExaBGP has none): answers its upstreams' BFD sessions, so a silent
    server is detected in ``interval × multiplier`` instead of the BGP hold time."""

    name = "bird-bfd"

    def __init__(self, env: NodeEnv, server: Server) -> None:
        super().__init__(env)
        self.server = server

    def render_config(self) -> dict[Path, str]:
        s = self.server
        lines = self.header(str(s.router_id))
        lines.append("protocol bfd anylab {")
        for n in s.neighbors:
            if n.profile.bfd is None:
                continue
            lines += [f'  interface "{n.interface}" {{ {_bfd_options(n.profile.bfd)} }};',
                      f'  neighbor {n.address} dev "{n.interface}" local {n.local_address};']
        lines.append("}")
        return {self.path(".conf"): "\n".join(lines) + "\n"}


#: A protocol's state change in BIRD's log (``debug { states }``), e.g. ``2026-12-05 20:25:09.140 <TRACE>
#: n0: State changed to up``; the protocol ``nI`` is the router's I-th neighbour.
_STATE = re.compile(r"^(\S+ \S+) <TRACE> n(\d+): State changed to (\w+)")
_LOG_TIME = "%Y-%m-%d %H:%M:%S.%f"


def bird_session_changes(log: Path, router: Router) -> list[SessionChange]:
    """The router's sessions reaching ``up`` and leaving it, from BIRD's log (states other than up after
    up, e.g. ``stop``, are the session going down; repeats are dropped)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out: list[SessionChange] = []
    up: dict[int, bool] = {}
    for line in text.splitlines():
        m = _STATE.match(line)
        t = log_time(m.group(1), _LOG_TIME) if m else None
        if m is None or t is None or int(m.group(2)) >= len(router.neighbors):
            continue
        i, now_up = int(m.group(2)), m.group(3) == "up"
        if up.get(i, False) != now_up:
            up[i] = now_up
            out.append(SessionChange(t, str(router.neighbors[i].address), now_up))
    return out


def bird_sessions(sock: Path, router: Router) -> dict[str, str]:
    """Neighbour address → BGP state (``Established``…), from ``birdc show protocols``."""
    out = birdc(sock, "show protocols")
    state_of: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "BGP":
            state_of[parts[0]] = next((st for st in _BGP_STATES if st in parts[4:]), parts[3])
    return {str(n.address): state_of.get(f"n{i}", "?") for i, n in enumerate(router.neighbors)}


def bird_best_as_path(sock: Path, prefix: IPv4Network) -> tuple[int, ...] | None:
    """The AS path of BIRD's best route to ``prefix`` (None if it has none)."""
    out = birdc(sock, f"show route for {prefix} all", check=False)
    if "Network not found" in out:
        return None
    if "Table master4" not in out:
        raise subprocess.CalledProcessError(1, f"birdc show route for {prefix}", out)
    best = False
    for line in out.splitlines():
        if "unicast [" in line or "blackhole [" in line:
            best = " * " in line
        elif best and "BGP.as_path:" in line:
            text = line.split("BGP.as_path:", 1)[1].strip()
            return tuple(int(a) for a in text.split()) if text else ()
    return None


def bird_as_paths(sock: Path, prefix: IPv4Network) -> list[tuple[int, ...]]:
    """The AS paths of every BGP route BIRD holds for ``prefix``, sorted."""
    out = birdc(sock, f"show route for {prefix} all", check=False)
    return sorted(tuple(int(a) for a in line.split("BGP.as_path:", 1)[1].split())
                  for line in out.splitlines() if "BGP.as_path:" in line)


@register
class BirdKind(RouterKind):
    """``kind: bird``: one BIRD 2 for BGP, BFD and the kernel; state through birdc."""

    name = "bird"
    cli = "birdc"

    def cli_argv(self, router_dir: Path, args: list[str]) -> list[str]:
        return [BIRDC, "-s", str(router_dir / "bird.ctl"), *args]

    def daemons(self, env: NodeEnv, router: Router) -> list[Daemon]:
        env.dir.mkdir(parents=True, exist_ok=True)
        return [Bird(env, router)]

    def sessions(self, router_dir: Path, router: Router) -> dict[str, str]:
        return bird_sessions(router_dir / "bird.ctl", router)

    def bfd_peers(self, router_dir: Path) -> dict[str, str]:
        seen: dict[str, str] = {}
        for line in birdc(router_dir / "bird.ctl", "show bfd sessions").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].count(".") == 3:
                seen[parts[0]] = parts[2].lower()
        return seen

    def session_changes(self, router_dir: Path, router: Router) -> list[SessionChange]:
        return bird_session_changes(router_dir / "bird.log", router)

    def best_as_path(self, router_dir: Path, prefix: IPv4Network) -> tuple[int, ...] | None:
        return bird_best_as_path(router_dir / "bird.ctl", prefix)

    def as_paths(self, router_dir: Path, prefix: IPv4Network) -> list[tuple[int, ...]]:
        return bird_as_paths(router_dir / "bird.ctl", prefix)
