"""Tables the command line and the demo both print."""

from __future__ import annotations

from rich.table import Table

from model.topology import Topology


def catchment_table(topo: Topology, observed: dict[str, str | None], predicted: dict[str, str]) -> Table:
    """Client → observed and predicted PoP, marked where they differ."""
    table = Table(title=f"catchment of {topo.anycast[0]} in {topo.name}")
    for col in ("client", "region", "router", "observed PoP", "predicted PoP", ""):
        table.add_column(col)
    for c in topo.clients:
        obs, pred = observed.get(c.name), predicted.get(c.name)
        mark = "[green]ok[/]" if obs == pred else "[red]differs[/]"
        table.add_row(c.name, c.region, c.router, obs or "-", pred or "-", mark)
    return table
