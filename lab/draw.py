"""Pictures of a topology: Mermaid text (.mmd) or a matplotlib drawing (.png, .svg)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from lab.errors import LabError
from lab.graph import mermaid, to_graph
from lab.model import Topology

_COLORS = {"router": "#4a78c2", "server": "#d9822b", "client": "#3c9d5d"}


def draw(topo: Topology, output: Path) -> None:
    """Write ``output``; the suffix picks the format. Raises LabError for an unknown suffix."""
    suffix = output.suffix.lower()
    if suffix == ".mmd":
        output.write_text(mermaid(topo))
        return
    if suffix not in (".png", ".svg"):
        raise LabError(f"cannot draw to '{output}': use a .png, .svg or .mmd file name")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = to_graph(topo)
    pos = nx.spring_layout(g, seed=1)  # deterministic; kamada_kawai would need scipy
    fig, ax = plt.subplots(figsize=(12, 9))
    colors = [_COLORS[g.nodes[n]["kind"]] for n in g.nodes]
    nx.draw_networkx(g, pos, ax=ax, node_color=colors, node_size=600, font_size=7, edge_color="#999999")
    ax.set_title(f"{topo.name}: routers (blue), PoP servers (orange), clients (green)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
