#!/usr/bin/env python3
"""Benchmark (not a test): the PoP platform's runtime and control plane.

1. **Throughput per core.** The edge worker (front, spawner, isolates) pinned to CPU 0 serves a trivial
   worker; ``wrk`` pinned to CPU 1 drives it over keep-alive connections. Beside it, a bare aiohttp
   hello-world on the same pinning (its default asyncio loop, and uvloop). Both run in a namespace of
   their own (``anylab-bench-worker``, loopback only) that is removed afterwards.
2. **Cold start.** From a request's arrival to the handler running in a *new* isolate (spawner spawn,
   code load, first call), ``--cold`` times; p50/p99.
3. **Deploy propagation.** ``global.yaml`` up; ``--deploys`` deploys of a new version to every PoP, each
   timed from the control plane's commit to every one of the 12 PoP servers running it.

    sudo .venv/bin/python bench/worker.py [--seconds 10] [--connections 32] [--cold 200] [--deploys 10]

Prints one JSON document on stdout; goals from the issue are in ``goals``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from control_plane.store import artifact_of  # noqa: E402
from core.clock import monotonic  # noqa: E402
from core.wait import wait_for  # noqa: E402
from pop_agent.sync import LocalStore  # noqa: E402
from tenant.isolate import IsolateSpawner, Limits  # noqa: E402
from tenant.worker_api import Request  # noqa: E402

NETNS = "anylab-bench-worker"
HELLO = "async def fetch(request, env, ctx):\n    return 'hello\\n'\n"
BARE = """
import sys
from aiohttp import web  # noqa: E402
if sys.argv[1] == "uvloop":
    import uvloop; uvloop.install()
async def hello(request):
    return web.Response(text="hello\\n")
app = web.Application(); app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=18090, access_log=None, print=None)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def in_ns(argv: list[str], cpu: int) -> list[str]:
    return ["ip", "netns", "exec", NETNS, "taskset", "-c", str(cpu), *argv]


def wrk(url: str, host: str, seconds: float, connections: int) -> dict[str, float]:
    """Run wrk (CPU 1) and parse requests/s and latency percentiles (ms)."""
    out = subprocess.run(in_ns(["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency",
                                "-H", f"Host: {host}", url], 1),
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def lat(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"req_per_s": float(rps.group(1)) if rps else 0.0, "p50_ms": lat("50"), "p99_ms": lat("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


def serve_and_load(argv: list[str], url: str, host: str, seconds: float, connections: int) -> dict[str, float]:
    """Start a server (CPU 0) in the bench namespace, wait until it answers, load it, stop it."""
    proc = subprocess.Popen(in_ns(argv, 0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = ["ip", "netns", "exec", NETNS, "curl", "-s", "-o", "/dev/null", "-H", f"Host: {host}", url]
        wait_for(lambda: subprocess.run(probe, check=False).returncode == 0, timeout=20, what=f"{argv[2]} to answer",
                 interval=0.1)
        return wrk(url, host, seconds, connections)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def throughput(seconds: float, connections: int) -> dict[str, Any]:
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="anylab-bench-"))
    try:
        subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"], check=True)
        store = LocalStore(tmp / "store")
        version, sha, data = artifact_of("hello", {"code": HELLO, "host": "bench.example"})
        store.put(version, sha, data)
        store.set_current({"hello": version})
        edge = [sys.executable, "-m", "pop_agent.edge", "--pop", "bench", "--server", "bench-s1",
                "--address", "127.0.0.1", "--port", "18080", "--udp-port", "18007", "--health-port", "18081",
                "--deployments", str(tmp / "store")]
        runtime = serve_and_load(edge, "http://127.0.0.1:18080/", "bench.example", seconds, connections)
        front = serve_and_load(edge, "http://127.0.0.1:18080/", "nobody.example", seconds, connections)
        (tmp / "bare.py").write_text(BARE)
        bare = {loop: serve_and_load([sys.executable, str(tmp / "bare.py"), loop], "http://127.0.0.1:18090/",
                                     "bench.example", seconds, connections) for loop in ("asyncio", "uvloop")}
    finally:
        subprocess.run(["ip", "netns", "delete", NETNS], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"runtime": runtime, "front_only_404": front, "bare_aiohttp": bare,
            "ratio_to_bare_aiohttp": round(runtime["req_per_s"] / bare["asyncio"]["req_per_s"], 2),
            "ratio_to_bare_aiohttp_uvloop": round(runtime["req_per_s"] / bare["uvloop"]["req_per_s"], 2)}


def cold_start(samples: int, gap_s: float) -> dict[str, float]:
    """Request arrival → handler running in a new isolate, in ms, as the edge does it: the spawn in a
    worker thread, the first call on the edge's (uvloop) event loop. ``gap_s`` between cold starts: with
    a gap the spawner's next spare is forked and warmed in time; without one (a burst) it is not."""
    import uvloop

    spawner = IsolateSpawner()
    spawner.start()
    times: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for i in range(samples):
            t0 = monotonic()
            iso = await loop.run_in_executor(None, spawner.spawn, HELLO + f"# {i}\n", {}, Limits())
            result = await iso.acall(Request("GET", "/", {"host": "bench.example"}))
            assert result.t_handler is not None, result.response.body
            times.append((result.t_handler - t0) * 1000)
            iso.kill()
            if gap_s:
                await asyncio.sleep(gap_s)  # the pace of the sampling, not a wait for a state

    try:
        uvloop.run(run())
    finally:
        spawner.stop()
    return {"p50_ms": round(percentile(times, 0.5), 2), "p99_ms": round(percentile(times, 0.99), 2),
            "samples": samples, "gap_s": gap_s}


def propagation(deploys: int) -> dict[str, Any]:
    from lab.run.lab import Lab

    worst, all_servers = [], []
    with Lab.from_file(PROJECT / "topologies" / "global.yaml", name="bworker") as lab:
        for i in range(deploys):
            done = lab.deploy("bench", "bench.example", HELLO, {"RUN": str(i)})
            values = list(done.propagation.values())
            worst.append(max(values) * 1000)
            all_servers += [v * 1000 for v in values]
    return {"servers": len(lab.topo.servers), "deploys": deploys,
            "all_servers_p50_ms": round(statistics.median(worst), 1), "all_servers_max_ms": round(max(worst), 1),
            "per_server_p50_ms": round(statistics.median(all_servers), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cold", type=int, default=200)
    parser.add_argument("--deploys", type=int, default=10)
    args = parser.parse_args()
    result = {
        "machine": {"cpus": len(__import__("os").sched_getaffinity(0))},
        "throughput": throughput(args.seconds, args.connections),
        "cold_start": cold_start(args.cold, 0.05),
        "cold_start_burst": cold_start(args.cold, 0.0),
        "deploy_propagation_global": propagation(args.deploys),
        "goals": {"req_per_s_per_core": 15000, "cold_start_ms": 5, "ratio_to_bare_aiohttp": 0.6},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
