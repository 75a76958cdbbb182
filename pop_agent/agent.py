"""One process per PoP server: the edge worker, its health agent and its KV replica in one event loop.

Split, a server runs three Python processes beside ExaBGP; each costs an interpreter's memory, its own
timers and wake-ups, and the health agent checks the edge over a TCP connection every interval. At
hundreds of servers on one machine that idle work was most of the lab's CPU (issue 8's budget: ≤ 0.2 %
of a core per server). Folded, they share one loop: the agent's check of the edge's ``/healthz`` is a
call (:meth:`pop_agent.edge.Edge.health`), the KV replica serves on 127.0.0.1 as before.

What a separate agent gave for free — it outlives a crashed edge and withdraws — is kept by a dead-man's
switch: the agent holds its connection to the ExaBGP API process open (``lease_s``, renewed every check
interval, :class:`bgp.exabgp_api.Hold`); when the process dies the kernel closes it, when it hangs the
lease runs out, and either way the API process withdraws (``agent-lost`` in ``api-events.jsonl``).

On SIGTERM/SIGINT the agent withdraws first, then the KV replica and the edge stop.

Run as ``python -m pop_agent.agent EDGE-ARGS --kv-config K [--health-config H]`` (EDGE-ARGS as
:mod:`pop_agent.edge`'s; written by :class:`lab.run.launchers.PopAgent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from core.timers import Flag
from health.agent import Agent, AgentConfig
from kv import replica
from pop_agent import edge


async def _serve_kv(cfg: dict[str, Any], stopping: Flag) -> None:
    """The KV replica until cancelled; if it fails, the whole process stops (and says why)."""
    try:
        await replica.serve(cfg, handle_signals=False)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        print(f"pop-agent: KV replica failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        stopping.set()
        raise


def main() -> None:
    parser = edge.parser()
    parser.description = __doc__
    parser.add_argument("--kv-config", type=Path, required=True, help="the KV replica's config (kv.replica)")
    parser.add_argument("--health-config", type=Path, help="the health agent's config (health.agent)")
    args = parser.parse_args()
    kv_config = json.loads(args.kv_config.read_text())
    health = AgentConfig.from_json(json.loads(args.health_config.read_text())) if args.health_config else None

    async def companion(e: edge.Edge, stopping: Flag) -> None:
        kv = asyncio.create_task(_serve_kv(kv_config, stopping))
        try:
            # The first check must find the edge serving: wait for it (or for the stop, if it fails).
            started, stopped = asyncio.create_task(e.started.wait()), asyncio.create_task(stopping.wait())
            await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            stopped.cancel()
            if health is not None and not stopping.is_set():
                await Agent(health, local=(args.health_port, e.health), phase=e.phase).run(stopping)
            else:
                await stopping.wait()
        finally:
            kv.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await kv

    edge.run(args, companion)


if __name__ == "__main__":
    main()
