"""``anylab``: bring labs up and down, look at them, run the demo and the checks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from backup import RESTORABLE
from core import netns
from core.clock import monotonic
from core.errors import AnylabError, TopologyError, UsageError
from core.wait import wait_for
from lab.faults.scenarios import SCENARIOS, active_faults
from lab.run import controller_socket as control
from lab.run.cleanup import cleanup, cleanup_all
from lab.run.rundir import (
    RUN_ROOT,
    check_name,
    control_plane_dirs,
    controller_alive,
    in_service,
    lab_names,
    netns_prefix,
    node_index,
    read_state,
    run_dir_of,
    topology_of,
)
from model.constants import BACKUP_NODE, BACKUP_SOCKET, NAME_RE

if TYPE_CHECKING:
    from model.budget import Estimate
    from model.topology import Topology

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_TOPOLOGY = PROJECT / "topologies" / "global.yaml"

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="anylab: an anycast and BGP failover lab in network namespaces.",
                  epilog="Start with: anylab up; anylab status; anylab exec r1 -- vtysh -c 'show bgp summary'; "
                         "anylab measure drain sjc; anylab down. Logs: /run/anylab/NAME.controller.log.")
console = Console(width=None if sys.stdout.isatty() else 130)

def _checked_scenario(scenario: str) -> str:
    """A scenario argument, checked before the command looks the lab up (UsageError: exit 2)."""
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; use one of: {', '.join(SCENARIOS)}")
    return scenario


#: An output file of "-": standard output.
STDOUT = Path("-")


def _output_dir(flag: str, path: Path | None) -> None:
    """Raises UsageError when ``path`` (an output file a flag names) cannot be written for want of its
    directory, before the command does its work ("-", stdout, always can)."""
    if path is not None and path != STDOUT and not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: the directory {path.parent} does not exist; create it first")


@contextlib.contextmanager
def _progress(what: str) -> Iterator[None]:
    """Say that a long step runs: a spinner on a terminal, else a line on stderr when it starts and one
    when it ends (a log or CI shows where the time went)."""
    if console.is_terminal:
        with console.status(f"{what}…"):
            yield
        return
    t0 = monotonic()
    print(f"{what}…", file=sys.stderr, flush=True)
    yield
    print(f"{what}: done in {monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


def _root_warnings(topo: Topology, path: Path) -> list[str]:
    """What in a topology runs as root with the operator's trust: a topology script, command checks."""
    out = []
    if path.suffix == ".py":
        out.append(f"{path} is a Python script: it ran as root (in a child, 30 s at most) to make the topology; "
                   "run only scripts you trust")
    commands = sorted({pop.name for pop in topo.pops for c in pop.profile.health.checks if c.kind == "command"})
    if commands:
        out.append(f"health checks of kind 'command' run as root in the PoP servers of {', '.join(commands)}")
    return out


def _fit(topo: Topology) -> tuple[Estimate, str | None, str | None]:
    """The topology's estimate on this machine: (estimate, refusal, warning), see model.budget.verdict."""
    from model.budget import estimate, verdict

    need = estimate(topo)
    return (need, *verdict(need, _available_memory(), os.cpu_count() or 1))


def _budget(topo: Topology, force: bool) -> str | None:
    """The estimate's warning, if any; raises UsageError (nothing started) when the lab will not fit in
    the memory this machine has available, unless ``force``."""
    _need, refusal, warning = _fit(topo)
    if refusal is not None and not force:
        raise UsageError(f"{topo.name} {refusal}; --force starts it anyway")
    return refusal or warning


def _available_memory() -> float:
    """MemAvailable in bytes (/proc/meminfo); infinite where it cannot be read (nothing to refuse on)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return float("inf")


#: Every command's --name is checked by its option, before the command touches the disk (exit 2).
NameOpt = Annotated[str, typer.Option("--name", "-n", callback=check_name,
                                      help="lab name: 1 to 16 lower-case letters and digits (labs run side by side)")]
ScenarioArg = Annotated[str, typer.Argument(help=", ".join(SCENARIOS), callback=_checked_scenario)]
TargetArg = Annotated[str, typer.Argument(help="a server, PoP, region, router link a:b, control, or a control "
                                                "plane node cp-REGION")]
CountOpt = Annotated[int, typer.Option(help="flap: down/up cycles")]
PeriodOpt = Annotated[float, typer.Option(help="flap: seconds per cycle")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="print JSON instead of a table")]
KindOpt = Annotated[str | None, typer.Option("--kind", help="make every router this kind: frr or bird")]


def _running_state(name: str) -> dict[str, Any]:
    """Lab ``name``'s state; raises AnylabError when there is none or it cannot be read."""
    state = read_state(name)
    if state is None:
        raise AnylabError(f"no lab named '{name}' is up (anylab up starts one)")
    if "spec" not in state:
        raise AnylabError(f"lab '{name}' has no readable state (phase {state.get('phase')}); "
                          f"'anylab down --name {name}' removes what it left")
    return state


@app.command()
def up(
    topology: Annotated[Path, typer.Argument(help="topology file (.yaml or .py)")] = DEFAULT_TOPOLOGY,
    name: NameOpt = "main",
    timeout: Annotated[float, typer.Option(help="seconds to wait for convergence")] = 120.0,
    kind: KindOpt = None,
    hosts: Annotated[int | None, typer.Option(help="partition over N hosts (VXLAN between them; "
                                                    "the multi-host prototype, docs/scaling.md)")] = None,
    force: Annotated[bool, typer.Option("--force", metavar="",
                                        help="start even when the estimate says it will not fit in memory")] = False,
) -> None:
    """Start a lab and return once BGP has converged and every client gets answers.

    Examples: 'anylab up' (topologies/global.yaml); 'anylab up topologies/two_pops.yaml --name t2 --kind bird'.
    The phases (validating, building, starting, converging) are printed as they pass when the output is not a
    terminal; the controller's log is /run/anylab/NAME.controller.log."""
    from bgp.routers import kind_names
    from lab.cli.tables import catchment_table
    from lab.run.observe import observed_catchment
    from model.graph import predict_catchment
    from model.load import load_topology

    if kind is not None and kind not in kind_names():
        raise UsageError(f"--kind {kind}: use {' or '.join(kind_names())}")
    topo = load_topology(topology, kind, hosts=hosts)  # bad input: exit 2 before anything starts
    budget_note = _budget(topo, force)
    existing = read_state(name)
    if existing is not None:
        if not controller_alive(existing):
            raise AnylabError(f"lab '{name}' was left by a controller that is gone (pid {existing.get('pid')}); "
                              f"'anylab down --name {name}' removes what it left, then 'anylab up' again")
        raise AnylabError(f"a lab named '{name}' is already up; 'anylab down --name {name}' first")
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    failed = RUN_ROOT / f"{name}.failed"
    failed.unlink(missing_ok=True)
    log = RUN_ROOT / f"{name}.controller.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lab.run.controller", "--name", name,
                                 "--timeout", str(timeout), *(["--kind", kind] if kind else []),
                                 *(["--hosts", str(hosts)] if hosts else []), str(topology)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=PROJECT)
    for warning in [*_root_warnings(topo, topology), *([budget_note] if budget_note else [])]:
        print(f"warning: {warning}", file=sys.stderr)
    t0 = monotonic()
    what = f"bringing up {topo.name} ({len(topo.node_names())} nodes)"
    with console.status(f"{what}…") as spinner:
        seen = [""]

        def settled() -> str | None:
            if failed.exists():
                return "failed"
            if proc.poll() is not None:
                return "exited"
            state = read_state(name) or {}
            phase = str(state.get("phase") or "starting the controller")
            if phase != seen[0]:  # progress: on a terminal in the spinner, else one line per phase
                seen[0] = phase
                if console.is_terminal:
                    spinner.update(f"{what}: {phase}…")
                else:
                    print(f"up: {phase} ({monotonic() - t0:.1f} s)", flush=True)
            return "up" if phase == "up" else None

        try:
            outcome = wait_for(settled, timeout=timeout + 60, what="the lab to come up",
                               describe=lambda: str((read_state(name) or {}).get("phase")))
        except (KeyboardInterrupt, AnylabError):
            # Ctrl-C or a hang: the controller runs on in its own session, so stop it and its lab.
            errors = cleanup(name)
            raise AnylabError(f"lab '{name}' was not brought up; stopped what had started"
                           + (f" (errors: {'; '.join(errors)})" if errors else "")) from None
    if outcome != "up":
        reason = json.loads(failed.read_text())["error"] if failed.exists() else log.read_text()[-2000:]
        cleanup(name)  # the controller tore its lab down; this removes its log and failure marker too
        raise AnylabError(f"lab '{name}' did not come up: {reason}")
    state = _running_state(name)
    for note in state.get("notes", []):
        console.print(f"host: {note}")
    console.print(catchment_table(topo, observed_catchment(topo, run_dir_of(name)), predict_catchment(topo)))
    console.print(f"lab '{name}' up in {monotonic() - t0:.1f} s (controller pid {state['pid']}); "
                  f"'anylab status', 'anylab exec NODE -- CMD', 'anylab down'")


def _netns_of(state: dict[str, Any]) -> Callable[[str], str]:
    """Node → the path of its namespace, for the running lab whose state is ``state``."""
    prefix = str(state["netns_prefix"])
    return lambda node: netns.netns_path(prefix + node)


def status_data(name: str) -> dict[str, Any]:
    """The status of a running lab as JSON-ready data (see ``anylab status --json``)."""
    state = _running_state(name)
    return _status(name, state, topology_of(state))


