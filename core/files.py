"""Files the lab's processes share with their readers."""

from __future__ import annotations

from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` at once: a reader sees the old content or the new, never a part (the
    temporary file beside it is renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
