"""The thin I/O around :mod:`protect.autoscale` and :mod:`protect.api_scale`: once a second, for every PoP
with ``autoscale`` in its topology entry, the mean utilisation and summed in-flight requests of its
servers in service (from their ``protect.json``) are fed to the PoP's machine, and a
:class:`protect.autoscale.Scale` action is carried out with :meth:`lab.run.lab.Lab.scale`; and for every
region's control plane, its API's p99 (the worst of its API processes, from their ``/v1/status``) is fed
to the region's machine, and an :class:`protect.api_scale.AddReplica` carried out with
:meth:`lab.run.lab.Lab.scale_control_plane`. Every scaling is a JSON line in the run directory's
``autoscale-events.jsonl``.

It runs as a thread of the process that holds the lab (the controller of ``anylab up``, or a test's
``Lab``), started by ``Lab.up`` and stopped by ``Lab.down``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any, Protocol

from core.clock import monotonic
from core.errors import AnylabError
from lab.run.rundir import in_service
from model.topology import Topology
from protect import api_scale, autoscale


class Scalable(Protocol):
    """What the autoscaler needs of the lab it scales (:class:`lab.run.lab.Lab` is one)."""

    topo: Topology
    run_dir: Path

    def node_dir(self, node: str) -> Path: ...

    def scale(self, pop: str, servers: int, timeout: float = 60.0) -> dict[str, Any]: ...

    def scale_control_plane(self, region: str, replicas: int, timeout: float = 30.0) -> dict[str, Any]: ...

    def api_latency(self, region: str) -> api_scale.Sample: ...

PERIOD_S = 1.0
EVENTS = "autoscale-events.jsonl"


def config_of(lab: Scalable, pop: str) -> autoscale.Config | None:
    p = lab.topo.pop(pop)
    if p.autoscale is None:
        return None
    return autoscale.Config(min_servers=len(p.servers), max_servers=len(p.servers) + len(p.standby),
                            **p.autoscale.model_dump())


class Autoscaler:
    def __init__(self, lab: Scalable) -> None:
        self.lab = lab
        self.configs = {p.name: cfg for p in lab.topo.pops if (cfg := config_of(lab, p.name)) is not None}
        self.states = {pop: autoscale.State() for pop in self.configs}
        self.api_config = api_scale.Config()
        self.api_states = {cp.region: api_scale.State() for cp in lab.topo.control_planes}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.configs or self.api_states:
            self.thread = threading.Thread(target=self._run, name="anylab-autoscaler", daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def sample(self, pop: str, t: float) -> autoscale.Sample:
        """The PoP's servers in service as their edges last wrote it (a server not written yet counts 0)."""
        servers = in_service(self.lab.topo, self.lab.run_dir)[pop]
        utilisation, queue = [], 0.0
        for s in servers:
            data: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                data = json.loads((self.lab.node_dir(s) / "protect.json").read_text())
            utilisation.append(float(data.get("utilisation", 0.0)))
            queue += float(data.get("inflight", 0.0))
        return autoscale.Sample(t, len(servers), sum(utilisation) / max(1, len(utilisation)), queue)

    def tick(self, t: float) -> list[dict[str, Any]]:
        """One round over the PoPs; returns the events written."""
        events = []
        for pop, cfg in self.configs.items():
            sample = self.sample(pop, t)
            self.states[pop], actions = autoscale.step(cfg, self.states[pop], sample)
            for action in actions:
                event: dict[str, Any] = {"t": t, "pop": pop, "from": sample.servers, "to": action.servers,
                                         "rule": action.rule, "utilisation": round(sample.utilisation, 3),
                                         "queue": sample.queue}
                try:
                    event["result"] = self.lab.scale(pop, action.servers)
                except AnylabError as exc:
                    event["error"] = str(exc)
                events.append(event)
        for region in self.api_states:
            try:
                api = self.lab.api_latency(region)
            except AnylabError:
                continue
            self.api_states[region], adds = api_scale.step(self.api_config, self.api_states[region], api)
            for add in adds:
                event = {"t": t, "control_plane": region, "from": api.replicas, "to": add.replicas,
                         "rule": "api_p99_high", "p99_ms": add.p99_ms, "count": api.count}
                try:
                    event["result"] = self.lab.scale_control_plane(region, add.replicas)
                except AnylabError as exc:
                    event["error"] = str(exc)
                events.append(event)
        if events:
            with (self.lab.run_dir / EVENTS).open("a") as f:
                for e in events:
                    f.write(json.dumps(e) + "\n")
        return events

    def _run(self) -> None:

        while not self.stop.wait(PERIOD_S):  # the sampling period itself
            with contextlib.suppress(OSError):  # the run directory going away at teardown
                self.tick(monotonic())
