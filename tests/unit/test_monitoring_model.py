"""The lab's monitoring as data: the ``monitoring`` section checked and resolved, what Prometheus scrapes
and the design's alert rules (accepted by promtool itself), and the edge's metrics listener (the token,
its text files)."""

from __future__ import annotations

import asyncio
import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.errors import TopologyError
from core.metrics import Metrics, TextfileCollector, authorized, read_token
from lab.run.monitoring import PHASES, Prometheus, rules, targets
from model.load import build_topology
from pop_agent.edge import MetricsHandler
from tenant.worker_api import Request
from tests.conftest import TOPOLOGIES

GLOBAL: dict[str, Any] = yaml.safe_load((TOPOLOGIES / "global.yaml").read_text())


def with_monitoring(section: Any) -> dict[str, Any]:
    data = copy.deepcopy(GLOBAL)
    data["monitoring"] = section
    return data


def test_global_has_a_mon_node_on_the_control_nodes_router_scraping_every_service() -> None:
    topo = build_topology(GLOBAL)
    assert topo.monitoring is not None and topo.monitoring.name == "mon"
    assert topo.monitoring.router == topo.control.router and "mon" in topo.node_names()
    jobs: dict[str, int] = {}
    for t in targets(topo):
        jobs[t.job] = jobs.get(t.job, 0) + len(t.targets)
    assert jobs == {"prometheus": 1, "edge": 12, "control-plane": 3, "kv-master": 3, "do-host": 3, "do-directory": 1,
                    "backup": 1, "backup-dr": 1}
    # Without the section: no node, nothing else renumbered.
    bare = copy.deepcopy(GLOBAL)
    del bare["monitoring"]
    plain = build_topology(bare)
    assert plain.monitoring is None and "mon" not in plain.node_names()
    assert [c.interface.address for c in plain.clients] == [c.interface.address for c in topo.clients]


@pytest.mark.parametrize(("section", "words"), [
    ({"router": "nowhere"}, "unknown router 'nowhere'"),
    ({"slo": 1.0}, "less than 1"),
    ({"slo": 0.2}, "greater than 0.5"),
    ({"scrape_s": 1}, "unknown field"),
])
def test_a_bad_monitoring_section_is_refused_by_field(section: dict[str, Any], words: str) -> None:
    with pytest.raises(TopologyError) as err:
        build_topology(with_monitoring(section))
    assert "monitoring" in str(err.value) and words in str(err.value).lower()


def test_every_rule_names_a_runbook_phase_and_promtool_accepts_them(tmp_path: Path) -> None:
    topo = build_topology(GLOBAL)
    made = rules(topo)
    assert {r.alert for r in made} == {"PopDown", "RegionDown", "ControlPlaneUnreachable", "KvMasterDown",
                                       "KvReplicationLag", "DoFailover", "ErrorBudgetBurn"}
    assert all(r.phase in PHASES for r in made)
    burn = next(r for r in made if r.alert == "ErrorBudgetBurn")
    assert "> 0.00144" in burn.expr and "[60s]" in burn.expr and "[5s]" in burn.expr  # 14.4 × (1 − 99.99 %)
    if shutil.which("promtool") is None:
        pytest.skip("promtool is installed by ./anylab setup")
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(Prometheus.rules_text(made))
    check = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(made)} rules found" in check.stdout


def test_the_bearer_token_is_compared_whole() -> None:
    assert authorized("Bearer abc", "abc")
    assert not authorized("Bearer abcd", "abc") and not authorized("Bearer ab", "abc")
    assert not authorized("abc", "abc") and not authorized(None, "abc") and not authorized("Bearer abc", None)


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("\n")
    with pytest.raises(ValueError):
        read_token(tmp_path / "t")
    assert read_token(None) is None


def test_the_edges_metrics_go_to_the_token_holder_with_the_nodes_text_files(tmp_path: Path) -> None:
    (tmp_path / "health.prom").write_text('# TYPE anylab_health_up gauge\nanylab_health_up{server="s"} 1\n')
    (tmp_path / "kv.prom").write_text("this is { not prometheus text\n")  # left out, the rest still served
    metrics = Metrics("edge")
    metrics.registry.register(TextfileCollector([tmp_path / "health.prom", tmp_path / "kv.prom",
                                                 tmp_path / "missing.prom"]))
    handler = MetricsHandler(metrics, "tok")

    def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        resp = asyncio.run(handler.handle(Request("GET", url, headers, b"")))
        return resp.status, resp.body

    assert get("/metrics", {})[0] == 401
    assert get("/metrics", {"authorization": "Bearer nope"})[0] == 401
    assert get("/other", {"authorization": "Bearer tok"})[0] == 404
    status, body = get("/metrics", {"authorization": "Bearer tok"})
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "anylab_health_up" in names and "process_resident_memory_bytes" in names