def _status(name: str, state: dict[str, Any], topo: Topology) -> dict[str, Any]:
    """:func:`status_data` for a state already read and its topology already rebuilt."""
    from lab.run.observe import daemons_alive, observed_catchment, router_sessions

    run_dir = run_dir_of(name)
    predicted = state.get("predicted")
    if not isinstance(predicted, dict):  # a lab brought up before the state kept it
        from model.graph import predict_catchment

        predicted = predict_catchment(topo)
    sessions = router_sessions(topo, run_dir)
    serving = in_service(topo, run_dir)
    # Nodes out of service by choice (standby servers scaled down, a DR site stood down) stopped on purpose.
    idle = {s.name for s in topo.all_servers()} - {s for servers in serving.values() for s in servers}
    if topo.dr_site is not None and topo.dr_site.pop.name not in serving:
        idle |= set(topo.dr_site.nodes())
    alive = {n: ds for n, ds in daemons_alive(run_dir).items() if n not in idle}
    return {
        "name": name,
        "topology": topo.name,
        "source": state.get("source"),
        "phase": state.get("phase"),
        "controller_alive": controller_alive(state),
        "catchment": observed_catchment(topo, run_dir),
        "predicted": predicted,
        "sessions_up": sum(s.up for s in sessions),
        "sessions_total": sum(s.total for s in sessions),
        "sessions_down": {s.router: list(s.down) for s in sessions if s.down},
        "daemons": alive,
        "faults": active_faults(run_dir),
        "router_kinds": sorted({r.kind for r in topo.routers}),
        "profile": topo.spec.settings.profile.name,
        "timings": state.get("timings", {}),
        "control_plane": _control_plane_status(topo, run_dir),
        "protect": _protect(run_dir, [s.name for s in topo.servers]),
        "in_service": serving,
        "links": _links_status(topo, run_dir),
        "dns": _dns_status(topo, state, run_dir),
    }


