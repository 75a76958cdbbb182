"""The monitoring stack in one namespace (issue 24's first step): Prometheus scrapes itself and a target
that is down, its rule fires, Alertmanager delivers the alert to the lab's receiver, which records it with
the runbook phase it starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.clock import monotonic
from core.daemon import Daemon, NodeEnv
from core.files import read_jsonl as read
from core.proc import ProcessGroup
from core.wait import wait_for
from lab.run.monitoring import (
    ALERTMANAGER_PORT,
    SCRAPE_S,
    Alertmanager,
    AlertReceiver,
    Prometheus,
    Rule,
    Target,
)
from model.constants import PROMETHEUS_PORT
from tests.netns.spaces import daemon_space, refuses_a_bad_config

MON = "10.90.0.1"
#: From the target going down to the notification: a scrape (1 s), an evaluation (1 s), Alertmanager's
#: group_wait (0) and its dispatch — 2 × SCRAPE_S, plus 2 s for two processes on a loaded 2-core box.
DELIVERY_S = 2 * SCRAPE_S + 2.0
#: From t0 to the first scrape: three daemons started one after the other, each ready (Prometheus loads its
#: TSDB) — about 1 s here, 5 s allowed on a loaded CI box.
START_S = 5.0


@pytest.fixture
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    run_dir = tmp_path_factory.mktemp("run")
    with daemon_space("mon", (MON,), run_dir) as path:
        yield path, run_dir


def daemons(path: str, run_dir: Path) -> tuple[Prometheus, Alertmanager, AlertReceiver]:
    env = NodeEnv("mon", path, run_dir / "mon", ProcessGroup(run_dir))
    env.dir.mkdir(parents=True, exist_ok=True)
    receiver = AlertReceiver(env, MON)
    am = Alertmanager(env, MON, receiver.url)
    prom = Prometheus(env, MON, (Target("prometheus", (f"{MON}:{PROMETHEUS_PORT}",)), Target("dead", (f"{MON}:9999",))),
                      (Rule("TargetDown", 'up{job="dead"} == 0', phase="detection"),),
                      (f"{MON}:{ALERTMANAGER_PORT}",))
    return prom, am, receiver


def test_a_target_down_fires_an_alert_that_reaches_the_labs_receiver(space: tuple[str, Path]) -> None:
    path, run_dir = space
    prom, am, receiver = daemons(path, run_dir)
    started: list[Daemon] = [receiver, am, prom]
    for d in started:
        d.write_config()
        d.validate()  # every one checked before any starts
    t0 = monotonic()
    try:
        for d in started:
            d.start()
            d.wait_ready()
        firing: list[dict[str, object]] = []

        def delivered() -> bool:
            firing[:] = [a for n in read(receiver.records) for a in n["alerts"]
                         if a["alertname"] == "TargetDown" and a["status"] == "firing"]
            return bool(firing)

        wait_for(delivered, timeout=DELIVERY_S + 15.0, what="the TargetDown alert at the receiver", interval=0.1)
        first = min(n["t"] for n in read(receiver.records))
        assert firing[0]["phase"] == "detection" and firing[0]["instance"] == f"{MON}:9999"
        # The first scrape after the start finds the target down.
        assert first - t0 <= START_S + DELIVERY_S, first - t0
    finally:
        for d in reversed(started):
            d.stop()


def test_each_refuses_a_config_it_cannot_run(space: tuple[str, Path]) -> None:
    path, run_dir = space
    prom, am, _ = daemons(path, run_dir)
    for d in (prom, am):
        refuses_a_bad_config(d, ".yml", "{", '\n "no_such_option": 1,')
