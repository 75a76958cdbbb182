"""Host limits: raised to what the topology needs, never lowered, failures reported."""

from __future__ import annotations

from pathlib import Path

from lab.run.hostlimits import neighbour_entries, raise_limits, wanted
from model.generate import stage
from model.load import build_topology


def test_neighbour_thresholds_are_raised_only_when_below(tmp_path: Path) -> None:
    topo = build_topology(stage(3))
    need = wanted(topo)
    assert need["gc_thresh3"] == 4 * neighbour_entries(topo) > 1024  # past a stock Debian's cap
    (tmp_path / "gc_thresh1").write_text("128\n")
    (tmp_path / "gc_thresh2").write_text("512\n")
    (tmp_path / "gc_thresh3").write_text(f"{10 * need['gc_thresh3']}\n")
    notes = raise_limits(topo, neigh=tmp_path)
    assert int((tmp_path / "gc_thresh1").read_text()) == need["gc_thresh1"]
    assert int((tmp_path / "gc_thresh2").read_text()) == need["gc_thresh2"]
    assert int((tmp_path / "gc_thresh3").read_text()) == 10 * need["gc_thresh3"]  # never lowered
    assert [n.split()[1] for n in notes if "neigh" in n] == ["net.ipv4.neigh.default.gc_thresh1",
                                                          "net.ipv4.neigh.default.gc_thresh2"]


def test_what_cannot_be_raised_is_said(tmp_path: Path) -> None:
    notes = raise_limits(build_topology(stage(1)), neigh=tmp_path / "missing")
    assert len([n for n in notes if n.startswith("could not raise net.ipv4.neigh")]) == 3
