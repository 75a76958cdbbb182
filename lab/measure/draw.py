"""Pictures of a topology: Mermaid text (.mmd) or a matplotlib drawing (.png, .svg)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from core.errors import AnylabError
from model.graph import mermaid, to_graph
from model.topology import Topology

_COLORS = {"router": "#4a78c2", "server": "#d9822b", "client": "#3c9d5d", "control": "#8a5cc2", "kv": "#b05a7a",
           "cp": "#5c3d8a", "origin": "#7a7a7a", "dns": "#c2a84a",
           "mon": "#2b8a8a", "backup": "#5a7a2b"}


def catchment_colors(topo: Topology, catchment: dict[str, str | None]) -> dict[str, str]:
    """Node → colour: each PoP's servers one colour, each client the colour of the PoP serving it."""
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
               "#469990", "#9a6324", "#800000", "#808000"]
    of_pop = {p.name: palette[i % len(palette)] for i, p in enumerate(topo.pops)}
    colors = {r.name: "#999999" for r in topo.routers}
    colors.update({s.name: of_pop[s.pop] for s in topo.servers})
    for c in topo.clients:
        pop = catchment.get(c.name)
        colors[c.name] = of_pop.get(pop, "#cccccc") if pop else "#cccccc"
    return colors


def draw(topo: Topology, output: Path, catchment: dict[str, str | None] | None = None) -> None:
    """Write ``output``; the suffix picks the format. With ``catchment`` (client → PoP) clients are
    coloured like the PoP that serves them. Raises AnylabError for an unknown suffix."""
    suffix = output.suffix.lower()
    by_pop = catchment_colors(topo, catchment) if catchment is not None else {}
    if suffix == ".mmd":
        output.write_text(mermaid(topo) + "".join(f"  style {n} fill:{c}\n" for n, c in by_pop.items()))
        return
    if suffix not in (".png", ".svg"):
        raise AnylabError(f"cannot draw to '{output}': use a .png, .svg or .mmd file name")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = to_graph(topo)
    pos = nx.spring_layout(g, seed=1)  # deterministic; kamada_kawai would need scipy
    fig, ax = plt.subplots(figsize=(12, 9))
    colors = [by_pop.get(n, _COLORS[g.nodes[n]["kind"]]) for n in g.nodes]
    nx.draw_networkx(g, pos, ax=ax, node_color=colors, node_size=600, font_size=7, edge_color="#999999")
    ax.set_title(f"{topo.name}: " + ("clients coloured by the PoP serving them" if catchment is not None
                                      else "routers (blue), PoP servers (orange), clients (green)"))
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
