"""Files the lab's processes share with their readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` at once: a reader sees the old content or the new, never a part (the
    temporary file beside it is renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def read_jsonl(path: Path) -> list[Any]:
    """The records of a JSON-lines file another process appends to: none if it is not there yet, and a
    line that does not parse (the writer's torn last line) skipped."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
