"""Which end of each link does what (pure). Every link has a router at its first end (the resolver adds
router ends first); that end *owns* the link: its relay holds both directions' packets (leaving through
the interface, and arriving on it), so servers, clients and services run no relay of their own. Random
loss and the rate limit act on each end's way out, in its own kernel.

Queue numbers are per namespace: the owner's k-th interface uses 2k (out) and 2k+1 (in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import UsageError
from lab.links.apply import Relayed
from model.topology import Interface, Shape, Topology


@dataclass(frozen=True)
class Link:
    """One link of the lab: its owner end (relay side), its far end, its shape as the topology gives it."""

    owner: Interface
    far: Interface
    index: int  # the owner interface's position among its node's interfaces

    @property
    def key(self) -> str:
        return f"{self.owner.node}:{self.far.node}"

    @property
    def queues(self) -> tuple[int, int]:
        return 2 * self.index, 2 * self.index + 1

    @property
    def shape(self) -> Shape | None:
        return self.owner.shape


def links_of(topo: Topology) -> list[Link]:
    """Every link of the lab, in the topology's order."""
    position: dict[tuple[str, str], int] = {}
    for node_intfs in _interfaces_by_node(topo).values():
        for k, intf in enumerate(node_intfs):
            position[(intf.node, intf.name)] = k
    return [Link(a, b, position[(a.node, a.name)]) for a, b in topo.links()]


def _interfaces_by_node(topo: Topology) -> dict[str, list[Interface]]:
    by: dict[str, list[Interface]] = {}
    for intf in topo.interfaces():
        by.setdefault(intf.node, []).append(intf)
    return by


def find(links: Iterable[Link], a: str, b: str) -> Link:
    """The link between nodes ``a`` and ``b`` (either order); raises UsageError naming a's links."""
    links = list(links)
    for link in links:
        if {link.owner.node, link.far.node} == {a, b}:
            return link
    mine = sorted({(lk.far.node if lk.owner.node == a else lk.owner.node) for lk in links if a in lk.key.split(":")})
    hint = f"{a}'s links go to: {', '.join(mine)}" if mine else f"'{a}' is not a node of this lab"
    raise UsageError(f"no link between '{a}' and '{b}'; {hint}")


def effective(links: Iterable[Link], overrides: Mapping[str, Shape | None]) -> dict[str, Shape | None]:
    """Link key → its shape now: the topology's unless ``anylab link`` changed it (``overrides``)."""
    return {lk.key: overrides.get(lk.key, lk.shape) for lk in links}


def relay_shape(shape: Shape | None) -> dict[str, Any]:
    """The relay's view of a shape (:class:`lab.links.relay.DirShape` fields): delay, jitter, and the
    loss only when bursty (independent loss is the kernel's)."""
    if shape is None or not shape.relayed():
        return {"delay_s": 0.0, "jitter_s": 0.0, "distribution": "uniform", "loss": 0.0, "burst": 1.0}
    bursty = shape.loss_burst > 1.0
    return {"delay_s": shape.delay_ms / 1e3, "jitter_s": shape.jitter_ms / 1e3,
            "distribution": shape.jitter_distribution, "loss": shape.loss_pct / 100 if bursty else 0.0,
            "burst": shape.loss_burst if bursty else 1.0}


@dataclass(frozen=True)
class NodeKernel:
    """One namespace's share: loss per interface (fraction), rate limits, relayed directions."""

    losses: dict[str, float]
    bandwidth: dict[str, tuple[float | None, int | None]]
    relayed: list[Relayed]


def kernel_of(node: str, links: Iterable[Link], shapes: Mapping[str, Shape | None]) -> NodeKernel:
    """What ``node``'s kernel does for its links given their shapes now (every link of the node is
    listed in ``bandwidth``, None for no limit, so a removed limit is cleared)."""
    losses: dict[str, float] = {}
    bandwidth: dict[str, tuple[float | None, int | None]] = {}
    relayed: list[Relayed] = []
    for lk in links:
        for end in (lk.owner, lk.far):
            if end.node != node:
                continue
            shape = shapes.get(lk.key)
            if shape is not None and shape.loss_pct > 0 and shape.loss_burst == 1.0:
                losses[end.name] = shape.loss_pct / 100
            bandwidth[end.name] = (shape.bandwidth_mbit, shape.queue) if shape is not None else (None, None)
            if end is lk.owner and shape is not None and shape.relayed():
                relayed.append(Relayed(end.name, *lk.queues))
    return NodeKernel(losses, bandwidth, relayed)


def relay_config(node: str, links: Iterable[Link], shapes: Mapping[str, Shape | None], seed: int) -> dict[str, Any]:
    """The relay config of router ``node``: a queue pair for each link it owns that is relayed now."""
    queues = []
    for lk in links:
        shape = shapes.get(lk.key)
        if lk.owner.node == node and shape is not None and shape.relayed():
            out, into = lk.queues
            queues += [{"queue": out, "label": f"{lk.key} out", "shape": relay_shape(shape)},
                       {"queue": into, "label": f"{lk.key} in", "shape": relay_shape(shape)}]
    return {"seed": seed, "queues": queues}


def with_changes(shape: Shape | None, changes: Mapping[str, Any]) -> Shape | None:
    """``shape`` (None: bare) with ``changes`` (Shape field → value; a None value clears a rate limit);
    None if the result is bare. Raises UsageError on an impossible result."""
    new = dataclasses.replace(shape or Shape(), **changes, from_distance=False if "delay_ms" in changes
                              else (shape.from_distance if shape else False))
    if new.loss_burst > 1.0 and new.loss_pct == 0.0:
        raise UsageError("--loss-burst needs a loss: give --loss too")
    if new.queue is not None and new.bandwidth_mbit is None:
        raise UsageError("--queue is the rate limit's queue: give --bandwidth too")
    return None if new.bare() else new


def shape_json(shape: Shape | None) -> dict[str, Any] | None:
    return None if shape is None else dataclasses.asdict(shape)


def shape_from_json(data: dict[str, Any] | None) -> Shape | None:
    """A shape written by :func:`shape_json` (a run directory's own file); raises TypeError if it is not one."""
    return None if data is None else Shape(**data)
