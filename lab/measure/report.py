"""A measurement as a table (rich) and as a timeline picture (matplotlib)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.table import Table

from lab.measure.runner import Timeline


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def table(result: dict[str, Any]) -> Table:
    """One row per run and client: detection, first/last FIB change, shift, gap, lost, PoPs."""
    t = Table(title=f"{result['scenario']} on {result['target']} — {result['topology']}, profile "
                    f"{result['profile']}, routers {result['router_kind']}, probes "
                    f"{result['summary']['achieved_probe_rate_hz']:.0f} Hz (ms)")
    for col in ("run", "detect", "1st FIB", "last FIB", "client", "from → to", "shift", "gap", "lost", "flips"):
        t.add_column(col, justify="right" if col not in ("client", "from → to") else "left")
    for r in result["runs"]:
        for i, (name, c) in enumerate(r["clients"].items()):
            head = [str(r["run"]), _ms(r["detect_s"]), _ms(r["first_fib_s"]), _ms(r["network_convergence_s"])]
            t.add_row(*(head if i == 0 else [""] * 4), name, f"{c['from_server']} → {c['to_server'] or '-'}",
                      _ms(c["shift_s"]), _ms(c["gap_s"]), str(c["lost"]), str(c["flips"]))
    s, summary = result["summary"]["shift_s"], result["summary"]
    rc = summary.get("router_convergence_s", {})
    t.caption = (f"shift p50 {_ms(s['p50'])} / p90 {_ms(s['p90'])} / max {_ms(s['max'])} ms "
                 f"over {s['n']} client moves; routers' last FIB change p50 {_ms(rc.get('p50'))} / p90 "
                 f"{_ms(rc.get('p90'))} / max {_ms(rc.get('max'))} ms over {summary.get('routers_changed', 0)} "
                 f"routers; path changes at one router ≤ {summary.get('path_changes_max', 0)}; UPDATEs ≤ "
                 f"{summary.get('peak_updates_per_s', 0)}/s; catchment restored: {result['catchment_restored']}")
    return t


#: The columns of :func:`csv_text`, one row per run and client (times in seconds, empty when none).
CSV_COLUMNS = ("scenario", "target", "topology", "router_kind", "run", "detect_s", "first_fib_s",
               "network_convergence_s", "client", "from_server", "to_server", "shift_s", "gap_s", "lost", "flips")


def csv_text(result: dict[str, Any]) -> str:
    """The rows of :func:`table` as CSV (header first), for a spreadsheet or a script."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in result["runs"]:
        for name, c in r["clients"].items():
            writer.writerow({"scenario": result["scenario"], "target": result["target"],
                             "topology": result["topology"], "router_kind": result["router_kind"], "run": r["run"],
                             "detect_s": r["detect_s"], "first_fib_s": r["first_fib_s"],
                             "network_convergence_s": r["network_convergence_s"], "client": name,
                             "from_server": c["from_server"], "to_server": c["to_server"], "shift_s": c["shift_s"],
                             "gap_s": c["gap_s"], "lost": c["lost"], "flips": c["flips"]})
    return out.getvalue()


def http_table(result: dict[str, Any]) -> Table | None:
    """With ``--http``: per run, client and mode, failed requests, errors, broken keep-alive
    connections, outage and latency p50/p99 before/during/after (ms); None without HTTP load."""
    if not any("http" in r for r in result["runs"]):
        return None
    t = Table(title=f"HTTP through the anycast address during {result['scenario']} on {result['target']} "
                    "(ka = keep-alive, nc = new connection per request; latency ms p50/p99)")
    for col in ("run", "client", "mode", "requests", "failed", "errors", "broken conns", "outage",
                "before", "during", "after", "served by (after)"):
        t.add_column(col, justify="left" if col in ("client", "mode", "errors", "served by (after)") else "right")

    def lat(x: dict[str, Any]) -> str:
        return "-" if x["p50"] is None else f"{x['p50']:.1f}/{x['p99']:.1f}"

    for r in result["runs"]:
        for client, modes in r.get("http", {}).items():
            for mode, m in modes.items():
                errors = ", ".join(f"{k} {v}" for k, v in sorted(m["errors"].items())) or "-"
                t.add_row(str(r["run"]), client, mode, str(m["requests"]), str(m["failed"]), errors,
                          str(m["broken_connections"]) if mode == "ka" else "-", _ms(m["outage_s"]),
                          lat(m["latency_ms"]["before"]), lat(m["latency_ms"]["during"]),
                          lat(m["latency_ms"]["after"]), ", ".join(m["servers_after"]) or "-")
    return t


