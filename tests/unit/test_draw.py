"""anylab graph: Mermaid text and pictures."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import AnylabError
from lab.measure.draw import draw
from model.load import load_topology
from tests.conftest import TOPOLOGIES


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".mmd", b"flowchart")])
def test_draw_formats(tmp_path: Path, suffix: str, magic: bytes) -> None:
    out = tmp_path / f"global{suffix}"
    draw(load_topology(TOPOLOGIES / "global.yaml"), out)
    assert out.read_bytes().startswith(magic)


def test_draw_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(AnylabError, match=r"use a \.png, \.svg or \.mmd"):
        draw(load_topology(TOPOLOGIES / "two_pops.yaml"), tmp_path / "x.gif")
