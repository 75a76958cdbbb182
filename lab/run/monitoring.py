"""The lab's monitoring stack (issue 24), Debian's packages as the lab's daemons: Prometheus scraping the
lab's services, Alertmanager routing what its rules fire, and the receiver the lab records alerts with.

Timers scaled for the lab (the design's are minutes): scrapes and rule evaluations every
:data:`SCRAPE_S`, an alert delivered as soon as it fires (``group_wait`` 0) and again at most every
:data:`REPEAT_S`. Alertmanager runs alone (no cluster port: ``--cluster.listen-address=``).

Each ``validate`` is the tool's own check (``promtool check config`` — it checks the rule files too —,
``amtool check-config``); each ``ready`` its ``/-/ready`` answering 200.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from core.netns import connect_in
from lab.record.alerts import PATH as ALERTS_PATH

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
RECEIVER_PORT = 9095
SCRAPE_S = 1.0
REPEAT_S = 3600


@dataclass(frozen=True)
class Target:
    """A scrape job: its name and ``address:port`` targets (path ``/metrics``)."""

    job: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """An alerting rule: fires ``alert`` when ``expr`` has held ``for_s`` seconds; ``phase`` is the
    runbook phase it starts (a label every notification carries)."""

    alert: str
    expr: str
    for_s: float = 0.0
    severity: str = "page"
    phase: str = "detection"
    summary: str = ""


def _json_yaml(data: object) -> str:
    """YAML is a superset of JSON: configs are written as JSON, no YAML library in the path."""
    return json.dumps(data, indent=1) + "\n"


def http_ready(netns: str | None, address: str, port: int, path: str = "/-/ready") -> bool:
    """``GET path`` on ``address:port`` from inside ``netns`` answers 200 (one probe, no retries)."""
    conn = http.client.HTTPConnection(address, port, timeout=1.0)
    try:
        conn.sock = connect_in(netns, address, port, 1.0)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, AnylabError):
        return False
    finally:
        conn.close()


class Prometheus(Daemon):
    """Prometheus on ``listen`` scraping ``targets``, evaluating ``rules``, alerting ``alertmanagers``."""

    name = "prometheus"

    def __init__(self, env: NodeEnv, listen: str, targets: Sequence[Target], rules: Sequence[Rule],
                 alertmanagers: Sequence[str]) -> None:
        super().__init__(env)
        self.listen, self.targets, self.rules, self.alertmanagers = listen, tuple(targets), tuple(rules), \
            tuple(alertmanagers)

    @property
    def rules_file(self) -> Path:
        return self.path("-rules.yml")

    def config(self) -> dict[str, object]:
        interval = f"{int(SCRAPE_S * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(self.rules_file)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]},
            "scrape_configs": [{"job_name": t.job, "static_configs": [{"targets": list(t.targets)}]}
                               for t in self.targets],
        }

    def rules_config(self) -> dict[str, object]:
        return {"groups": [{"name": "anylab", "rules": [
            {"alert": r.alert, "expr": r.expr, "for": f"{int(r.for_s * 1000)}ms",
             "labels": {"severity": r.severity, "phase": r.phase},
             "annotations": {"summary": r.summary or r.alert}} for r in self.rules]}]}

    def render_config(self) -> dict[Path, str]:
        return {self.path(".yml"): _json_yaml(self.config()), self.rules_file: _json_yaml(self.rules_config())}

    def validate(self) -> None:
        self.run_check(["promtool", "check", "config", str(self.path(".yml"))], "promtool check config")

    def argv(self) -> list[str]:
        return ["prometheus", f"--config.file={self.path('.yml')}",
                f"--storage.tsdb.path={self.env.dir / 'prometheus-data'}",
                f"--web.listen-address={self.listen}:{PROMETHEUS_PORT}", "--storage.tsdb.retention.time=1d",
                "--log.level=warn"]

    def ready(self) -> bool:
        return http_ready(self.env.netns, self.listen, PROMETHEUS_PORT)


class Alertmanager(Daemon):
    """Alertmanager on ``listen`` delivering every alert to the lab's receiver at ``webhook``."""

    name = "alertmanager"

    def __init__(self, env: NodeEnv, listen: str, webhook: str) -> None:
        super().__init__(env)
        self.listen, self.webhook = listen, webhook

    def config(self) -> dict[str, object]:
        return {"route": {"receiver": "lab", "group_by": ["alertname", "instance"], "group_wait": "0s",
                          "group_interval": "1s", "repeat_interval": f"{REPEAT_S}s"},
                "receivers": [{"name": "lab", "webhook_configs": [{"url": self.webhook, "send_resolved": True}]}]}

    def render_config(self) -> dict[Path, str]:
        return {self.path(".yml"): _json_yaml(self.config())}

    def validate(self) -> None:
        self.run_check(["amtool", "check-config", str(self.path(".yml"))], "amtool check-config")

    def argv(self) -> list[str]:
        return ["prometheus-alertmanager", f"--config.file={self.path('.yml')}",
                f"--storage.path={self.env.dir / 'alertmanager-data'}",
                f"--web.listen-address={self.listen}:{ALERTMANAGER_PORT}", "--cluster.listen-address=",
                "--log.level=warn"]

    def ready(self) -> bool:
        return http_ready(self.env.netns, self.listen, ALERTMANAGER_PORT)


class AlertReceiver(Daemon):
    """:mod:`lab.record.alerts` on ``listen``: what Alertmanager delivers, recorded in ``alerts.jsonl``."""

    name = "alert-receiver"

    def __init__(self, env: NodeEnv, listen: str) -> None:
        super().__init__(env)
        self.listen = listen

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{RECEIVER_PORT}{ALERTS_PATH}"

    @property
    def records(self) -> Path:
        return self.env.dir / "alerts.jsonl"

    def render_config(self) -> dict[Path, str]:
        return {}

    def validate(self) -> None:
        """Nothing to check beyond its address (the receiver takes no config file)."""

    def argv(self) -> list[str]:
        return [self.env.python, "-m", "lab.record.alerts", "--listen", f"{self.listen}:{RECEIVER_PORT}",
                "--out", str(self.records)]

    def ready(self) -> bool:
        """It accepts a connection (it answers only ``POST /alerts``)."""
        try:
            connect_in(self.env.netns, self.listen, RECEIVER_PORT, 1.0).close()
        except (OSError, AnylabError):
            return False
        return True
