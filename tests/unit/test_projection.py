"""The availability projection at the design's scale (lab.record.projection), redone by hand."""

from __future__ import annotations

import pytest

from lab.record.projection import YEAR_S, Scale, project


def row(mtbf_days: float, probes: float | None, http: float | None) -> dict[str, object]:
    return {"design_mtbf_days": mtbf_days, "loss_s": {"probes": {"per_affected_client_s": probes},
                                                      "http": {"per_affected_client_s": http}}}


def test_each_class_costs_its_faults_a_year_times_the_loss_times_the_share() -> None:
    scale = {"pop": Scale(300, 1 / 300, "silence", ""), "cp": Scale(3, 0.0, None, ""),
             "kv": Scale(3, 1 / 3, None, "")}
    classes = {"pop": row(30.0, 0.3, 0.5), "cp": row(120.0, None, 2.0), "kv": row(120.0, None, None),
               "new": row(10.0, 1.0, 1.0)}
    got = project(classes, scale)
    # 300 PoPs × 365 / 30 = 3 650 faults a year, each 0.5 s (HTTP, the worse) for 1/300 of the users.
    assert got["classes"]["pop"]["faults_per_year"] == 3650.0
    assert got["classes"]["pop"]["user_s_per_year"] == pytest.approx(3650 * 0.5 / 300)
    assert got["classes"]["cp"]["user_s_per_year"] == 0.0
    assert got["not_projected"] == ["kv", "new"]  # not measured / not at the scale: unknown, not zero
    assert got["availability"] == pytest.approx(1 - 3650 * 0.5 / 300 / YEAR_S)
    # The design's slower detection put back for the classes it detects, not for the others.
    slower = project(classes, scale, {"silence": 5.0, "health": 1.0})
    assert slower["classes"]["pop"]["loss_s_per_affected_user"] == 5.5
    assert slower["classes"]["cp"]["loss_s_per_affected_user"] == 2.0
