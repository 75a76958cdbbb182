"""Process records: what identifies a process the lab started (pid + start time) and the run
directory's ``pids.jsonl`` those records go to. Below both :mod:`core.proc` and :mod:`core.zygote`, which
each write them."""

from __future__ import annotations

import json
from pathlib import Path

PIDS_FILE = "pids.jsonl"


def proc_starttime(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if
    there is no such process or it is a zombie (dead, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def is_same_process(pid: int, starttime: int) -> bool:
    """True if ``pid`` is still the process that was recorded (guards against PID reuse)."""
    return proc_starttime(pid) == starttime


def write_record(path: Path, record: dict[str, object]) -> None:
    """Append one process record to a ``pids.jsonl`` (one short O_APPEND write: safe between processes)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
