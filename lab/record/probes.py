"""Reading what the probers recorded: one :class:`Probe` per line of a client's ``probes.jsonl`` (what a
fault did to the client is :mod:`lab.record.analysis`'s)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Probe:
    """One probe as the prober wrote it; ``recv``/``pop``/``server`` are None if it was lost."""

    seq: int
    sent: float
    recv: float | None
    pop: str | None
    server: str | None

    @property
    def answered(self) -> bool:
        return self.recv is not None


def parse_probes(lines: Iterable[str]) -> list[Probe]:
    """Probes from JSON lines, in send order; a partial last line (being written) is skipped."""
    out = []
    for line in lines:
        try:
            d = json.loads(line)
            out.append(Probe(int(d["seq"]), float(d["sent"]), d["recv"], d["pop"], d["server"]))
        except (ValueError, KeyError, TypeError):
            continue
    out.sort(key=lambda p: p.seq)
    return out


def read_probes(path: Path, tail_bytes: int | None = None) -> list[Probe]:
    """Probes from a prober's file (and its rotated predecessor when reading all of it).

    With ``tail_bytes`` only the end of the current file is read (cheap, for "what now").
    """
    if not path.exists():
        return []
    if tail_bytes is not None:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - tail_bytes))
            data = fh.read().decode(errors="replace")
        lines = data.splitlines()
        return parse_probes(lines[1:] if size > tail_bytes else lines)
    older = path.with_name(path.name + ".1")
    text = (older.read_text() if older.exists() else "") + path.read_text()
    return parse_probes(text.splitlines())


def last_answer(probes: Sequence[Probe], after: float | None = None) -> Probe | None:
    """The most recently sent answered probe (sent after ``after`` if given)."""
    for p in reversed(probes):
        if p.answered and (after is None or p.sent >= after):
            return p
    return None
