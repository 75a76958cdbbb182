"""The measurement's table and timeline picture from a synthetic run."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lab.measure.report import plot, table
from lab.measure.runner import Timeline
from lab.record.analysis import client_result
from tests.unit.test_analysis import DT, T0, probes


def result() -> dict[str, object]:
    c = client_result(probes("aaaaaaaaaa" + "....cccc"), T0, DT).as_dict()
    run = {"run": 0, "detect_s": 0.004, "first_fib_s": 0.006, "network_convergence_s": 0.007,
           "clients": {"c1": c}, "crosscheck": []}
    return {"scenario": "service-crash", "target": "sjc", "topology": "t", "profile": "fast",
            "router_kind": "frr", "runs": [run], "catchment_restored": True,
            "summary": {"achieved_probe_rate_hz": 500.0, "shift_s": {"p50": 0.0085, "p90": 0.0085,
                                                                     "max": 0.0085, "n": 1}}}


def test_table_has_a_row_per_client() -> None:
    console = Console(width=200, record=True)
    console.print(table(result()))
    text = " ".join(console.export_text().split())  # the caption wraps
    assert "sjc-s1 → lax-s1" in text and "8.5" in text and "catchment restored: True" in text


def test_timeline_png(tmp_path: Path) -> None:
    out = tmp_path / "t.png"
    timeline = Timeline(T0, {"c1": probes("aaaaaaaaaa" + "....cccc")}, [(T0 + 0.006, "r1")],
                        [(T0 + 0.004, "sjc-s1: withdrawn")], T0 + 0.02)
    plot(result(), timeline, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_has_a_row_per_run_and_client() -> None:
    import csv
    import io

    from lab.measure.report import CSV_COLUMNS, csv_text

    rows = list(csv.DictReader(io.StringIO(csv_text(result()))))
    assert len(rows) == 1 and tuple(rows[0]) == CSV_COLUMNS
    row = rows[0]
    assert (row["client"], row["from_server"], row["to_server"]) == ("c1", "sjc-s1", "lax-s1")
    assert float(row["shift_s"]) == 0.0085 and row["scenario"] == "service-crash"
