"""Overload runs: a priority mix (:mod:`lab.load.priority_load`) at a multiple of a PoP's capacity, from the
clients in that PoP's catchment, and what each class got — served, shed, spilled to another PoP, p99.

    deploy_classes(lab)
    result = overload(lab, "sjc", multiple=2.0, duration=15)
    result["classes"]["P0"]  # {"offered", "served", "shed", "failed", "spilled", "p99_ms"}
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from core import unix_http
from core.clock import monotonic
from core.errors import AnylabError
from core.files import read_jsonl as read_records
from core.proc import start_tool
from core.stats import quantile
from core.wait import wait_for
from lab.load.client_http import client_request
from lab.load.priority_load import host_of
from lab.run.driver import Driver
from lab.run.rundir import in_service

CLASSES = ("P0", "P1", "P2", "P3")
#: The design's classes as a mix: health checks and auth (P0) are few, paid traffic (P1) the most.
DEFAULT_MIX = {"P0": 0.1, "P1": 0.4, "P2": 0.3, "P3": 0.2}
CLASS_WORKER = "async def fetch(request, env, ctx):\n    return 'ok'\n"


def deploy_classes(lab: Driver) -> None:
    """One trivial worker per class at ``pN.load.example`` with priority PN (the same content is the same
    version: deploying twice changes nothing). Raises ControlPlaneError."""
    for p in CLASSES:
        lab.deploy(f"load-{p.lower()}", host_of(p), CLASS_WORKER, priority=p)


def pop_capacity(lab: Driver, pop: str) -> float:
    """Requests per second ``pop`` takes on at 100 %: its servers in service × the per-server capacity."""
    servers = in_service(lab.topo, lab.run_dir).get(pop)
    if not servers:
        raise AnylabError(f"no PoP named {pop!r}")
    return len(servers) * lab.topo.spec.settings.server_capacity_rps


def summarise(records: list[dict[str, Any]], home: str) -> dict[str, dict[str, Any]]:
    """Per class: requests offered, served (200), shed (503 ``shed`` anywhere), failed (anything else, and
    ``errors`` by kind), spilled (forwarded at L7 to another PoP), moved (routed by BGP to a PoP other
    than ``home``: a demoted announcement), the p99 latency of those served in ms."""
    out: dict[str, dict[str, Any]] = {}
    for p in CLASSES:
        recs = [r for r in records if r["p"] == p]
        served = [r for r in recs if r["st"] == 200]
        latencies = sorted((r["t1"] - r["t0"]) * 1000 for r in served)
        out[p] = {"offered": len(recs), "served": len(served),
                  "shed": sum(1 for r in recs if r["st"] == 503),
                  "failed": sum(1 for r in recs if r["st"] not in (200, 503)),
                  "spilled": sum(1 for r in served if r["by"]),
                  "moved": sum(1 for r in served if not r["by"] and r["srv"] and not r["srv"].startswith(home + "/")),
                  "p99_ms": round(quantile(latencies, 0.99) or 0.0, 1) if latencies else None,
                  "errors": dict(Counter(r["err"] or f"HTTP {r['st']}" for r in recs if r["st"] not in (200, 503)))}
    return out


def overload(lab: Driver, pop: str, multiple: float, duration: float, mix: dict[str, float] | None = None,
             timeout: float = 2.0) -> dict[str, Any]:
    """Send ``multiple`` × ``pop``'s capacity for ``duration`` seconds from the clients whose catchment is
    ``pop`` (split evenly between them) and summarise what each class got. The loads stop by themselves
    at ``duration``; this waits for them (at most ``duration`` + ``timeout`` + 10 s). Raises AnylabError when
    no client is in ``pop``'s catchment."""
    catchment = lab.catchment()
    clients = sorted(c for c, p in catchment.items() if p == pop)
    if not clients:
        raise AnylabError(f"no client reaches {pop} now (catchment {catchment})")
    rate = multiple * pop_capacity(lab, pop)
    mix = mix or DEFAULT_MIX
    target = str(lab.topo.anycast[0].network_address)
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for c in clients:
        out = lab.node_dir(c) / "priority-load.jsonl"
        out.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "lab.load.priority_load",
                "--target", target, "--out", str(out), "--rate", f"{rate / len(clients):.3f}",
                "--mix", ",".join(f"{k}={v}" for k, v in mix.items()), "--timeout", str(timeout),
                "--duration", f"{duration:.1f}"]
        procs[c] = (start_tool(lab.run_dir, argv, node=c, name="priority-load", netns=lab.netns[c],
                               stderr=subprocess.PIPE), out)
    errors = []
    for c, (proc, _out) in procs.items():
        try:
            _, err = proc.communicate(timeout=duration + timeout + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode:
            errors.append(f"{c}: priority load exited {proc.returncode}: {err.decode()[-300:]}")
    if errors:
        raise AnylabError("; ".join(errors))
    records = [r for _proc, out in procs.values() for r in read_records(out)]
    classes = summarise(records, pop)
    moved_at = min((r["t0"] for r in records if r["st"] == 200 and not r["by"] and r["srv"]
                    and not r["srv"].startswith(pop + "/")), default=None)
    start = min((r["t0"] for r in records), default=None)
    served = sum(v["served"] for v in classes.values())
    spilled = sum(v["spilled"] for v in classes.values())
    moved = sum(v["moved"] for v in classes.values())
    return {"pop": pop, "multiple": multiple, "rate": rate, "duration_s": duration, "clients": clients,
            "classes": classes, "spilled_share": round(spilled / served, 4) if served else 0.0,
            "moved_share": round(moved / served, 4) if served else 0.0, "start": start,
            "first_moved_s": None if moved_at is None or start is None else round(moved_at - start, 3),
            "demotions": _overload_events(lab, pop, start),
            "protect": {s.name: _protect(lab, s.name) for s in lab.topo.servers}}


def _overload_events(lab: Driver, pop: str, since: float | None) -> list[dict[str, Any]]:
    """The health agents' ``overload-on``/``off`` decisions at ``pop`` since ``since`` (s after it)."""
    out = []
    for s in lab.topo.servers:
        if s.pop != pop or since is None:
            continue
        for r in read_records(lab.node_dir(s.name) / "health-events.jsonl"):
            if r.get("event") in ("overload-on", "overload-off") and r["t"] >= since:
                out.append({"server": s.name, "event": r["event"], "after_s": round(r["t"] - since, 3)})
    return sorted(out, key=lambda e: e["after_s"])


def protect_of(lab: Driver, server: str) -> dict[str, Any]:
    """What the server's edge worker last wrote to its ``protect.json`` (level, breakers, counters,
    utilisation, peers); empty when it has not written it yet or is replacing it."""
    try:
        data: dict[str, Any] = json.loads((lab.node_dir(server) / "protect.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def level_of(lab: Driver, server: str) -> int | None:
    """The server's degradation level as it last wrote it (None: not written yet)."""
    level = protect_of(lab, server).get("level")
    return None if level is None else int(level)


def _protect(lab: Driver, server: str) -> dict[str, Any]:
    data = protect_of(lab, server)
    return {k: data.get(k) for k in ("level", "utilisation", "counters")} if data else {}


# -- circuit breaker against the origin ------------------------------------------------------------

FETCH_WORKER = """
async def fetch(request, env, ctx):
    try:
        r = await env.fetch("http://origin/data")
    except ConnectionError as exc:
        return {"status": 503, "body": "origin unavailable: " + str(exc)}
    return {"status": r.status, "body": r.body}
"""
FETCH_HOST = "fetcher.example"


def client_get(lab: Driver, client: str, host: str, timeout: float = 10.0) -> tuple[int, str]:
    """One GET / from ``client`` through anycast with ``Host: host``: status and body (see
    :func:`lab.load.client_http.client_request`)."""
    status, _server, body = client_request(lab, client, host, "/", timeout)
    return status, body


def origin_status(lab: Driver, origin: str = "origin") -> dict[str, Any]:
    """The origin's counters (``served``, ``failed``) and mode, from its admin socket."""
    sock = lab.node_dir(origin) / "origin.sock"
    status: dict[str, Any] = json.loads(unix_http.request(str(sock), "GET", "/admin/status", timeout=5)[1])
    return status


def breaker_state(lab: Driver, key: str) -> dict[str, Any]:
    """The breaker ``deployment/dependency`` as the edge workers last reported it (any server)."""
    states: dict[str, dict[str, Any]] = {}
    for s in lab.topo.servers:
        states.update(protect_of(lab, s.name).get("breakers", {}))
    return states.get(key, {})


def breaker_run(lab: Driver, client: str, timeout: float = 120.0) -> dict[str, Any]:
    """``origin-errors`` until the origin's breaker opens, then the origin restored at once: how many
    failures the origin saw when it opened, and how long from opening until half-open probes closed it
    again — against the configured threshold and open time. Raises WaitTimeout past ``timeout``."""
    lab.deploy("fetcher", FETCH_HOST, FETCH_WORKER)
    before = origin_status(lab)["failed"]
    lab.fail("origin-errors", "origin")
    try:
        def opened() -> float | None:
            status, body = client_get(lab, client, FETCH_HOST)
            return monotonic() if status == 503 and "is open" in body else None

        t_open = wait_for(opened, timeout=timeout, what="the origin's breaker to open", interval=0.0)
        failures = origin_status(lab)["failed"] - before
    finally:
        lab.restore("origin")

    def closed() -> float | None:
        client_get(lab, client, FETCH_HOST)
        return monotonic() if breaker_state(lab, "fetcher/origin").get("mode") == "closed" else None

    t_closed = wait_for(closed, timeout=timeout, what="the origin's breaker to close", interval=0.1)
    cfg = lab.topo.spec.settings.breakers["origin"]
    return {"open_after_failures": failures, "closed_after_s": round(t_closed - t_open, 2),
            "configured": {"failure_threshold": cfg.failure_threshold, "open_s": cfg.open_s,
                           "success_threshold": cfg.success_threshold, "half_open_probes": cfg.half_open_probes}}
