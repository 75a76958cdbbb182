"""Following a rotated JSON-lines file (lab.record.tail) on a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

from lab.record.tail import JsonlTail


def test_lines_are_read_once_across_a_rotation_and_a_missed_one_is_counted(tmp_path: Path) -> None:
    f = tmp_path / "probes.jsonl"
    tail = JsonlTail(f)
    assert tail.read() == []
    with open(f, "a") as out:
        out.write("1\n2\n3")  # 3 not finished yet
    assert tail.read() == ["1", "2"]
    with open(f, "a") as out:
        out.write("\n4\n")
    assert tail.read() == ["3", "4"]
    with open(f, "a") as out:
        out.write("5\n")
    os.replace(f, tmp_path / "probes.jsonl.1")
    f.write_text("6\n")
    with open(f, "a") as out:
        out.write("7\n")
    assert tail.read() == ["5", "6", "7"] and tail.missed_rotations == 0
    assert tail.read() == []
    # Rotated twice between two reads: what the first rotated file held after the offset is gone.
    os.replace(f, tmp_path / "probes.jsonl.1")
    f.write_text("8\n")
    os.replace(f, tmp_path / "probes.jsonl.1")
    f.write_text("9\n")
    assert tail.read() == ["9"] and tail.missed_rotations == 1