def dns_table(result: dict[str, Any]) -> Table | None:
    """With ``--dns``: per run and client, resolutions and failures before and during the fault, latency
    p50/p99 (ms), and the worst second's failures; None without DNS users."""
    if not any("dns" in r for r in result["runs"]):
        return None
    t = Table(title=f"DNS resolutions through each client's resolvers during {result['scenario']} on "
                    f"{result['target']} (latency ms p50/p99)")
    for col in ("run", "client", "before", "during", "failed", "worst second", "max ms"):
        t.add_column(col, justify="left" if col == "client" else "right")

    def lat(x: dict[str, Any]) -> str:
        return "-" if x["p50_ms"] is None else f"{x['p50_ms']:.1f}/{x['p99_ms']:.1f}"

    for r in result["runs"]:
        for client, d in r.get("dns", {}).items():
            worst = max(d["per_second"], key=lambda x: x["failed"], default=None)
            t.add_row(str(r["run"]), client, lat(d["before"]), lat(d["during"]),
                      f"{d['during']['failed']}/{d['during']['queries']}",
                      "-" if worst is None or not worst["failed"] else f"s{worst['s']}: {worst['failed']}",
                      "-" if d["during"]["max_ms"] is None else f"{d['during']['max_ms']:.0f}")
    return t


def plot(result: dict[str, Any], timeline: Timeline, out: Path) -> None:
    """Each client's serving server over time (lost probes in red), with the fault, the agents'
    decisions and every router's FIB change marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = timeline.t_fault
    clients = list(timeline.probes)
    servers = sorted({p.server for ps in timeline.probes.values() for p in ps if p.server})
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(i) for i in range(10) if i != 3]  # tab10's red is kept for lost probes
    colors = {s: palette[i % len(palette)] for i, s in enumerate(servers)}
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.6 * len(clients)))
    for y, c in enumerate(clients):
        for s in servers:
            xs = [(p.sent - t0) * 1000 for p in timeline.probes[c] if p.server == s]
            if xs:
                ax.scatter(xs, [y] * len(xs), s=4, color=colors[s], label=s if y == 0 or s not in
                           {q.server for q in timeline.probes[clients[0]]} else None)
        lost = [(p.sent - t0) * 1000 for p in timeline.probes[c] if not p.answered]
        if lost:
            ax.scatter(lost, [y] * len(lost), s=6, color="red", marker="x")
    ax.axvline(0, color="black", linewidth=1.5, label="fault")
    for t, label in timeline.decisions:
        ax.axvline((t - t0) * 1000, color="orange", linestyle="--", linewidth=1)
        ax.annotate(label, ((t - t0) * 1000, len(clients) - 0.5), fontsize=6, rotation=90, color="orange")
    for t, router in timeline.fib:
        if t >= t0 - 0.5:
            ax.axvline((t - t0) * 1000, color="gray", linestyle=":", linewidth=0.8)
            ax.annotate(f"FIB {router}", ((t - t0) * 1000, -0.6), fontsize=6, rotation=90, color="gray")
    ax.set_yticks(range(len(clients)), clients)
    ax.set_ylim(-1, len(clients))
    ax.set_xlabel("ms since the fault (CLOCK_MONOTONIC)")
    ax.set_title(f"{result['scenario']} on {result['target']} ({result['profile']}, {result['router_kind']}): "
                 "serving server per probe; red x = lost")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper right", markerscale=3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
