"""Reading what the probers recorded, and what a fault did to each client (pure functions)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class Shift:
    """What a fault at ``t_fault`` did to one client.

    ``shift_s``: from the fault to the first answer from another PoP (None if the client never moved).
    ``outage_s``: from the last answer before the move to the first answer after it.
    ``lost``: probes sent after the fault and never answered, up to the first answer from another PoP
    (or to the end of the record if it never moved).
    """

    before: str | None
    after: str | None
    shift_s: float | None
    outage_s: float | None
    lost: int
    sent: int

    def as_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "shift_s": self.shift_s,
                "outage_s": self.outage_s, "lost": self.lost, "sent": self.sent}


def shift_after(probes: Sequence[Probe], t_fault: float) -> Shift:
    """Measure one client's move away from the PoP it used at ``t_fault``."""
    before_probe = last_answer([p for p in probes if p.sent < t_fault])
    before = before_probe.pop if before_probe else None
    last_old = before_probe.recv if before_probe else None
    lost = sent = 0
    for p in probes:
        if p.sent < t_fault:
            continue
        sent += 1
        if not p.answered:
            lost += 1
            continue
        assert p.recv is not None
        if p.pop != before:
            outage = p.recv - last_old if last_old is not None else None
            return Shift(before, p.pop, p.recv - t_fault, outage, lost, sent)
        last_old = p.recv
    return Shift(before, before, None, None, lost, sent)
