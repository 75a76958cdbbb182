"""The lab's monitoring stack (issue 24), Debian's packages as the lab's daemons: Prometheus scraping the
lab's services, Alertmanager routing what its rules fire, and the receiver the lab records alerts with.

Timers scaled for the lab (the design's are minutes): scrapes and rule evaluations every
:data:`SCRAPE_S`, an alert delivered as soon as it fires (``group_wait`` 0) and again at most every
:data:`REPEAT_S`. Alertmanager runs alone (no cluster port: ``--cluster.listen-address=``).

Each ``validate`` is the tool's own check (``promtool check config`` — it checks the rule files too —,
``amtool check-config``); each ``ready`` its ``/-/ready`` answering 200.

:func:`monitoring_daemons` puts them on a topology's ``mon`` node: what is scraped (:func:`targets`) and
the design's alerts (:func:`rules`), each labelled with the runbook phase it starts.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.daemon import Daemon, NodeEnv
from core.errors import AnylabError
from core.files import read_jsonl
from core.metrics import METRICS_PORT, TOKEN_FILE
from core.netns import connect_in
from core.wait import wait_for
from lab.record import status_page
from lab.record.alerts import PATH as ALERTS_PATH
from lab.run.launchers import token_files
from model.constants import DO_DIRECTORY_PORT, DO_HOST_PORT, PROMETHEUS_PORT
from model.topology import Topology

ALERTMANAGER_PORT = 9093
RECEIVER_PORT = 9095
SCRAPE_S = 1.0
REPEAT_S = 3600


@dataclass(frozen=True)
class Target:
    """Targets of a scrape job: ``address:port`` (path ``/metrics``), with the labels their series get
    (a job's targets may come in several groups, each with its labels)."""

    job: str
    targets: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()


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


def http_get(netns: str | None, address: str, port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = 1.0) -> tuple[int, bytes]:
    """``GET path`` on ``address:port`` from inside ``netns``: its status and body (one try). Raises OSError
    or AnylabError when it cannot be asked."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.sock = connect_in(netns, address, port, timeout)
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_ready(netns: str | None, address: str, port: int, path: str = "/-/ready") -> bool:
    """``GET path`` on ``address:port`` from inside ``netns`` answers 200 (one probe, no retries)."""
    try:
        return http_get(netns, address, port, path)[0] == 200
    except (OSError, AnylabError):
        return False


def query(netns: str | None, address: str, promql: str, timeout: float = 2.0) -> list[tuple[dict[str, str], float]]:
    """Prometheus's answer to the instant query ``promql``: each series' labels and value. Raises
    AnylabError when Prometheus cannot be asked or refuses the query."""
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        status, body = http_get(netns, address, PROMETHEUS_PORT, path, timeout=timeout)
        data = json.loads(body)
    except (OSError, ValueError) as exc:
        raise AnylabError(f"cannot ask Prometheus at {address}: {exc}") from exc
    if status != 200 or data.get("status") != "success":
        raise AnylabError(f"Prometheus refused the query {promql!r}: {data.get('error', status)}")
    return [(r["metric"], float(r["value"][1])) for r in data["data"]["result"]]


@dataclass(frozen=True)
class Alert:
    """One alert as the receiver recorded it: when its notification arrived (CLOCK_MONOTONIC), its name,
    ``firing`` or ``resolved``, the runbook phase it starts, and all its labels."""

    t: float
    name: str
    status: str
    phase: str
    labels: dict[str, str]

    @property
    def subject(self) -> str:
        """What it is about: its PoP, else its region, else its target."""
        return self.labels.get("pop") or self.labels.get("region") or self.labels.get("instance", "")


def alerts(records: Path) -> list[Alert]:
    """Every alert the receiver recorded in ``records``, in order; an alert notified again appears again."""
    return [Alert(float(n["t"]), str(a["alertname"]), str(a["status"]), str(a["phase"]), dict(a.get("labels", {})))
            for n in read_jsonl(records) for a in n["alerts"]]


class Prometheus(Daemon):
    """Prometheus on ``listen`` scraping ``targets``, evaluating ``rules``, alerting ``alertmanagers``."""

    name = "prometheus"

    dependencies = ("alertmanager",)

    def __init__(self, env: NodeEnv, listen: str, targets: Sequence[Target], rules: Sequence[Rule],
                 alertmanagers: Sequence[str], token: str | None = None) -> None:
        super().__init__(env)
        self.listen, self.targets, self.rules, self.alertmanagers = listen, tuple(targets), tuple(rules), \
            tuple(alertmanagers)
        #: The lab's metrics token, sent as a bearer token to every target but Prometheus itself.
        self.metrics_token = token

    def secrets(self) -> dict[Path, str]:
        return token_files(self)

    @property
    def rules_file(self) -> Path:
        return self.path("-rules.yml")

    def config(self) -> dict[str, object]:
        interval = f"{int(SCRAPE_S * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(self.rules_file)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]},
            "scrape_configs": [self.job(job) for job in dict.fromkeys(t.job for t in self.targets)],
        }

    def job(self, name: str) -> dict[str, object]:
        groups = [t for t in self.targets if t.job == name]
        job: dict[str, object] = {"job_name": name, "static_configs": [
            {"targets": list(t.targets), **({"labels": dict(t.labels)} if t.labels else {})} for t in groups]}
        if self.metrics_token and name != "prometheus":
            job["authorization"] = {"type": "Bearer", "credentials_file": str(self.env.dir / TOKEN_FILE)}
        return job

    @staticmethod
    def rules_text(rules: Sequence[Rule]) -> str:
        """``rules`` as a Prometheus rule file (one group, evaluated every :data:`SCRAPE_S`)."""
        return _json_yaml({"groups": [{"name": "anylab", "rules": [
            {"alert": r.alert, "expr": r.expr, "for": f"{int(r.for_s * 1000)}ms",
             "labels": {"severity": r.severity, "phase": r.phase},
             "annotations": {"summary": r.summary or r.alert}} for r in rules]}]})

    def render_config(self) -> dict[Path, str]:
        return {self.path(".yml"): _json_yaml(self.config()), self.rules_file: self.rules_text(self.rules)}

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
    dependencies = ("alert-receiver",)

    def __init__(self, env: NodeEnv, listen: str, webhook: str) -> None:
        super().__init__(env)
        self.listen, self.webhook = listen, webhook

    def config(self) -> dict[str, object]:
        # Grouped by all labels ("..."): each alert is its own notification, sent when it fires.
        return {"route": {"receiver": "lab", "group_by": ["..."], "group_wait": "0s",
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



class StatusPage(Daemon):
    """:mod:`lab.record.status_page` on ``listen``: the platform's public status, readable from clients;
    it starts ``operational`` in every region."""

    name = "status-page"

    def __init__(self, env: NodeEnv, listen: str, regions: Sequence[str]) -> None:
        super().__init__(env)
        self.listen, self.regions = listen, tuple(regions)

    @property
    def state(self) -> Path:
        return self.env.dir / "status.json"

    def render_config(self) -> dict[Path, str]:
        return {self.state: json.dumps({"status": "operational", "regions": dict.fromkeys(self.regions, "operational"),
                                        "message": "", "updated": 0.0})}

    def validate(self) -> None:
        """Nothing to check beyond its address (the page is the lab's own file)."""

    def argv(self) -> list[str]:
        return [self.env.python, "-m", "lab.record.status_page", "--listen", f"{self.listen}:{status_page.PORT}",
                "--state", str(self.state)]

    def ready(self) -> bool:
        return http_ready(self.env.netns, self.listen, status_page.PORT, "/status")


#: The runbook's phases (the design's "Runbook: Complete Region Failure"), in order.
PHASES = ("detection", "containment", "recovery", "restoration", "post-incident")


def targets(topo: Topology) -> list[Target]:
    """What the lab's Prometheus scrapes: itself, every PoP server in service (its edge worker, with its
    health agent's and KV replica's text files), each region's control plane, KV master and DO host, and
    the DO directory; labelled with their region (and PoP and server), but the directory, whose series
    name the region they are about."""
    assert topo.monitoring is not None
    out = [Target("prometheus", (f"{topo.monitoring.address}:{PROMETHEUS_PORT}",))]
    for s in topo.servers:
        if not s.standby:
            out.append(Target("edge", (f"{s.interfaces[0].address.ip}:{METRICS_PORT}",),
                              (("region", s.region), ("pop", s.pop), ("server", s.name))))
    for cp in topo.control_planes:
        out.append(Target("control-plane", (f"{cp.address}:{cp.port}",), (("region", cp.region),)))
    for km in topo.kv_masters:
        out.append(Target("kv-master", (f"{km.address}:{km.port}",), (("region", km.region),)))
        out.append(Target("do-host", (f"{km.address}:{DO_HOST_PORT}",), (("region", km.region),)))
    if topo.backup is not None:
        bk = topo.backup
        out.append(Target("backup", (f"{bk.address}:{bk.port}",), (("region", bk.region),)))
    if topo.backup_dr is not None:
        dr = topo.backup_dr
        out.append(Target("backup-dr", (f"{dr.address}:{dr.port}",), (("region", dr.region),)))
    # The directory's series carry the region they are about (a failover's): no region label of its own.
    out.append(Target("do-directory", (f"{topo.control.address}:{DO_DIRECTORY_PORT}",)))
    return out


#: A PoP serves while one of its servers does: scraped, its edge serving and its health agent up (a
#: server without a health agent has no ``anylab_health_up``). A PoP none of whose servers answers the
#: scrape has no such series at all: then its scrapes' ``up`` (0) stands in.
POP_SERVING = ('(max by (pop, region) (min by (pop, region, server) '
               '({__name__=~"anylab_edge_serving|anylab_health_up", job="edge"})) '
               'or max by (pop, region) (up{job="edge"}))')
#: The design's burn-rate windows (1 h and 5 min for a page) scaled to the lab's minutes: 60 s and 5 s.
BURN_WINDOWS_S = (60, 5)
#: How fast the budget burns to page: the SRE workbook's 14.4 (2 % of a 30-day budget in an hour).
BURN_RATE = 14.4


def _error_ratio(window_s: int) -> str:
    return (f'(sum(rate(anylab_http_requests_total{{job="edge",route="worker",code="5xx"}}[{window_s}s])) / '
            f'sum(rate(anylab_http_requests_total{{job="edge",route="worker"}}[{window_s}s])))')


def rules(topo: Topology) -> list[Rule]:
    """The design's alerts, lab-scaled: each fires on its trigger and carries the runbook phase it starts.

    - ``PopDown`` / ``RegionDown``: no server of the PoP / of the region serves (containment: traffic
      leaves it, the region is withdrawn from BGP and DNS).
    - ``ControlPlaneUnreachable``: a region's control plane does not answer its scrape (containment:
      deployments to it halt).
    - ``KvMasterDown``: a region's KV master does not answer (recovery).
    - ``KvReplicationLag``: a replica's lag past ``kv_stale_after_s`` (the design's 5 min, lab-scaled by the
      topology's setting; recovery: verify data integrity).
    - ``DoFailover``: the directory failed a region's objects over (recovery: DO migrations).
    - ``ErrorBudgetBurn``: the edge's 5xx ratio burns the SLO's budget 14.4× over both windows
      (detection)."""
    assert topo.spec.monitoring is not None
    budget = 1.0 - topo.spec.monitoring.slo
    lag = topo.spec.settings.kv_stale_after_s
    burn = " and ".join(f"{_error_ratio(w)} > {BURN_RATE * budget:.6g}" for w in BURN_WINDOWS_S)
    return [
        Rule("PopDown", f"{POP_SERVING} == 0", phase="containment", summary="no server of the PoP serves"),
        Rule("RegionDown", f"max by (region) ({POP_SERVING}) == 0", phase="containment",
             summary="no PoP of the region serves"),
        Rule("ControlPlaneUnreachable", 'up{job="control-plane"} == 0', phase="containment",
             summary="the region's control plane does not answer"),
        Rule("KvMasterDown", 'up{job="kv-master"} == 0', phase="recovery",
             summary="the region's KV master does not answer"),
        Rule("KvReplicationLag",
             f'max by (pop, region, server) (anylab_kv_replica_lag_seconds{{job="edge"}}) > {lag:g}', phase="recovery",
             summary="a KV replica lags past the staleness bound"),
        Rule("DoFailover", 'increase(anylab_do_failovers_total{job="do-directory"}[1m]) > 0', phase="recovery",
             summary="the DO directory failed a region over"),
        Rule("ErrorBudgetBurn", burn, phase="detection", severity="page",
             summary=f"the edge burns its {topo.spec.monitoring.slo:.4%} SLO's budget {BURN_RATE}x"),
    ]


def monitoring_daemons(topo: Topology, env_of: Callable[[str], NodeEnv], token: str) -> dict[str, list[Daemon]]:
    """The ``mon`` node's daemons (none without monitoring): the receiver, Alertmanager, Prometheus and the
    status page."""
    mon = topo.monitoring
    if mon is None:
        return {}
    env = env_of(mon.name)
    env.dir.mkdir(parents=True, exist_ok=True)
    address = str(mon.address)
    receiver = AlertReceiver(env, address)
    am = Alertmanager(env, address, receiver.url)
    prom = Prometheus(env, address, targets(topo), rules(topo), (f"{address}:{ALERTMANAGER_PORT}",), token)
    page = StatusPage(env, address, [r.name for r in topo.spec.regions])
    return {mon.name: [receiver, am, prom, page]}


def wait_monitoring(topo: Topology, netns: dict[str, str], timeout: float) -> int:
    """Wait until Prometheus has scraped every one of its targets and each answered; returns how many.
    Raises WaitTimeout naming the targets down or not scraped yet."""
    mon = topo.monitoring
    assert mon is not None
    expected = {t for group in targets(topo) for t in group.targets}
    seen: dict[str, float] = {}

    def all_up() -> int | None:
        seen.clear()
        for labels, value in query(netns[mon.name], str(mon.address), "up", timeout=1.0):
            seen[labels.get("instance", "")] = value
        return len(expected) if all(seen.get(t) == 1.0 for t in expected) else None

    def describe() -> str:
        missing = sorted(t for t in expected if seen.get(t) != 1.0)
        return f"{len(missing)} of {len(expected)} targets down or not scraped yet: {', '.join(missing[:8])}"

    return wait_for(all_up, timeout=timeout, what="Prometheus to scrape every target", interval=0.2,
                    node=mon.name, describe=describe)
