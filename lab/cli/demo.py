"""``anylab demo``: the design's anycast failover, run and measured on real BGP daemons."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.clock import monotonic
from lab.cli.tables import catchment_table
from lab.record.analysis import ClientResult
from lab.run.lab import Lab
from model.graph import busiest_pop


def shift_table(title: str, shifts: dict[str, ClientResult]) -> Table:
    table = Table(title=title)
    for col in ("client", "from", "to", "shift (ms)", "gap (ms)", "lost probes", "probes sent"):
        table.add_column(col)
    for client, s in sorted(shifts.items()):
        table.add_row(client, s.from_pop or "-", s.to_pop or "-",
                      f"{s.shift_s * 1000:.1f}" if s.shift_s is not None else "did not move",
                      f"{s.gap_s * 1000:.1f}" if s.gap_s is not None else "-", str(s.lost), str(s.sent))
    return table


HELLO = "async def fetch(request, env, ctx):\n    return env.GREETING + '\\n'\n"


def http_get(lab: Lab, client: str, host: str) -> str:
    """One GET to the anycast address from ``client``'s namespace: status, serving server and body."""
    import subprocess

    from lab.load.client_http import client_request

    try:
        status, server, body = client_request(lab, client, host, timeout=5)
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or "").strip().splitlines()
        return lines[-1] if lines else "no answer"
    return f"{status} {server} {body!r}"


def run_demo(topology: Path, name: str, console: Console, plot_dir: Path | None = None) -> None:
    """Up, catchment, withdraw the busiest PoP and back; then its service crashes and its servers go
    silent, each measured and restored; two Durable Object failovers under load, checked; down.
    Timelines go to ``plot_dir`` if given. Raises AnylabError."""
    from lab.measure import report
    from lab.measure.runner import HttpSpec, measure

    t0 = monotonic()
    lab = Lab.from_file(topology, name)
    with console.status(f"bringing up {lab.topo.name} ({len(lab.topo.node_names())} nodes)…"):
        lab.up()
    try:
        console.print(f"up and converged in {lab.timings['converged']:.1f} s "
                      f"(probes every {1000 / lab.topo.spec.settings.probe_rate_hz:.1f} ms per client)")
        observed = lab.catchment()
        console.print(catchment_table(lab.topo, observed, lab.predicted()))
        pop = busiest_pop({c: p or "" for c, p in observed.items()})
        clients = [c for c, p in observed.items() if p == pop]
        console.print(f"withdrawing {lab.topo.anycast[0]} at [bold]{pop}[/] (serves {', '.join(clients)}) "
                      "through its ExaBGP API…")
        t_fault = lab.withdraw(pop)
        shifts = lab.wait_shifted(clients, t_fault)
        console.print(shift_table(f"{pop} withdrawn: time from the withdrawal to the first answer "
                                  "from another PoP", shifts))
        t_back = lab.announce(pop)
        back = lab.wait_shifted(clients, t_back)
        console.print(shift_table(f"{pop} announced again", back))
        deployed = lab.deploy("hello", "hello.example", HELLO, {"GREETING": "hello from the edge"})
        worst = max(deployed.propagation, key=lambda s: deployed.propagation[s])
        console.print(f"worker 'hello' {deployed.version} deployed through the control plane to "
                      f"{len(deployed.propagation)} PoP servers in {deployed.propagation[worst] * 1000:.0f} ms "
                      f"(slowest {worst}); from {clients[0]}: {http_get(lab, clients[0], 'hello.example')}")
        for scenario, what in (("service-crash", "its service crashes: the health agents withdraw"),
                               ("server-silent", "its servers go silent: BFD at the upstream routers")):
            console.print(f"[bold]{pop}[/]: {what} (profile {lab.topo.spec.settings.profile.name}), "
                          "with HTTP users on keep-alive and on new connections…")
            result, timeline = measure(lab, scenario, pop, http=HttpSpec(rate=10, connections=1))
            console.print(report.table(result))
            http_table = report.http_table(result)
            if http_table is not None:
                console.print(http_table)
            if plot_dir is not None and timeline is not None:
                out = plot_dir / f"anylab-demo-{scenario}.png"
                report.plot(result, timeline, out)
                console.print(f"timeline: {out}")
        from lab.load.do_nemesis import Nemesis, NemesisSpec
        from lab.load.do_nemesis import report as do_report

        console.print("Durable Objects: registers and counters under load from every client while the owning "
                      "region's DO host crashes, then is cut off from the directory…")
        console.print(do_report(Nemesis(lab, NemesisSpec(failovers=2, scenarios=("do-crash", "do-cut"))).run()))
    finally:
        with console.status("tearing down…"):
            lab.down()
    console.print(f"demo done in {monotonic() - t0:.1f} s; nothing left running")
