#!/usr/bin/env python3
"""Benchmark (not a test): the PoP platform's runtime and control plane.

1. **Throughput per core.** The edge worker (front, spawner, isolates) pinned to CPU 0 serves a trivial
   worker; ``wrk`` pinned to CPU 1 drives it over keep-alive connections — with the isolates sandboxed
   (tenant/sandbox.py) and, side by side in the same run, without (``--no-sandbox``, the reference).
   Shedding and rate limits are off (capacity, account and deployment rates 10⁹/s) so that every answer
   is the runtime's; only 2xx answers count (``served_2xx_per_s``), the rest are reported. Beside it, a
   bare aiohttp hello-world on the same pinning (its default asyncio loop, and uvloop). All run in a
   namespace of their own (``anylab-bench-worker``, loopback only) that is removed afterwards.
2. **Cold start.** From a request's arrival to the handler running in a *new* isolate (spawner spawn,
   code load, first call), ``--cold`` times; p50/p99; sandboxed and not, side by side.
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
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    non_2xx = int(errors.group(1)) if errors else 0
    served = 0.0
    if total:
        seconds_run = float(total.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
        served = (int(total.group(1)) - non_2xx) / seconds_run
    # p50/p99 are wrk's over every answer; with shedding off (see throughput) every answer is a 2xx.
    return {"served_2xx_per_s": round(served, 1), "answers_per_s": float(rps.group(1)) if rps else 0.0,
            "p50_ms": lat("50"), "p99_ms": lat("99"), "non_2xx": non_2xx}


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
        unlimited = 1e9  # shedding and rate limits off: the runtime is measured, not the protection
        version, sha, data = artifact_of("hello", {"code": HELLO, "host": "bench.example",
                                                   "rate_per_s": unlimited, "rate_per_min": unlimited})
        store.put(version, sha, data)
        store.set_current({"hello": version})
        edge = [sys.executable, "-m", "pop_agent.edge", "--pop", "bench", "--server", "bench-s1",
                "--address", "127.0.0.1", "--port", "18080", "--udp-port", "18007", "--health-port", "18081",
                "--deployments", str(tmp / "store"), "--capacity-rps", str(unlimited),
                "--account-limits", json.dumps({"requests_per_s": unlimited})]
        runtime = serve_and_load(edge, "http://127.0.0.1:18080/", "bench.example", seconds, connections)
        reference = serve_and_load([*edge, "--no-sandbox"], "http://127.0.0.1:18080/", "bench.example", seconds,
                                   connections)
        front = serve_and_load(edge, "http://127.0.0.1:18080/", "nobody.example", seconds, connections)
        (tmp / "bare.py").write_text(BARE)
        bare = {loop: serve_and_load([sys.executable, str(tmp / "bare.py"), loop], "http://127.0.0.1:18090/",
                                     "bench.example", seconds, connections) for loop in ("asyncio", "uvloop")}
    finally:
        subprocess.run(["ip", "netns", "delete", NETNS], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"protection": "shedding and rate limits off (capacity, account and deployment rates 1e9/s)",
            "runtime": runtime, "runtime_without_sandbox": reference, "front_only_404": front, "bare_aiohttp": bare,
            "sandbox_cost": round(1 - runtime["served_2xx_per_s"] / reference["served_2xx_per_s"], 3)
            if reference["served_2xx_per_s"] else None,
            "ratio_to_bare_aiohttp": round(runtime["served_2xx_per_s"] / bare["asyncio"]["served_2xx_per_s"], 2),
            "ratio_to_bare_aiohttp_uvloop": round(runtime["served_2xx_per_s"] / bare["uvloop"]["served_2xx_per_s"],
                                                  2)}


def cold_start(samples: int, gap_s: float, sandboxed: bool = True) -> dict[str, Any]:
    """Request arrival → handler running in a new isolate, in ms, as the edge does it: the spawn in a
    worker thread, the first call on the edge's (uvloop) event loop. ``gap_s`` between cold starts: with
    a gap the spawner's next spare is forked and warmed in time; without one (a burst) it is not."""
    import uvloop

    spawner = IsolateSpawner(sandboxed=sandboxed)
    spawner.start()
    times: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for i in range(samples):
            t0 = monotonic()
            iso = await loop.run_in_executor(None, spawner.spawn, HELLO + f"# {i}\n", {}, Limits(), f"bench{i % 4}")
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
            "samples": samples, "gap_s": gap_s, "sandboxed": sandboxed}


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
    parser.add_argument("--skip", action="append", default=[], choices=("throughput", "cold", "deploys"),
                        help="leave a part out (repeatable)")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": {"cpus": len(__import__("os").sched_getaffinity(0))}}
    if "throughput" not in args.skip:
        result["throughput"] = throughput(args.seconds, args.connections)
    if "cold" not in args.skip:
        # Sandboxed and not, alternating, so that a drift of the machine hits both alike.
        for name, gap in (("cold_start", 0.05), ("cold_start_burst", 0.0)):
            result[name] = cold_start(args.cold, gap)
            result[name + "_without_sandbox"] = cold_start(args.cold, gap, sandboxed=False)
    if "deploys" not in args.skip:
        result["deploy_propagation_global"] = propagation(args.deploys)
    result["goals"] = {"req_per_s_per_core": 15000, "cold_start_ms": 5, "ratio_to_bare_aiohttp": 0.6}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