def _dns_status(topo: Topology, state: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from lab.run.dns import dns_status

    return dns_status(topo, run_dir, _netns_of(state))


def _links_status(topo: Topology, run_dir: Path) -> dict[str, Any]:
    """Each shaped link's shape now and its calibration (what it achieved when last measured)."""
    from lab.links.plan import shape_json
    from lab.links.state import Links, calibration_summary

    shapes = Links(topo, {}, run_dir).shapes()
    return {"shapes": {k: shape_json(v) for k, v in shapes.items() if v is not None},
            "calibration": calibration_summary(run_dir)}


def _protect(run_dir: Path, servers: list[str]) -> dict[str, dict[str, Any]]:
    """What every edge worker reports of its protection: degradation level and reasons, circuit breakers
    (``deployment/dependency`` → state), requests refused (rate limited, shed)."""
    out: dict[str, dict[str, Any]] = {}
    for server in servers:
        try:
            out[server] = json.loads((run_dir / server / "protect.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def _control_plane_status(topo: Topology, run_dir: Path) -> dict[str, Any]:
    """Whether any region's control plane serves, what it holds (workers → PoP → version), each region's
    API and etcd member (the leader named), and which region's control plane each PoP server follows."""
    from control_plane.client import Client, ControlPlaneError

    client = Client(control_plane_dirs(topo, run_dir), timeout=2.0)
    regions: dict[str, Any] = {}
    statuses = client.each("GET", "/v1/status")
    leader_ids = {s["member"].get("leader") for s in statuses.values() if s.get("member")}
    for cp in topo.control_planes:
        s = statuses.get(cp.name)
        regions[cp.region] = {"node": cp.name, "api": s is not None} if s is None else {
            "node": cp.name, "api": True, "serving": s["serving"], "quorum": s["quorum"],
            "etcd_member": bool(s["member"]), "etcd_leader": bool(s["member"]) and s["member"]["id"] in leader_ids,
            "artifacts": s["artifacts"], "latency": s["latency"], "following": len(s["following"])}
    by_address = {f"{cp.address}:{cp.port}": cp.name for cp in topo.control_planes}
    follows: dict[str, str | None] = {}
    for server in topo.servers:
        try:
            sync = json.loads((run_dir / server.name / "deployments" / "sync.json").read_text())
        except (OSError, ValueError):
            continue
        follows[server.name] = by_address.get(sync.get("following") or "") if sync.get("reachable") else None
    leader = next((r for r, info in regions.items() if info.get("etcd_leader")), None)
    out: dict[str, Any] = {"regions": regions, "etcd_leader": leader, "follows": follows}
    try:
        data = client.deployments()
    except ControlPlaneError as exc:
        return {"up": False, "error": str(exc), **out}
    return {"up": True, "generation": data["generation"],
            "workers": {name: info["placement"] for name, info in data["workers"].items()}, **out}


@app.command()
def status(
    name: NameOpt = "main",
    as_json: JsonOpt = False,
    watch: Annotated[float | None, typer.Option("--watch", "-w", metavar="SECONDS",
                                                help="redraw every SECONDS (0.2..60) until Ctrl-C or --count")] = None,
    count: Annotated[int | None, typer.Option(help="--watch: stop after this many redraws (1..100000)")] = None,
) -> None:
    """Nodes, daemons alive, BGP sessions up, observed and predicted catchment.

    Examples: 'anylab status'; 'anylab status --json | jq .catchment'; 'anylab status --watch 1'
    (with --json: one JSON document a line)."""
    if watch is not None and not 0.2 <= watch <= 60:
        raise UsageError(f"--watch {watch:g}: give 0.2 to 60 seconds")
    if count is not None and (watch is None or not 1 <= count <= 100_000):
        raise UsageError("--count goes with --watch: 1 to 100000 redraws")
    state = _running_state(name)
    topo = topology_of(state)
    if watch is None:
        _print_status(name, state, topo, as_json)
        return
    from rich.live import Live

    drawn = 0
    deadline = monotonic()
    with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal and not as_json \
            else contextlib.nullcontext() as live:
        while count is None or drawn < count:
            state = _running_state(name)
            if live is None:
                _print_status(name, state, topo, as_json, lines=True)
            else:
                with console.capture() as captured:
                    _print_status(name, state, topo, as_json)
                live.update(Text.from_ansi(captured.get()), refresh=True)
            drawn += 1
            deadline += watch
            if count is not None and drawn >= count:
                break
            time.sleep(max(0.0, deadline - monotonic()))  # the redraw period itself, not a wait for a state


def _print_status(name: str, state: dict[str, Any], topo: Topology, as_json: bool, lines: bool = False) -> None:
    """Print the status; as JSON (with ``lines``, one compact document per line: JSON Lines)."""
    from lab.cli.tables import catchment_table

    data = _status(name, state, topo)
    if as_json:
        print(json.dumps(data, indent=None if lines else 1), flush=True)
        return
    console.print(f"lab [bold]{name}[/]: {data['topology']} ({data['source']}), phase {data['phase']}, "
                  f"BGP sessions {data['sessions_up']}/{data['sessions_total']} established")
    if not data["controller_alive"]:
        console.print(f"  [red]the controller that held this lab is gone: nothing restores faults or scales it; "
                      f"'anylab down --name {name}' removes what it left[/]")
    for router, down in data["sessions_down"].items():
        console.print(f"  [red]{router}: down {', '.join(down)}[/]")
    dead = [f"{n}/{d}" for n, ds in data["daemons"].items() for d, ok in ds.items()
            if not ok and d != "mininet-shell"]
    console.print("  daemons: all alive" if not dead else f"  [red]daemons not running: {', '.join(dead)}[/]")
    for target, fault in data["faults"].items():
        console.print(f"  [yellow]failed: {fault['plan']['scenario']} on {target}[/] ('anylab restore {target}')")
    cp = data["control_plane"]
    if cp["up"]:
        console.print(f"  control plane: up, {len(cp['workers'])} worker(s) deployed ('anylab deployments'); "
                      f"etcd leader: {cp['etcd_leader'] or 'none'}")
    else:
        console.print("  [yellow]control plane: down; PoPs serve their last good versions[/]")
    for info in cp["regions"].values():
        if not info.get("serving"):
            why = "API down" if not info["api"] else "no etcd quorum" if not info["quorum"] else "loading"
            console.print(f"  [yellow]control plane {info['node']}: not serving ({why})[/]")
    home = {s.name: f"cp-{s.region}" for s in topo.servers}
    away = {s: f for s, f in cp["follows"].items() if f is not None and f != home[s]}
    if away:
        console.print("  [yellow]PoP servers following another region: " +
                      ", ".join(f"{s} → {f}" for s, f in sorted(away.items())) + "[/]")
    for server, p in data["protect"].items():
        if p.get("level"):
            why = "; ".join(p.get("reasons", {}).values())
            console.print(f"  [yellow]{server}: degradation level L{p['level']} ({why})[/]")
        for dependency, b in p.get("breakers", {}).items():
            if b["mode"] != "closed":
                console.print(f"  [yellow]circuit breaker {dependency} at {server}: {b['mode']}[/]")
    for pop in topo.pops:
        if pop.standby:
            serving = data["in_service"].get(pop.name, [])
            console.print(f"  {pop.name}: {len(serving)} of {len(pop.servers) + len(pop.standby)} servers in service"
                          + (" (autoscaled)" if pop.autoscale else ""))
    dns = data["dns"]
    if dns:
        serial = dns["primary"]["serial"]
        console.print(f"  DNS {dns['zone']}: primary serial {serial}" + (
            f" [yellow](feed: {dns['primary']['feed']['error']})[/]" if dns["primary"]["feed"].get("error") else ""))
        for p_name, p in dns["providers"].items():
            nodes = ", ".join(f"{n} " + ("[green]" if info["serial"] == serial else "[red]") +
                              f"{info['serial'] if info['serial'] is not None else 'silent'}[/]" +
                              ("" if info.get("announced", True) else " [yellow](withdrawn)[/]")
                              for n, info in p["nodes"].items())
            console.print(f"    {p_name} ({p['kind']}, {p['anycast'] or 'unicast ' + p['address']}): {nodes}")
    cal = data["links"]["calibration"]
    for key, shape in data["links"]["shapes"].items():
        got = cal["links"].get(key, {})
        seen = "; ".join(f"{d} p50 {got[d]['p50_ms']:.2f} / p99 {got[d]['p99_ms']:.2f} ms, lost {got[d]['loss_pct']} %"
                         for d in ("out", "in") if "p50_ms" in got.get(d, {}))
        console.print(f"  link {key}: delay {shape['delay_ms']:g} ms"
                      + (f" ±{shape['jitter_ms']:g}" if shape["jitter_ms"] else "")
                      + (f", loss {shape['loss_pct']:g} %" if shape["loss_pct"] else "")
                      + (f", {shape['bandwidth_mbit']:g} Mbit/s" if shape["bandwidth_mbit"] else "")
                      + (f" — measured {seen}" if seen else " — not calibrated"))
    console.print(catchment_table(topo, data["catchment"], data["predicted"]))


@app.command(name="exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    node: Annotated[str, typer.Argument(metavar="NODES", help="a node (r1), several (r1,r2), a pattern ('sjc-s*') "
                                        "or a group: routers, servers, clients, services, all")],
    command: Annotated[list[str], typer.Argument(help="command and arguments (after --)")],
    name: NameOpt = "main",
) -> None:
    """Run a command inside nodes' namespaces, one node after the other.

    vtysh (FRR) and birdc (BIRD) are pointed at that router's own daemons, exabgpcli (status, show
    neighbor) at a PoP server's ExaBGP. With several nodes each output is headed by its node, stdin is
    closed, and the exit status is the worst one.

    Examples: anylab exec r1 -- vtysh -c 'show bgp summary'; anylab exec routers -- ip route;
    anylab exec 'sjc-s*' -- exabgpcli status; anylab exec c1 -- ping -c 3 203.0.113.1"""
    from lab.cli.nodes import node_argv, select_nodes

    state = _running_state(name)
    topo = topology_of(state)
    nodes = select_nodes(topo, node)
    argvs = {n: node_argv(topo, run_dir_of(name), n, list(command)) for n in nodes}  # all checked, then run
    worst = 0
    failed: list[str] = []
    for n, argv in argvs.items():
        if len(nodes) > 1:
            print(f"── {n} ──", flush=True)
        netns_file = _netns_of(state)(n)
        stdin = None if len(nodes) == 1 else subprocess.DEVNULL
        res = subprocess.run(["nsenter", f"--net={netns_file}", "--", *argv], stdin=stdin, check=False)
        if res.returncode != 0:
            failed.append(f"{n} {res.returncode}")
            worst = max(worst, res.returncode if res.returncode > 0 else 128 - res.returncode)
    if len(nodes) > 1 and failed:
        print(f"exit status: {', '.join(failed)} ({len(nodes) - len(failed)} of {len(nodes)} nodes 0)",
              file=sys.stderr)
    raise typer.Exit(worst)


@app.command()
def capture(
    node: Annotated[str, typer.Argument(help="the node, e.g. r1")],
    interface: Annotated[str, typer.Argument(help="its interface, e.g. r1-eth0 ('anylab exec r1 -- ip -br link')")],
    write: Annotated[str, typer.Option("--write", "-w", metavar="FILE",
                                       help="the pcap file to write, or - for stdout (| wireshark -k -i -)")],
    count: Annotated[int, typer.Option("--count", "-c", help="stop after this many packets (1..1000000)")] = 10_000,
    duration: Annotated[float, typer.Option(help="stop after this many seconds (at most 3600)")] = 30.0,
    bpf: Annotated[str | None, typer.Option("--filter", "-f", help="a tcpdump filter, e.g. 'tcp port 179'")] = None,
    name: NameOpt = "main",
) -> None:
    """Capture packets on a node's interface to a pcap file for Wireshark.

    tcpdump in the node's namespace, until --count packets or --duration seconds, whichever comes first.

    Examples: anylab capture r1 r1-eth0 -w /tmp/bgp.pcap -f 'tcp port 179' --duration 60;
    anylab capture c1 c1-eth0 -w - | wireshark -k -i -"""
    from lab.run.capture import CaptureSpec, check_filter
    from lab.run.capture import capture as run_capture

    CaptureSpec("", interface, write, count, duration, bpf).check()  # the request first, the lab after
    state = _running_state_usage(name)
    topo = topology_of(state)
    if node not in topo.node_names():
        raise UsageError(f"no node '{node}' in lab '{name}'; nodes: {', '.join(topo.node_names())}")
    own = [i.name for i in topo.interfaces() if i.node == node]
    if interface not in (*own, "any", "lo"):
        raise UsageError(f"{node} has no interface '{interface}'; it has: {', '.join([*own, 'lo', 'any'])}")
    spec = CaptureSpec(_netns_of(state)(node), interface, write, count, duration, bpf)
    check_filter(spec)  # compiled in the node's namespace: needs the lab
    if write != "-":
        print(f"capturing on {node} {interface} into {write} (at most {count} packets, {duration:g} s; Ctrl-C stops)",
              file=sys.stderr)
    packets = run_capture(spec)
    print(f"{packets} packets captured on {node} {interface}" + (f" into {write}" if write != "-" else ""),
          file=sys.stderr)


@app.command()
def validate(
    topology: Annotated[Path, typer.Argument(help="topology file (.yaml or .py)")] = DEFAULT_TOPOLOGY,
    kind: KindOpt = None,
    show_configs: Annotated[bool, typer.Option("--show-configs", metavar="",
                                               help="print every daemon's rendered configuration")] = False,
    nodes: Annotated[str | None, typer.Option("--nodes", help="with --show-configs or --configs: only these nodes "
                                              "(as for exec: r1,r2, 'sjc-s*', routers …)")] = None,
    configs: Annotated[Path | None, typer.Option("--configs", metavar="DIR",
                                                 help="write the configurations into DIR (new or empty)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="",
                                          help="also dry-run every daemon on its configuration (vtysh -C, "
                                               "bird -p, exabgp validate …), as up does first")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check a topology without starting it; show, write or dry-run its daemons' configurations.

    The model's checks, the estimate of memory and CPU, what runs as root; optionally every daemon's
    configuration, shown, written, dry-run. Exit 2 if anything is wrong.

    Examples: anylab validate topologies/two_pops.yaml; anylab validate --show-configs --nodes r1;
    anylab validate topologies/global.yaml --dry-run"""
    from bgp.routers import kind_names
    from lab.cli.nodes import select_nodes
    from lab.run.dryrun import render_configs
    from model.load import load_topology

    if kind is not None and kind not in kind_names():
        raise UsageError(f"--kind {kind}: use {' or '.join(kind_names())}")
    if configs is not None and (configs.exists() and (not configs.is_dir() or any(configs.iterdir()))):
        raise UsageError(f"--configs {configs}: give a new or empty directory")
    if configs is not None:
        _output_dir("--configs", configs)
    if nodes is not None and not (show_configs or configs):
        raise UsageError("--nodes goes with --show-configs or --configs")
    topo = load_topology(topology, kind)
    chosen = select_nodes(topo, nodes) if nodes is not None else topo.node_names()
    need, refusal, warning = _fit(topo)
    result: dict[str, Any] = {
        "topology": topo.name, "source": str(topology), "nodes": len(topo.node_names()),
        "routers": {k: sum(1 for r in topo.routers if r.kind == k) for k in kind_names()},
        "pops": len(topo.pops), "servers": len(topo.servers), "clients": len(topo.clients),
        "estimate": {"memory_gb": round(need.memory / 1e9, 2), "idle_cores": round(need.cpu, 3)},
        "fits": refusal is None, "warnings": [*_root_warnings(topo, topology), *filter(None, [refusal, warning])],
    }
    if show_configs or configs is not None or dry_run:
        rendered, errors = render_configs(topo, chosen, configs, dry_run)
        result["configs"] = {f"{n}/{p}": len(t) for n, files in rendered.items() for p, t in files.items()}
        result["dry_run_errors"] = errors
        if show_configs and not as_json:
            for n, files in rendered.items():
                for path, text in files.items():
                    print(f"### {n}/{path}\n{text.rstrip()}\n")
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        routers = ", ".join(f"{v} {k}" for k, v in result["routers"].items() if v)
        console.print(f"{topology}: topology {topo.name} is valid: {result['nodes']} nodes ({routers} routers, "
                      f"{result['pops']} PoPs, {result['servers']} servers, {result['clients']} clients); "
                      f"{need.describe()}", soft_wrap=True)
        for w in result["warnings"]:
            console.print(f"[yellow]warning: {w}[/]", soft_wrap=True)
        if "configs" in result:
            where = f" into {configs}" if configs is not None else ""
            console.print(f"{len(result['configs'])} configuration files rendered{where}"
                          + (f"; dry run: {'all accepted' if not result['dry_run_errors'] else 'REJECTED'}"
                             if dry_run else ""))
    if result.get("dry_run_errors"):
        raise UsageError("configuration rejected by its daemon: " + "; ".join(result["dry_run_errors"]))


@app.command()
def graph(
    output: Annotated[Path, typer.Option("--output", "-o", help="FILE.png, FILE.svg or FILE.mmd")],
    topology: Annotated[Path, typer.Argument()] = DEFAULT_TOPOLOGY,
    catchment: Annotated[str | None, typer.Option(
        help="colour clients by the PoP serving them: 'predicted', or 'observed' in the running lab --name")] = None,
    name: NameOpt = "main",
) -> None:
    """Draw a topology (Mermaid text, or a PNG/SVG picture).

    Examples: anylab graph -o /tmp/global.png; anylab graph -o /tmp/t.mmd topologies/two_pops.yaml
    --catchment predicted"""
    from lab.measure.draw import draw
    from lab.run.observe import observed_catchment
    from model.graph import predict_catchment
    from model.load import load_topology

    if output.suffix.lower() not in (".png", ".svg", ".mmd"):
        raise UsageError(f"-o {output}: give a file ending in .png, .svg or .mmd")
    _output_dir("-o", output)
    topo = load_topology(topology)
    colours: dict[str, str | None] | None = None
    if catchment == "predicted":
        colours = dict(predict_catchment(topo))
    elif catchment == "observed":
        state = _running_state_usage(name)
        topo = topology_of(state)
        colours = observed_catchment(topo, run_dir_of(name))
    elif catchment is not None:
        raise UsageError(f"--catchment {catchment}: use predicted or observed")
    draw(topo, output, colours)
    console.print(f"wrote {output}")


@app.command()
def fail(
    scenario: ScenarioArg,
    target: TargetArg,
    name: NameOpt = "main",
    count: CountOpt = 3,
    period: PeriodOpt = 1.0,
) -> None:
    """Inject a fault from the catalogue into a running lab (undo it with 'anylab restore').

    Examples: anylab fail service-crash sjc-s1; anylab fail region-down eu; anylab fail link-down r1:r2;
    anylab fail flap sjc --count 5 --period 2"""
    _running_state_usage(name)
    reply = control.call(run_dir_of(name), "fail", scenario=scenario, target=target, count=count, period=period)
    console.print(f"{scenario} on {target}: injected at t={reply['t']:.6f} (CLOCK_MONOTONIC)"
                  + ("" if scenario == "flap" else f"; 'anylab restore {target}' undoes it"))


@app.command()
def link(
    a: Annotated[str, typer.Argument(help="one end of the link (a node)")],
    b: Annotated[str, typer.Argument(help="the other end")],
    name: NameOpt = "main",
    delay: Annotated[float | None, typer.Option(help="one-way delay, ms (0..5000)")] = None,
    jitter: Annotated[float | None, typer.Option(help="jitter, ms (0..1000)")] = None,
    jitter_distribution: Annotated[str | None, typer.Option(help="uniform or normal")] = None,
    loss: Annotated[float | None, typer.Option(help="loss, % each way (0..<100)")] = None,
    loss_burst: Annotated[float | None, typer.Option(help="mean run of losses, packets (1..1000)")] = None,
    bandwidth: Annotated[float | None, typer.Option(help="rate limit, Mbit/s (0..100000]; 0 removes it")] = None,
    queue: Annotated[int | None, typer.Option(help="the rate limit's queue, packets (1..100000)")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="make the link a bare veth again", metavar="")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a link of a running lab: delay, jitter, loss, bandwidth (each way alike); shows the link's
    calibration after the change.

    Examples: anylab link na-e eu-w --delay 30 --loss 1; anylab link ord-s1 na-w --bandwidth 10;
    anylab link na-e eu-w --clear"""
    changes = _link_changes(delay, jitter, jitter_distribution, loss, loss_burst, bandwidth, queue, clear)
    _running_state_usage(name)
    reply = control.call(run_dir_of(name), "link", 60.0, a=a, b=b, changes=changes)
    if as_json:
        print(json.dumps({k: v for k, v in reply.items() if k != "ok"}, indent=1))
        return
    cal = reply.get("calibration") or {}
    seen = "; ".join(f"{d}: p50 {cal[d]['p50_ms']:.2f} ms, p99 {cal[d]['p99_ms']:.2f} ms, lost {cal[d]['loss_pct']} %"
                     for d in ("out", "in") if "p50_ms" in cal.get(d, {}))
    console.print(f"link {reply['link']}: {reply['after'] or 'bare'} at t={reply['t']:.6f}"
                  + (f"\n  measured {seen}" if seen else ""))


def _link_changes(delay: float | None, jitter: float | None, distribution: str | None, loss: float | None,
                  burst: float | None, bandwidth: float | None, queue: int | None, clear: bool) -> dict[str, Any]:
    """The Shape fields ``anylab link``'s flags change; raises UsageError (exit 2) for a bad flag."""
    checks = [("--delay", delay, 0.0, 5000.0), ("--jitter", jitter, 0.0, 1000.0), ("--loss", loss, 0.0, 99.999),
              ("--loss-burst", burst, 1.0, 1000.0), ("--bandwidth", bandwidth, 0.0, 100_000.0)]
    for flag, value, lo, hi in checks:
        if value is not None and not lo <= value <= hi:
            raise UsageError(f"{flag} {value:g}: give {lo:g} to {hi:g}")
    if queue is not None and not 1 <= queue <= 100_000:
        raise UsageError(f"--queue {queue}: give 1 to 100000 packets")
    if distribution is not None and distribution not in ("uniform", "normal"):
        raise UsageError(f"--jitter-distribution {distribution!r}: give uniform or normal")
    if clear:
        return {"delay_ms": 0.0, "jitter_ms": 0.0, "loss_pct": 0.0, "loss_burst": 1.0, "bandwidth_mbit": None,
                "queue": None}
    given = (("delay_ms", delay), ("jitter_ms", jitter), ("jitter_distribution", distribution), ("loss_pct", loss),
             ("loss_burst", burst), ("queue", queue))
    changes: dict[str, Any] = {k: v for k, v in given if v is not None}
    if bandwidth is not None:
        changes["bandwidth_mbit"] = bandwidth or None
    if not changes:
        raise UsageError("give what to change: --delay, --jitter, --loss, --loss-burst, --bandwidth, --queue "
                         "or --clear")
    return changes


@app.command()
def dig(
    query: Annotated[str, typer.Argument(metavar="NAME", help="the name to resolve, e.g. hello.edge.test")],
    client: Annotated[str, typer.Option("--from", metavar="CLIENT", help="the client asking")],
    rdtype: Annotated[str, typer.Option("--type", help="A, NS, SOA, TXT or CNAME")] = "A",
    server: Annotated[str | None, typer.Option("--server", metavar="SERVER",
                                               help="a provider (p1) or DNS node (r2-eu) to ask instead of the "
                                                    "client's first resolver")] = None,
    name: NameOpt = "main",
    as_json: JsonOpt = False,
) -> None:
    """Resolve a name from a client: the answer, the server that gave it and the time.

    A provider asked directly names the node that answered (NSID): which node of an anycast provider the
    client reaches. Examples: anylab dig hello.edge.test --from eu-c1; anylab dig www.edge.test --from
    ap-c2 --server p1"""
    from dnsd.zone import TYPES, ZoneError, check_name
    from lab.run.dns import dig as run_dig

    if rdtype not in (*TYPES, "SOA"):
        raise UsageError(f"--type {rdtype!r}: give one of {', '.join((*TYPES, 'SOA'))}")
    try:
        check_name(query if query.endswith(".") else query + ".", "NAME")
    except ZoneError as exc:
        raise UsageError(str(exc)) from None
    state = _running_state(name)
    topo = topology_of(state)
    result = run_dig(topo, _netns_of(state), client, query, rdtype,
                     server)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    if result["rcode"] is None:
        console.print(f"[red]{result['error']}[/] from {result['server']} ({result['address']}), asked by {client}")
        raise typer.Exit(1)
    by = result["answered_by"]
    console.print(f"{result['rcode']} from {result['server']} ({result['address']})"
                  + (f", answered by node {by}" if by != result["server"] else "")
                  + (", authoritative" if result["authoritative"] else "") + f" in {result['ms']:.2f} ms")
    for line in result["answer"]:
        console.print(f"  {line}")


@app.command()
def inflation(
    name: NameOpt = "main",
    fail_pop: Annotated[str | None, typer.Option("--fail", metavar="POP",
                                                 help="report again while this PoP is down (restored after)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Anycast path inflation: each client's RTT to its catchment PoP against the lowest-RTT PoP.

    Examples: anylab inflation --name geo; anylab inflation --name geo --fail ord --json"""
    from lab.measure.inflation import inflation as run_inflation
    from lab.run.driver import RemoteLab

    if fail_pop is not None and not NAME_RE.match(fail_pop):
        raise UsageError(f"--fail {fail_pop!r} is not a PoP name")
    _running_state_usage(name)
    result = run_inflation(RemoteLab(name), fail_pop)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    for phase in ("before", "after"):
        if phase not in result:
            continue
        console.print(f"[bold]{phase}[/]" + (f" ({fail_pop} down)" if phase == "after" else ""))
        for client, r in result[phase].items():
            console.print(f"  {client}: catchment {r['catchment']} {r['catchment_rtt_ms']} ms "
                          f"(anycast probes {r['anycast_probe_rtt_ms']} ms); best {r['best']} {r['best_rtt_ms']} ms; "
                          f"inflation {r['inflation_ms']} ms")
        console.print(f"  {result['summary'][phase]}")


@app.command()
def restore(
    target: Annotated[str | None, typer.Argument(help="what 'anylab fail' broke")] = None,
    name: NameOpt = "main",
    all_: Annotated[bool, typer.Option("--all", help="every fault of the lab", metavar="")] = False,
) -> None:
    """Undo a fault (or every fault with --all); the catchment returns to the prediction.

    Examples: anylab restore sjc-s1; anylab restore --all"""
    if not target and not all_:  # the request first, the lab after
        raise UsageError("give the TARGET to restore, or --all")
    _running_state_usage(name)
    if all_:
        reply = control.call(run_dir_of(name), "restore_all")
        console.print(f"restored: {', '.join(reply['restored']) or 'nothing was failed'}")
        return
    reply = control.call(run_dir_of(name), "restore", target=target)
    console.print(f"{target}: restored at t={reply['t']:.6f}")


@app.command()
def measure(
    scenario: ScenarioArg,
    target: TargetArg,
    name: NameOpt = "main",
    repeat: Annotated[int, typer.Option(help="runs (each waits for the predicted catchment first)")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", metavar="FILE",
                                                  help="write the result as JSON here (- : stdout, no table)")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", metavar="FILE",
                                                 help="write a row per run and client as CSV here (- : stdout, "
                                                      "no table)")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the last run's timeline PNG here")] = None,
    settle: Annotated[float, typer.Option(help="seconds of clean answers that end a run")] = 0.5,
    count: CountOpt = 3,
    period: PeriodOpt = 1.0,
    http: Annotated[bool, typer.Option("--http", help="also HTTP load from every client (keep-alive and "
                                       "new-connection users) through a deployed worker", metavar="")] = False,
    http_rate: Annotated[float, typer.Option(help="--http: requests/s per user")] = 50.0,
    http_connections: Annotated[int, typer.Option(help="--http: keep-alive connections per client")] = 2,
    dns: Annotated[bool, typer.Option("--dns", help="also DNS users on every client, resolving the platform's "
                                      "names through their resolvers", metavar="")] = False,
    dns_rate: Annotated[float, typer.Option(help="--dns: queries/s per client")] = 10.0,
    dns_hold: Annotated[float, typer.Option(help="--dns: seconds a DNS fault lasts before it is restored")] = 10.0,
) -> None:
    """Inject a fault, measure detection, FIB changes and every client's shift, restore; N times.

    Examples: anylab measure drain sjc; anylab measure service-crash sjc-s1 --repeat 5 --json r.json;
    anylab measure pops-down eu --csv - > shifts.csv; anylab measure dns-provider-down p1 --dns"""
    from lab.measure import report
    from lab.measure.runner import DnsUsersSpec, HttpSpec
    from lab.measure.runner import measure as run_measure
    from lab.run.driver import RemoteLab

    if not 1 <= repeat <= 1000:
        raise UsageError(f"--repeat {repeat}: give 1 to 1000 runs")
    if not (0 < dns_rate <= 200 and 1 <= dns_hold <= 300):
        raise UsageError("--dns-rate 0..200 and --dns-hold 1..300 s")
    if not (0 < http_rate <= 1000 and 1 <= http_connections <= 64):
        raise UsageError("--http-rate 0..1000 and --http-connections 1..64")
    if json_out == STDOUT and csv_out == STDOUT:
        raise UsageError("--json - and --csv -: only one of them can go to stdout")
    _output_dir("--json", json_out)
    _output_dir("--csv", csv_out)
    _output_dir("--plot", plot)
    spec = HttpSpec(http_rate, http_connections) if http else None
    dns_spec = DnsUsersSpec(dns_rate, dns_hold) if dns else None
    driver = RemoteLab(name)
    try:
        with _progress(f"measuring {scenario} on {target} ({repeat} run(s))"):
            result, timeline = run_measure(driver, scenario, target, repeat, count, period, settle, spec, dns_spec)
    except KeyboardInterrupt:
        restored = control.call(driver.run_dir, "restore_all")["restored"]
        console.print(f"interrupted: restored {', '.join(restored) or 'nothing (no fault was active)'}; "
                      f"lab '{name}' is still up")
        raise typer.Exit(130) from None
    to_stdout = STDOUT in (json_out, csv_out)
    shown = Console(stderr=True) if to_stdout else console  # stdout carries the data alone
    shown.print(report.table(result))
    for extra in (report.http_table(result), report.dns_table(result)):
        if extra is not None:
            shown.print(extra)
    for run in result["runs"]:
        for line in run["crosscheck"]:
            shown.print(f"[yellow]cross-check run {run['run']}: {line}[/]")
    for path, text in ((json_out, json.dumps(result, indent=1) + "\n"), (csv_out, report.csv_text(result))):
        if path == STDOUT:
            sys.stdout.write(text)
        elif path is not None:
            path.write_text(text)
            shown.print(f"wrote {path}")
    if plot and timeline is not None:
        report.plot(result, timeline, plot)
        console.print(f"wrote {plot}")


def _control_client(topo: Topology, name: str) -> Any:
    """The operator's control plane client for lab ``name`` (whose topology is ``topo``)."""
    from control_plane.client import Client

    return Client(control_plane_dirs(topo, run_dir_of(name)))


def _print_propagation(prop: dict[str, float]) -> None:
    if prop:
        worst = max(prop, key=lambda s: prop[s])
        values = sorted(prop.values())
        console.print(f"  on {len(prop)} PoP server(s): propagation p50 {values[len(values) // 2] * 1000:.0f} ms, "
                      f"max {prop[worst] * 1000:.0f} ms ({worst})")


def _pairs(items: list[str] | None, flag: str, form: str) -> list[tuple[str, str]]:
    """``K=V`` options as pairs; raises UsageError naming the option and the form it takes."""
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier() or (not value and flag != "--var"):
            raise UsageError(f"{flag} {item!r}: write it as {form} (the name a Python identifier)")
        pairs.append((key, value))
    return pairs


@app.command()
def deploy(
    worker: Annotated[str, typer.Argument(help="the worker's name")],
    code: Annotated[Path, typer.Argument(help="FILE.py defining 'async def fetch(request, env, ctx)'")],
    host: Annotated[str | None, typer.Option(help="Host header it serves (default its DNS name NAME.edge.test "
                                                  "with the topology's DNS, else NAME.example)")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="binding K=V (env.K), repeatable")] = None,
    kv: Annotated[list[str] | None, typer.Option("--kv", help="KV binding NAME=NAMESPACE (env.NAME)")] = None,
    do: Annotated[list[str] | None, typer.Option("--do", help="Durable Object binding NAME=Class (a class "
                                                 "in FILE.py; env.NAME.get(...))")] = None,
    path_prefix: Annotated[str, typer.Option(help="path prefix it serves under that host")] = "/",
    pop: Annotated[list[str] | None, typer.Option("--pop", help="only this PoP (repeatable)")] = None,
    region: Annotated[list[str] | None, typer.Option("--region", help="only this region (repeatable)")] = None,
    priority: Annotated[str, typer.Option(help="traffic class: P0 (never shed) … P3 (shed first)")] = "P1",
    account: Annotated[str | None, typer.Option(help="the account it is limited as (default: NAME)")] = None,
    name: NameOpt = "main",
    timeout: Annotated[float, typer.Option(help="seconds to wait for every PoP server")] = 30.0,
) -> None:
    """Upload a worker to the control plane as a content-hashed version and deploy it (every PoP, or
    --pop/--region); waits until every PoP server runs it and prints the propagation time.

    Examples: anylab deploy hello examples/hello.py; anylab deploy reg examples/do_register.py --do REG=Register;
    anylab deploy canary examples/hello.py --region eu --var GREETING=hi"""
    try:
        text = code.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {code}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{code}: byte {exc.start} is not UTF-8 text; a worker is a Python file") from None
    bindings: dict[str, Any] = dict(_pairs(var, "--var", "NAME=value"))
    bindings.update({k: {"kv_namespace": v} for k, v in _pairs(kv, "--kv", "BINDING=NAMESPACE")})
    for key, cls in _pairs(do, "--do", "BINDING=Class"):
        if not cls.isidentifier():
            raise UsageError(f"--do {key}={cls}: the class name must be a Python identifier")
        bindings[key] = {"durable_object": cls}
    topo = topology_of(_running_state_usage(name))
    client = _control_client(topo, name)
    # With DNS the worker's own name in the platform's zone (its deploy puts it there), so a user resolves
    # the name and sends the Host header it serves.
    host = host or (f"{worker}.{topo.dns.zone.rstrip('.')}" if topo.dns else f"{worker}.example")
    upload = {"code": text, "host": host, "path_prefix": path_prefix, "bindings": bindings, "priority": priority,
              **({"account": account} if account else {})}
    done = client.release(worker, upload, pop, region, timeout)
    pops = sorted(k for k, v in done.placement.items() if v == done.version)
    console.print(f"{worker} {done.version} ({'new' if done.new else 'already uploaded'}) → {', '.join(pops)}")
    _print_propagation(done.propagation)
    console.print(f"  try: anylab exec {topo.clients[0].name} --name {name} -- curl -s -H 'Host: {host}' "
                  f"http://{topo.anycast[0].network_address}{path_prefix}"
                  + (f"; anylab dig {host} --from {topo.clients[0].name} --name {name}" if topo.dns else ""))


@app.command()
def rollback(
    worker: Annotated[str, typer.Argument(help="the worker's name")],
    name: NameOpt = "main",
    timeout: Annotated[float, typer.Option(help="seconds to wait for every PoP server")] = 30.0,
) -> None:
    """Put the worker back where it was before its last deploy (not deployed, before the first).

    Example: anylab rollback hello"""
    done = _control_client(topology_of(_running_state_usage(name)), name).roll_back(worker, timeout)
    where = ", ".join(f"{p}={v}" for p, v in sorted(done.placement.items())) or "nowhere (removed)"
    console.print(f"{worker} rolled back: {where}")
    _print_propagation(done.propagation)


@app.command()
def deployments(name: NameOpt = "main", as_json: JsonOpt = False) -> None:
    """Workers, the version each PoP should run, and what every PoP server reports running. With the
    control plane down: what each server serves from its disk."""
    from control_plane.client import ControlPlaneError

    state = _running_state_usage(name)
    topo = topology_of(state)
    try:
        data = _control_client(topo, name).deployments()
    except ControlPlaneError as exc:
        disk = {s.name: _read_json(run_dir_of(name) / s.name / "deployments" / "current.json")
                for s in topo.servers}
        if as_json:
            print(json.dumps({"control_plane": str(exc), "servers": disk}, indent=1))
            return
        console.print(f"[yellow]{exc}[/]\nwhat each PoP server serves from its disk:")
        for server, versions in disk.items():
            console.print(f"  {server}: {', '.join(f'{k} {v}' for k, v in sorted(versions.items())) or '-'}")
        return
    if as_json:
        print(json.dumps(data, indent=1))
        return
    table = Table(title=f"workers in lab '{name}' (generation {data['generation']})")
    for col in ("worker", "PoP", "version", "servers running it", "problems"):
        table.add_column(col)
    for worker, info in data["workers"].items():
        for pop_name, version in sorted(info["placement"].items()):
            servers = data["pops"][pop_name]["servers"]
            running = [s for s in servers if data["servers"].get(s, {}).get("applied", {}).get(worker) == version]
            problems = [f"{s}: {data['servers'][s]['error']}" for s in servers
                        if data["servers"].get(s, {}).get("error")]
            table.add_row(worker, pop_name, version, f"{len(running)}/{len(servers)}", "; ".join(problems))
        if not info["placement"]:
            table.add_row(worker, "-", "-", "-", "not deployed (rolled back)")
    console.print(table)
    stale = [f"{s} ({i['seen_s_ago']:.0f} s ago)" for s, i in data["servers"].items() if i["seen_s_ago"] > 30]
    missing = [s.name for s in topo.servers if s.name not in data["servers"]]
    if stale or missing:
        console.print(f"[yellow]not syncing: {', '.join(stale + missing)}[/]")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def kv_node(state: dict[str, Any], at: str | None) -> str:
    """The node ``--at`` names in the lab of ``state``: a KV master, a PoP server, or a PoP (its first
    server); default the first PoP's first server. Raises UsageError listing what would do."""
    index = state.get("nodes")
    if not isinstance(index, dict):  # a lab brought up before the index existed
        index = node_index(topology_of(state))
    servers: dict[str, list[str]] = index["servers"]
    masters: list[str] = index["kv_masters"]
    if at is None:
        return next(iter(servers.values()))[0]
    if at in masters or any(at in names for names in servers.values()):
        return at
    if at in servers:
        return servers[at][0]
    raise UsageError(f"--at {at}: give a PoP, a PoP server or a KV master "
                     f"({', '.join(list(servers)[:4] + masters)}, …)")


@app.command(name="kv")
def kv_(
    action: Annotated[str, typer.Argument(help="put, get, delete or list")],
    namespace: Annotated[str, typer.Argument(help="the namespace (made on the first put)")],
    key: Annotated[str | None, typer.Argument(help="the key (put, get, delete)")] = None,
    value: Annotated[str | None, typer.Argument(help="the value (put)")] = None,
    at: Annotated[str | None, typer.Option(help="a PoP, PoP server or KV master (default: the first PoP)")] = None,
    ttl: Annotated[float | None, typer.Option(help="put: expiration_ttl in seconds")] = None,
    metadata: Annotated[str | None, typer.Option(help="put: metadata as JSON")] = None,
    prefix: Annotated[str, typer.Option(help="list: key prefix")] = "",
    limit: Annotated[int, typer.Option(help="list: at most this many (≤ 1000)")] = 1000,
    cursor: Annotated[str | None, typer.Option(help="list: go on from here")] = None,
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """Workers KV from the command line, at a PoP (its replica: writes go to the region's master) or at
    a master. 'get' prints the bare value, or nothing and exits 1 when the key is absent.

    Examples: anylab kv put users alice '{"plan": "pro"}' --ttl 60; anylab kv get users alice --at fra;
    anylab kv list users --prefix a --json; anylab kv get users alice --at kv-eu"""
    from kv.client import KvClient
    from kv.store import KvError

    need_key = action in ("put", "get", "delete")
    if action not in ("put", "get", "delete", "list") or (need_key and key is None) or \
            (action == "put" and value is None):  # the request first, the lab after
        raise UsageError("use: anylab kv put NS KEY VALUE | get NS KEY | delete NS KEY | list NS [--prefix P]")
    node = kv_node(_running_state_usage(name), at)
    client = KvClient(run_dir_of(name) / node / "kv.sock")
    try:
        if action == "put":
            assert key is not None and value is not None
            meta = json.loads(metadata) if metadata else None
            reply: Any = client.put(namespace, key, value.encode(), meta, expiration_ttl=ttl)
        elif action == "get":
            assert key is not None
            reply = client.get(namespace, key)
            if reply is None:
                raise typer.Exit(1)
            if not as_json:
                sys.stdout.buffer.write(reply["value"])
                if reply.get("stale"):
                    print(f"(stale: {node}'s copy is behind its master)", file=sys.stderr)
                return
            reply = {**reply, "value": reply["value"].decode(errors="replace")}
        elif action == "delete":
            assert key is not None
            reply = client.delete(namespace, key)
        else:
            reply = client.list(namespace, prefix, limit, cursor)
    except KvError as exc:
        raise (UsageError(str(exc)) if exc.status in (400, 413) else AnylabError(f"{node}: {exc}")) from None
    except ValueError as exc:
        raise UsageError(f"--metadata is not JSON: {exc}") from None
    if as_json:
        print(json.dumps(reply, indent=1))
    elif action == "list":
        for k in reply["keys"]:
            print(k["name"])
        if not reply["list_complete"]:
            print(f"(more: --cursor {reply['cursor']})", file=sys.stderr)
    else:
        state = "committed" if reply.get("committed") else ("accepted, queued" if reply.get("accepted") else "?")
        console.print(f"{action} {namespace}/{key} at {node}: {state}"
                      + (f" (also on {reply['replicated_to']})" if reply.get("replicated_to") else ""))


#: The runbooks ``drill`` runs.
DRILLS = ("region-down",)


@app.command(short_help="Run the runbook for a region failure end to end, timed; write the post-incident report.")
def drill(
    runbook: Annotated[str, typer.Argument(help=f"the runbook: {', '.join(DRILLS)}")],
    region: Annotated[str, typer.Argument(help="the region to lose (not the one holding the control node, "
                                               "monitoring or the backups)")],
    out: Annotated[Path, typer.Option(help="where the report goes (drill-REGION.md and .json)")] = Path("."),
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """Lose REGION (region-loss) and run the design's runbook with no human step: the alert, containment
    (drained from BGP, withdrawn from DNS, deployments halted, status page), recovery (Durable Objects moved,
    KV integrity), restoration (replacement storage restored from the backups, re-added) and the report.

    Examples: anylab drill region-down eu; anylab drill region-down apac --out /tmp/reports"""
    from lab.measure.drill import report, run_drill
    from lab.run.driver import RemoteLab

    if runbook not in DRILLS:
        raise UsageError(f"unknown runbook '{runbook}'; use one of: {', '.join(DRILLS)}")
    if not out.is_dir():
        raise UsageError(f"--out {out}: not a directory; create it first")
    with _progress(f"drill {runbook} {region}"):
        result = run_drill(RemoteLab(name), region, out)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        print(report(result), end="")
        console.print(f"report: {out / f'drill-{region}.md'}, {out / f'drill-{region}.json'}")


@app.command(short_help="A seeded chaos soak: faults keep coming; availability, MTTR, invariants.")
def chaos(
    duration: Annotated[float, typer.Option(help="seconds (10..14400); the soak stops and restores by itself")] = 120.0,
    seed: Annotated[int, typer.Option(help="the schedule's seed: the same seed, the same soak")] = 1,
    day_s: Annotated[float, typer.Option(help="a design day lasts this many seconds of the soak (MTBF scale)")] = 2.0,
    max_overlap: Annotated[int, typer.Option(help="faults active at once, at most (1..10)")] = 2,
    max_regions: Annotated[int, typer.Option(help="regions whose storage or control plane may be impaired at "
                                                  "once (0..3)")] = 1,
    fatal: Annotated[bool, typer.Option(help="draw the design's fatal faults too (catastrophic)")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the schedule and touch nothing")] = False,
    out: Annotated[Path, typer.Option(help="where the report goes (chaos-SEED.md, .json and .png)")] = Path("."),
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """A chaos soak on the running lab: a seeded schedule of every fault class the platform survives
    (Poisson arrivals at each class's design MTBF on a lab day, log-normal repairs, overlaps bounded),
    executed under probes, HTTP users, KV writers and DO clients from every client; then availability per
    client and overall, each lost request charged to a fault, MTTR per class, and the invariants.

    Examples: anylab chaos --dry-run --seed 7; anylab chaos --duration 600 --seed 7 --out /tmp"""
    from lab.measure.chaos import ChaosSpec, plot, report, run_soak, schedule, schedule_table
    from lab.run.driver import RemoteLab
    from lab.run.rundir import topology_of

    spec = ChaosSpec(duration, seed, day_s, max_overlap, max_regions, fatal)
    spec.check()
    if not out.is_dir():
        raise UsageError(f"--out {out}: not a directory; create it first")
    state = _running_state_usage(name)
    if dry_run:
        planned = schedule(topology_of(state), spec)
        if as_json:
            print(json.dumps([asdict(p) for p in planned], indent=1))
        else:
            print(schedule_table(planned), end="")
        return
    with _progress(f"chaos soak, {duration:.0f} s, seed {seed}"):
        result = run_soak(RemoteLab(name), spec)
    (out / f"chaos-{seed}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / f"chaos-{seed}.md").write_text(report(result))
    plot(result, out / f"chaos-{seed}.png")
    if as_json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(report(result), end="")
        console.print(f"report: {out / f'chaos-{seed}.md'}, .json, .png")


@app.command(name="restore-backup", short_help="Restore the platform's data from its backups as of a time.")
def restore_backup(
    what: Annotated[str, typer.Argument(help=f"what to restore: {', '.join(RESTORABLE)}")],
    at: Annotated[float | None, typer.Option(help="as of this CLOCK_MONOTONIC time (s; what 'anylab fail' "
                                                  "prints); default: now")] = None,
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """Rebuild WHAT as the backup store knew it at --at (its last verified snapshot by then, plus the WAL
    after it) and write it back: kv into every KV master (last writer wins: newer data on a master
    stays); do, every Durable Object into its owner (objects made after --at are left); control, the
    artifacts into every region's store, then etcd's keys made equal to the state at --at.

    Examples: anylab restore-backup kv; anylab restore-backup control --at 46175.8"""
    from kv.client import KvClient
    from kv.store import KvError

    if what not in RESTORABLE:
        raise UsageError(f"cannot restore '{what}'; use one of: {', '.join(RESTORABLE)}")
    if at is not None and not (at == at and 0 <= at < 1e12):
        raise UsageError(f"--at {at}: give a CLOCK_MONOTONIC time in seconds")
    state = _running_state_usage(name)
    if "backup" not in (state.get("spec") or {}) or not state["spec"].get("backup"):
        raise UsageError(f"lab '{name}' has no backups (its topology has no 'backup' section)")
    client = KvClient(run_dir_of(name) / BACKUP_NODE / BACKUP_SOCKET, timeout=120)
    try:
        reply = client.call("POST", f"/v1/restore/{what}", {"at": at})
    except KvError as exc:
        raise AnylabError(f"restore-backup {what}: {exc}") from None
    if as_json:
        print(json.dumps(reply, indent=1))
        return
    base = f"snapshot {reply['snapshot']}" if reply.get("snapshot") is not None else "no snapshot"
    written = {"kv": lambda r: f"{r['entries']} entries written to {', '.join(r['written'])}",
               "do": lambda r: f"{r['objects']} objects written to their owners",
               "control": lambda r: (f"{r['keys']} keys ({r['changed']} changed), {r['artifacts']} artifacts, "
                                     f"read back {'equal' if r['verified'] else 'DIFFERENT'}")}[what](reply)
    console.print(f"{what} restored as of t={reply['at']:.3f}: {base} + {reply['wal_replayed']} WAL records → "
                  f"{written} (digest {reply['digest'][:12]})")


@app.command(short_help="Bring a PoP to N servers in service (standby servers start or stop).")
def scale(
    pop: Annotated[str, typer.Argument(help="the PoP")],
    servers: Annotated[int, typer.Option(help="servers in service wanted (1 … the PoP's max_servers)")],
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """Bring POP to --servers servers in service: its next standby servers' processes start and announce
    the prefix (ECMP spreads new flows onto them), or its last ones withdraw and stop. Prints how long
    until the processes were ready, the sessions up and the upstream routers' FIB had them."""
    state = _running_state_usage(name)
    result = control.call(run_dir_of(name), "scale", timeout=120.0, pop=pop, servers=servers)
    result.pop("ok", None)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    if not result["added"] and not result["removed"]:
        console.print(f"{pop}: already {len(result['servers'])} server(s) in service")
        return
    what = (f"added {', '.join(result['added'])}" if result["added"] else f"removed {', '.join(result['removed'])}")
    steps = [f"processes {result['processes_s']:.2f} s"]
    if result.get("sessions_s") is not None:
        steps.append(f"sessions up {result['sessions_s']:.2f} s")
    steps.append(f"upstream FIB {result['fib_s']:.2f} s")
    console.print(f"{pop} ({state['topology']}): {what} → in service: {', '.join(result['servers'])}; "
                  + ", ".join(steps))


@app.command(short_help="Fail over to the DR region's standby platform, or stand it down.")
def dr(
    action: Annotated[str, typer.Argument(help="failover or standdown")],
    at: Annotated[float | None, typer.Option(help="failover: restore as of this CLOCK_MONOTONIC time (s); "
                                                  "default: now")] = None,
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """failover: bring the DR region's standby platform up (backup.dr_servers) — its control plane and KV
    master started, the DR copy's control-plane state, artifacts and KV data restored into them as of
    --at, its PoP servers started and announcing the anycast prefix to the DR router. standdown: its
    servers withdraw and stop, then its services.

    Examples: anylab fail catastrophic global && anylab dr failover; anylab dr standdown"""
    if action not in ("failover", "standdown"):
        raise UsageError(f"dr: unknown action '{action}'; use failover or standdown")
    if at is not None and (action != "failover" or not (at == at and 0 <= at < 1e12)):
        raise UsageError(f"--at {at}: give a CLOCK_MONOTONIC time in seconds, with failover only")
    state = _running_state_usage(name)
    if not ((state.get("spec") or {}).get("backup") or {}).get("dr_servers"):
        raise UsageError(f"lab '{name}' has no standby platform in a DR region (its topology's backup.dr_servers)")
    result = control.call(run_dir_of(name), "dr", timeout=240.0, action=action, at=at)
    result.pop("ok", None)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    if action == "standdown":
        console.print(f"DR site stood down in {result['s']:.2f} s: {', '.join(result['stopped'])} stopped")
        return
    r = result["restored"]
    console.print(f"DR site up as of t={r['at']:.3f} (the copy {r['copy_age_s']} s old): services "
                  f"{result['services_s']:.2f} s, restored {result['restored_s']:.2f} s (control "
                  f"{r['control']['keys']} keys, {r['control']['artifacts']} artifacts; KV {r['kv']['entries']} "
                  f"entries), servers {result['servers_s']:.2f} s, sessions up {result['sessions_s']:.2f} s")


@app.command(short_help="Load a PoP past its capacity with a priority mix: shed, spilled, served.")
def overload(
    pop: Annotated[str, typer.Argument(help="the PoP to overload (its catchment's clients send the load)")],
    multiple: Annotated[float, typer.Option(help="the load as a multiple of the PoP's capacity (0.1..10)")] = 2.0,
    duration: Annotated[float, typer.Option(help="seconds (1..120); the load stops by itself")] = 15.0,
    mix: Annotated[str, typer.Option(help="shares per class, e.g. P0=0.1,P1=0.4,P2=0.3,P3=0.2")] = "",
    as_json: JsonOpt = False,
    name: NameOpt = "main",
) -> None:
    """A priority mix at a multiple of POP's capacity (settings.server_capacity_rps × its servers) from
    the clients it serves: per class offered, served, shed, spilled to other PoPs, p99 — and each
    server's level and counters afterwards."""
    from rich.table import Table

    from lab.load.overload import deploy_classes
    from lab.load.overload import overload as run_overload
    from lab.load.priority_load import parse_mix
    from lab.run.driver import RemoteLab

    if not (0.1 <= multiple <= 10 and 1 <= duration <= 120):
        raise UsageError("--multiple 0.1..10, --duration 1..120 s")
    try:
        shares = parse_mix(mix) if mix else None
    except ValueError as exc:
        raise UsageError(f"--mix: {exc}") from None
    lab = RemoteLab(name)
    if pop not in {p.name for p in lab.topo.pops}:
        raise UsageError(f"no PoP named {pop!r}; the lab has {', '.join(p.name for p in lab.topo.pops)}")
    with _progress(f"overload: {multiple:g}× {pop}'s capacity for {duration:g} s"):
        deploy_classes(lab)
        result = run_overload(lab, pop, multiple, duration, shares)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    table = Table("class", "offered", "served", "shed", "failed", "spilled", "p99 ms",
                  title=f"{pop} at {multiple:g}× its capacity ({result['rate']:.0f} req/s for {duration:g} s) "
                        f"from {', '.join(result['clients'])}")
    for cls, v in result["classes"].items():
        table.add_row(cls, str(v["offered"]), str(v["served"]), str(v["shed"]), str(v["failed"]), str(v["spilled"]),
                      "-" if v["p99_ms"] is None else f"{v['p99_ms']:.1f}")
    servers = Table("server", "level", "utilisation", "shed", "spilled out", "spilled in")
    for server, info in result["protect"].items():
        c = info.get("counters") or {}
        if c.get("shed") or c.get("spilled_out") or c.get("spilled_in"):
            servers.add_row(server, f"L{info.get('level')}", f"{info.get('utilisation') or 0:.0%}", str(c.get("shed")),
                            str(c.get("spilled_out")), str(c.get("spilled_in")))
    console.print(table, f"spilled to other PoPs: {result['spilled_share']:.0%} of what was served", servers)


@app.command(name="do", short_help="Durable Objects: where each object lives, and the failover nemesis.")
def do_(
    action: Annotated[str, typer.Argument(help="list, where, or nemesis")],
    namespace: Annotated[str | None, typer.Argument(metavar="[SCRIPT/CLASS]",
                                                    help="where: the object's class, e.g. reg/Register")] = None,
    object_name: Annotated[str | None, typer.Argument(metavar="NAME", help="where: the object's name "
                                                      "(id_from_name)")] = None,
    as_json: JsonOpt = False,
    failovers: Annotated[int, typer.Option(help="nemesis: how many failovers (1..100)")] = 3,
    scenario: Annotated[list[str] | None, typer.Option("--scenario", help="nemesis: region-down, do-crash, "
                                                       "do-cut, do-host-wipe (repeatable; default the first three "
                                                       "in turn)")] = None,
    out: Annotated[Path | None, typer.Option(help="nemesis: write the whole result as JSON here")] = None,
    name: NameOpt = "main",
) -> None:
    """Durable Objects: 'list' every region (live, lease) and object (owner, epoch, backup); 'where
    SCRIPT/Class NAME' one object, with its owner's sequence number and shipping lag; 'nemesis': the
    example register worker under load from every client while the owner region fails again and again
    (phases of every failover, linearizability of the whole history, acknowledged writes lost)."""
    from rich.table import Table

    from durable import client as do_client

    if action not in ("list", "where", "nemesis") or (action == "where" and (namespace is None or object_name is None)):
        raise UsageError("use: anylab do list | anylab do where SCRIPT/Class NAME | anylab do nemesis "
                         "[--failovers N] [--scenario S]…")  # the request first, the lab after
    topo = topology_of(_running_state_usage(name))
    control_dir = run_dir_of(name) / topo.control.name
    if action == "nemesis":
        from lab.load.do_nemesis import SCENARIOS, Nemesis, NemesisSpec, report
        from lab.run.driver import RemoteLab

        try:
            spec = NemesisSpec(failovers=failovers, scenarios=tuple(scenario or SCENARIOS))
            spec.check()
        except AnylabError as exc:
            raise UsageError(str(exc)) from None
        with _progress(f"do nemesis: {spec.failovers} failover(s) of {', '.join(spec.scenarios)}"):
            result = Nemesis(RemoteLab(name), spec).run()
        if out is not None:
            out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1) if as_json else report(result))
        if not result["linearizable"] or result["acked_lost"]:
            raise typer.Exit(1)
        return
    listing = do_client.directory(control_dir)
    if action == "list":
        if as_json:
            print(json.dumps(listing, indent=1))
            return
        regions = Table("region", "live", "last renewal", title=f"DO regions (lease {listing['lease_s']} s)")
        for r, info in sorted(listing["regions"].items()):
            regions.add_row(r, "yes" if info["live"] else "DOWN", f"{info['last_renewal_s']:.2f} s ago")
        objects = Table("object", "owner", "epoch", "backup", "seq", title=f"{len(listing['objects'])} object(s)")
        for key, o in listing["objects"].items():
            objects.add_row(key, o["owner"], str(o["epoch"]), o["backup"] or "-", str(o.get("seq", "?")))
        console.print(regions, objects)
        return
    assert namespace is not None and object_name is not None  # checked above
    try:
        key = do_client.key_of(namespace, object_name)
    except AnylabError as exc:
        raise UsageError(str(exc)) from None
    placed = listing["objects"].get(key)
    if placed is None:
        raise UsageError(f"{namespace} {object_name!r} ({key}) has not been called yet: it has no owner")
    owner = do_client.host(run_dir_of(name) / topo.kv_master_of(placed["owner"]).name)
    detail = owner["objects"].get(key, {})
    reply = {"key": key, "owner": placed["owner"], "epoch": placed["epoch"], "backup": placed["backup"],
             "seq": detail.get("seq"), "backup_seeded": detail.get("seeded"), "mode": owner["mode"],
             "ship_lag_s": owner["ship_lag_s"], "owner_lease_ok": owner["lease_ok"]}
    if as_json:
        print(json.dumps(reply, indent=1))
        return
    lag = reply["ship_lag_s"]
    console.print(f"{key}: owner {reply['owner']} (epoch {reply['epoch']}, seq {reply['seq']}), backup "
                  f"{reply['backup'] or 'none'}; {reply['mode']} shipping, lag p50 "
                  f"{_ms(lag['p50'])} / max {_ms(lag['max'])}")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _running_state_usage(name: str) -> dict[str, Any]:
    state = read_state(name)
    if state is None or state.get("phase") != "up":
        raise UsageError(f"no lab named '{name}' is up (labs: {', '.join(lab_names()) or 'none'}); "
                         "'anylab up' starts one")
    return state


@app.command(name="ls")
def ls(as_json: JsonOpt = False) -> None:
    """The labs of this run root: name, phase, topology, namespaces, whether their controller is alive.

    Examples: anylab ls; anylab ls --json"""
    rows: list[dict[str, Any]] = []
    for lab in lab_names():
        state = read_state(lab) or {}
        rows.append({"name": lab, "phase": state.get("phase"), "topology": state.get("topology"),
                     "namespaces": len(netns.names(netns_prefix(lab))), "controller_alive": controller_alive(state)})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        console.print(f"no labs in {RUN_ROOT} ('anylab up' starts one)")
        return
    table = Table(title=f"labs in {RUN_ROOT}")
    for col in ("name", "phase", "topology", "namespaces", "controller"):
        table.add_column(col)
    for r in rows:
        gone = f"[red]gone[/] ('anylab down --name {r['name']}')"
        table.add_row(str(r["name"]), str(r["phase"]), str(r["topology"] or "-"), str(r["namespaces"]),
                      "alive" if r["controller_alive"] else gone)
    console.print(table)


@app.command()
def down(
    name: NameOpt = "main",
    all_: Annotated[bool, typer.Option("--all", help="every lab, and whatever crashed labs left", metavar="")] = False,
) -> None:
    """Stop a lab: its processes (by PID), namespaces and run files.

    Examples: anylab down; anylab down --name t1; anylab down --all (every lab of this run root)"""
    left: list[str] = []
    if all_:
        errors, left = cleanup_all()
        names = "every lab of this run root"
    else:
        if (read_state(name) is None and not (RUN_ROOT / f"{name}.controller.log").exists()
                and not netns.names(netns_prefix(name))):
            console.print(f"no lab named '{name}' is up (labs: {', '.join(lab_names()) or 'none'})")
            return
        errors = cleanup(name)
        names = f"lab '{name}'"
    if errors:
        raise AnylabError("teardown finished with errors: " + "; ".join(errors))
    console.print(f"{names}: down, nothing left behind")
    if left:
        shown = ", ".join(left[:5]) + (" …" if len(left) > 5 else "")
        console.print(f"left alone, no lab of {RUN_ROOT} owns them: {len(left)} namespace{'s' * (len(left) != 1)} "
                      f"({shown}); 'anylab down --name NAME' removes lab NAME's")


@app.command(short_help="The demo: up, three failures measured per client and restored, down.")
def demo(
    topology: Annotated[Path, typer.Argument()] = DEFAULT_TOPOLOGY,
    name: NameOpt = "demo",
    plot_dir: Annotated[Path | None, typer.Option(help="write the measured timelines (PNG) here")] = None,
) -> None:
    """Up global.yaml; withdraw the busiest PoP, crash its service, silence its servers — each measured
    per client and restored; down."""
    from lab.cli.demo import run_demo

    run_demo(topology, name, console, plot_dir)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(ctx: typer.Context) -> None:
    """ruff, mypy, the import contract (lint-imports), then the whole test suite (extra arguments go to
    pytest)."""
    py = sys.executable
    steps = [[py, "-m", "ruff", "check", "."], [py, "-m", "mypy", "."],
             [str(Path(py).with_name("lint-imports")), "--no-cache"],
             [py, "-m", "pytest", "-q", "-ra", "tests", *ctx.args]]
    for argv in steps:
        shown = argv[2:] if argv[0] == py else [Path(argv[0]).name, *argv[1:]]
        console.print(f"[bold]$ {' '.join(shown)}[/]")
        res = subprocess.run(argv, cwd=PROJECT, check=False)
        if res.returncode != 0:
            raise typer.Exit(res.returncode)


def _version() -> str:
    import importlib.metadata  # 30-40 ms: only for --version

    try:
        return importlib.metadata.version("anylab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


#: --debug, as the option set it (a list: set from the callback, read in main).
_debug = [False]


def _print_version(value: bool) -> None:
    if value:
        console.print(f"anylab {_version()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", is_flag=True, is_eager=True, callback=_print_version,
                                          help="print anylab's version and exit", metavar="")] = False,
    debug: Annotated[bool, typer.Option("--debug", is_flag=True,
                                        help="on an unexpected error, print its traceback", metavar="")] = False,
) -> None:
    """anylab: an anycast and BGP failover lab in network namespaces."""
    _debug[0] = debug


def _crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error where the operator can find it (the run root, else the
    temporary directory); returns the path. Raises OSError when neither can be written."""
    text = "".join(traceback.format_exception(exc))
    for directory in (RUN_ROOT, Path(tempfile.gettempdir())):
        path = directory / f"cli-error-{os.getpid()}.log"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:
            continue
    raise OSError("no directory to write the traceback to")


def _bare_flags(command: Any) -> None:
    """Show every flag of ``command`` and its subcommands without a ``<bool>`` type: the ones typer adds
    (--help, --install-completion, --show-completion) as the lab's own already are."""
    help_option = command.get_help_option(command.context_class(command))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        if sub.short_help is None and sub.help:  # the command list shows one sentence of each
            first = " ".join(sub.help.split("\n\n")[0].split())
            sub.short_help = re.split(r"(?<=\.)\s", first, maxsplit=1)[0]
        _bare_flags(sub)


def main() -> None:
    """Entry point: exit 2 for bad input (nothing started), 1 for lab errors and for unexpected ones —
    one line each; an unexpected error's traceback goes to a log file (``--debug`` prints it)."""
    command = typer.main.get_command(app)
    _bare_flags(command)
    try:
        # standalone_mode=False: click hands its usage errors here, to be one line like every other.
        code = command.main(args=sys.argv[1:], prog_name="anylab", standalone_mode=False)
    except typer.TyperException as exc:  # typer's own click: a bad flag or argument, checked before anything runs
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as --help would print it
            print(exc.format_message())
            sys.exit(0)
        if isinstance(exc, typer.Abort):
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else "anylab"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"error: {path}: {message} (see '{path} --help')", file=sys.stderr)
        sys.exit(2)
    except (TopologyError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # plain: one line, never wrapped
        sys.exit(2)
    except AnylabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug, or something the lab did not expect: one line, the rest in a file
        if _debug[0]:
            traceback.print_exception(exc)
        try:
            where = f"the traceback is in {_crash_log(exc)}"
        except OSError:
            where = "run again with --debug for the traceback"
        print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} "
              f"({where})", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    main()
