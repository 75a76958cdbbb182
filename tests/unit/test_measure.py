"""Reading probe records, and the shift by PoP (what ``Lab.wait_shifted`` reports), as a table of cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.record.analysis import client_result
from lab.record.probes import Probe, last_answer, parse_probes, read_probes


def probes(spec: str, period: float = 0.01) -> list[Probe]:
    """One letter per probe sent every ``period`` from t=0: a PoP letter answered after 1 ms, '.' lost."""
    return [Probe(i, i * period, None if ch == "." else i * period + 0.001, None if ch == "." else ch, None)
            for i, ch in enumerate(spec)]


@pytest.mark.parametrize(
    ("spec", "t_fault", "before", "after", "shift", "gap", "lost"),
    [
        ("aaaabbbb", 0.035, "a", "b", 0.041 - 0.035, 0.010, 0),  # hitless move
        ("aaaa..bb", 0.035, "a", "b", 0.061 - 0.035, 0.030, 2),  # two probes lost
        ("aa..aabb", 0.015, "a", "b", 0.061 - 0.015, 0.010, 2),  # loss, back on a, then b
        ("aaaaaaaa", 0.035, "a", "a", None, None, 0),  # never moved
        ("aaaa....", 0.035, "a", None, None, None, 4),  # never moved, all lost: no PoP after the fault
        ("....bbbb", 0.015, None, "b", 0.041 - 0.015, None, 2),  # no answer before the fault
    ],
)
def test_shift_by_pop(spec: str, t_fault: float, before: str | None, after: str | None,
                      shift: float | None, gap: float | None, lost: int) -> None:
    s = client_result(probes(spec), t_fault, 0.01, by="pop")
    assert (s.from_pop, s.to_pop, s.lost) == (before, after, lost)
    assert s.shift_s == pytest.approx(shift) if shift is not None else s.shift_s is None
    assert s.gap_s == pytest.approx(gap) if gap is not None else s.gap_s is None


def test_lost_counts_to_the_end_of_the_record() -> None:
    """Lost probes after the move count too: the record's, not only those before the shift."""
    s = client_result(probes("aaaabb.b"), 0.035, 0.01, by="pop")
    assert (s.to_pop, s.lost, s.sent) == ("b", 1, 4)


def test_last_answer_skips_lost_and_old() -> None:
    ps = probes("ab..")
    assert last_answer(ps) == ps[1]
    assert last_answer(ps, after=0.015) is None


def test_parse_skips_partial_lines_and_sorts() -> None:
    lines = [json.dumps({"seq": 2, "sent": 2.0, "recv": None, "pop": None, "server": None}),
             json.dumps({"seq": 1, "sent": 1.0, "recv": 1.1, "pop": "a", "server": "a-s1"}),
             '{"seq": 3, "se']
    assert [p.seq for p in parse_probes(lines)] == [1, 2]


def test_read_probes_joins_rotated_file_and_tails(tmp_path: Path) -> None:
    path = tmp_path / "probes.jsonl"
    rec = {"sent": 0.0, "recv": 0.1, "pop": "a", "server": "a-s1"}
    path.with_name("probes.jsonl.1").write_text(json.dumps({"seq": 1, **rec}) + "\n")
    path.write_text("".join(json.dumps({"seq": i, **rec}) + "\n" for i in range(2, 200)))
    assert [p.seq for p in read_probes(path)][:3] == [1, 2, 3]
    tail = read_probes(path, tail_bytes=500)
    assert tail and tail[-1].seq == 199 and len(tail) < 10


def test_a_prober_asks_for_realtime_scheduling_and_says_what_it_got() -> None:
    """In a child process: the test runner's own scheduling stays as it is."""
    import subprocess
    import sys

    code = ("import os; from lab.record.prober import prioritise; got = prioritise(True); "
            "print(got, os.sched_getscheduler(0) == os.SCHED_FIFO, os.getpriority(os.PRIO_PROCESS, 0))")
    got, fifo, nice = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     timeout=30).stdout.split()
    assert got in ("fifo", "nice", "none")
    assert (got == "fifo") == (fifo == "True")
    assert got != "nice" or int(nice) == -10
