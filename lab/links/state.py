"""A running lab's links: their shapes now (the topology's, or what ``anylab link`` set since, kept in the
run directory's ``links.json``), put into each namespace's kernel and relay, and calibrated."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.clock import monotonic
from core.errors import AnylabError
from lab.links import apply
from lab.links.calibrate import calibrate, worst
from lab.links.daemon import LinkRelay
from lab.links.plan import (
    Link,
    effective,
    find,
    kernel_of,
    links_of,
    relay_shape,
    shape_from_json,
    shape_json,
    with_changes,
)
from model.topology import Shape, Topology

OVERRIDES_FILE = "links.json"
CALIBRATION_FILE = "links-calibration.json"


class Links:
    """The links of one lab. ``netns`` maps node → namespace file; ``run_dir`` holds the two files."""

    def __init__(self, topo: Topology, netns: Mapping[str, str], run_dir: Path) -> None:
        self.topo = topo
        self.netns = netns
        self.run_dir = run_dir
        self.all = links_of(topo)

    def overrides(self) -> dict[str, Shape | None]:
        """What ``anylab link`` changed (link key → shape, None: made bare)."""
        try:
            data = json.loads((self.run_dir / OVERRIDES_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AnylabError(f"{self.run_dir / OVERRIDES_FILE} is unreadable: {exc}") from exc
        return {k: shape_from_json(v) for k, v in data.items()}

    def shapes(self) -> dict[str, Shape | None]:
        return effective(self.all, self.overrides())

    def shaped(self) -> list[Link]:
        shapes = self.shapes()
        return [lk for lk in self.all if shapes[lk.key] is not None]

    def relay_nodes(self) -> set[str]:
        """Routers whose relay is needed by the shapes now."""
        shapes = self.shapes()
        return {lk.owner.node for lk in self.all if (s := shapes[lk.key]) is not None and s.relayed()}

    def apply_kernel(self, nodes: set[str] | None = None, *, relays: bool = True,
                     before: Mapping[str, Shape | None] | None = None) -> None:
        """Load every (or each of ``nodes``') namespace's loss rules, rate limits and (unless not
        ``relays``: none listens yet) the rules sending packets to the relays, for the shapes now; given the
        shapes ``before``, only what differs from the kernel they gave (a change on a loaded box costs
        one or two commands, not one per interface). Raises AnylabError."""
        overrides = self.overrides()  # read once: the file, not once per link
        shapes = effective(self.all, overrides)
        touched = {end.node for lk in self.all for end in (lk.owner, lk.far)
                   if shapes[lk.key] is not None or lk.key in overrides}
        for node in sorted(touched if nodes is None else nodes):
            k = kernel_of(node, self.all, shapes)
            old = kernel_of(node, self.all, before) if before is not None else None
            ns = self.netns[node]
            if old is None or old.losses != k.losses:
                apply.load_loss(ns, k.losses)
            for intf, (mbit, queue) in k.bandwidth.items():
                if old is None or old.bandwidth.get(intf) != (mbit, queue):
                    apply.load_bandwidth(ns, intf, mbit, queue)
            if relays and (k.relayed or any(lk.owner.node == node for lk in self.all if lk.key in overrides)) \
                    and (old is None or old.relayed != k.relayed):
                apply.load_queues(ns, k.relayed)

    def change(self, a: str, b: str, changes: Mapping[str, Any],
               relay_of: Callable[[str], LinkRelay], calibrate: bool = True) -> dict[str, Any]:
        """Change the link between ``a`` and ``b`` (Shape fields → values) on the running lab: the relay
        first (a queue exists before packets are sent to it), then both ends' kernels; then calibrate
        it (unless not ``calibrate``: 2 s of datagrams). Returns the link, its shape before and after, the
        time of the change and the calibration. Raises UsageError (no such link, impossible shape) or
        AnylabError."""
        link = find(self.all, a, b)
        shapes_before = self.shapes()
        before = shapes_before[link.key]
        after = with_changes(before, changes)
        if after is not None and after.relayed():
            relay = relay_of(link.owner.node)
            out, into = link.queues
            for q, label in ((out, "out"), (into, "in")):
                relay.request({"op": "add", "queue": q, "label": f"{link.key} {label}", "shape": relay_shape(after)})
        overrides = self.overrides()
        overrides[link.key] = after
        tmp = self.run_dir / (OVERRIDES_FILE + ".tmp")
        tmp.write_text(json.dumps({k: shape_json(v) for k, v in overrides.items()}, indent=1))
        tmp.replace(self.run_dir / OVERRIDES_FILE)
        self.apply_kernel({link.owner.node, link.far.node}, before=shapes_before)
        t = monotonic()
        if before is not None and before.relayed() and (after is None or not after.relayed()):
            relay = relay_of(link.owner.node)
            for q in link.queues:
                relay.request({"op": "set", "queue": q, "shape": relay_shape(None)})
        cal = self.calibrate([link]) if after is not None and calibrate else {}
        return {"link": link.key, "before": shape_json(before), "after": shape_json(after), "t": t,
                "calibration": cal.get(link.key)}

    def calibrate(self, links: list[Link] | None = None, count: int = 200) -> dict[str, Any]:
        """Calibrate ``links`` (default: every shaped link) and merge the result into the run directory's
        calibration file; returns what was measured now."""
        todo = self.shaped() if links is None else links
        if not todo:
            return {}
        got = calibrate(todo, self.shapes(), self.netns, count=count)
        saved = self.calibration()
        saved.update(got)
        tmp = self.run_dir / (CALIBRATION_FILE + ".tmp")
        tmp.write_text(json.dumps(saved, indent=1))
        tmp.replace(self.run_dir / CALIBRATION_FILE)
        return got

    def calibration(self) -> dict[str, Any]:
        return read_calibration(self.run_dir)


def read_calibration(run_dir: Path) -> dict[str, Any]:
    """The calibration a lab stored (empty if none: no shaped links, or not measured yet)."""
    try:
        data: dict[str, Any] = json.loads((run_dir / CALIBRATION_FILE).read_text())
        return data
    except (OSError, ValueError):
        return {}


def calibration_summary(run_dir: Path) -> dict[str, Any]:
    """What every result carries: each shaped link's calibration and the worst error."""
    cal = read_calibration(run_dir)
    return {"worst": worst(cal), "links": cal}
