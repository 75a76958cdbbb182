"""The alert receiver (lab.record.alerts) keeps what Alertmanager's webhook sends and refuses the rest;
the monitoring configs render as the tools expect."""

from __future__ import annotations

import json

import pytest

from lab.record.alerts import notification

WEBHOOK = {"version": "4", "status": "firing", "receiver": "lab", "alerts": [
    {"status": "firing", "labels": {"alertname": "PopDown", "phase": "detection", "severity": "page",
                                    "instance": "sjc"}, "startsAt": "2026-12-04T21:00:00Z", "endsAt": ""}]}


def test_a_webhook_notification_is_recorded_with_its_phase() -> None:
    rec = notification(json.dumps(WEBHOOK).encode())
    assert rec["status"] == "firing" and rec["alerts"] == [
        {"alertname": "PopDown", "status": "firing", "phase": "detection", "severity": "page", "instance": "sjc",
         "starts_at": "2026-12-04T21:00:00Z", "ends_at": "",
         "labels": {"alertname": "PopDown", "phase": "detection", "severity": "page", "instance": "sjc"}}]


@pytest.mark.parametrize("body", [b"not json", b"[]", json.dumps({**WEBHOOK, "version": "3"}).encode(),
                                  json.dumps({**WEBHOOK, "alerts": [{"status": "firing"}]}).encode(),
                                  json.dumps({"version": "4", "alerts": "x"}).encode(),
                                  json.dumps({**WEBHOOK, "alerts": [{"labels": {"a": 1}}]}).encode(),
                                  json.dumps({**WEBHOOK, "alerts": [{"labels": {f"l{i}": "x" for i in range(99)}}]}
                                             ).encode()])
def test_anything_else_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        notification(body)
