"""The health agent of one PoP server: the thin I/O around :mod:`health.fsm`.

It runs the checks when the machine asks, watches the drain file, carries out the machine's actions —
tells the ExaBGP API process what to announce (``set`` normal / demoted / withdrawn), runs hooks with
STATE in their environment, logs every decision as a JSON line stamped with CLOCK_MONOTONIC — and
keeps a Prometheus textfile and a state file current. SIGTERM/SIGINT withdraw and end it.

If the API process cannot be reached (the speaker crashed) the wanted mode is re-sent on every
following step until it is accepted, so a restarted speaker converges to the agent's decision.

With ``lease_s`` (as the lab runs it: a process of its own, or folded into the edge's by
:mod:`pop_agent.agent`) it holds its connection to the API process open as a dead-man's switch and renews
it on its checks (:func:`renew_period`): if the agent dies or hangs, nobody is left to withdraw, so the API
process does it when the connection closes or the lease runs out.

Run as ``python -m health.agent --config D/health.json`` (written by :class:`lab.run.launchers.HealthAgent`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bgp.exabgp_api import Hold, request
from core.clock import monotonic
from core.files import write_atomic
from core.timers import SLACK_S, Flag, next_tick
from health import fsm
from health.checks import KINDS, Check, LocalCheck, is_local_healthz, run_checks

HOOK_TIMEOUT_S = 10.0



@dataclass(frozen=True)
class AgentConfig:
    server: str
    pop: str
    fsm: fsm.Config
    checks: tuple[Check, ...]
    combine: Literal["all", "any"]
    hooks: tuple[tuple[str, ...], ...]
    api_socket: Path
    drain_file: Path
    events: Path
    metrics: Path
    state: Path
    #: The edge worker's ``protect.json`` (its utilisation), read when overload demotion is on.
    protect: Path | None = None
    #: Hold the API connection with this lease (a dead-man's switch); None: one connection per request.
    lease_s: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentConfig:
        """Raises KeyError/ValueError/TypeError on a malformed config."""
        f = data["fsm"]
        timeout = float(f["timeout"])
        checks: list[Check] = []
        for c in data["checks"]:
            if c["kind"] not in KINDS:
                raise ValueError(f"unknown check kind {c['kind']!r}")
            checks.append(KINDS[c["kind"]](c, timeout))
        if not checks:
            raise ValueError("no checks configured")
        return cls(
            server=str(data["server"]), pop=str(data["pop"]),
            fsm=fsm.Config(rise=int(f["rise"]), fall=int(f["fall"]), interval=float(f["interval"]),
                           fast_interval=float(f["fast_interval"]), timeout=timeout, on_down=f["on_down"],
                           drain_mode=f["drain_mode"], debounce=float(f["debounce"]),
                           **{k: float(v) for k, v in data.get("overload", {}).items()}),
            checks=tuple(checks), combine=data.get("combine", "all"),
            hooks=tuple(tuple(str(a) for a in h) for h in data.get("hooks", [])),
            api_socket=Path(data["api_socket"]), drain_file=Path(data["drain_file"]),
            events=Path(data["events"]), metrics=Path(data["metrics"]), state=Path(data["state"]),
            protect=Path(data["protect"]) if data.get("protect") else None,
            lease_s=float(data["lease_s"]) if data.get("lease_s") else None,
        )


@dataclass
class Counters:
    checks_ok: int = 0
    checks_failed: int = 0
    transitions: int = 0
    api_errors: int = 0
    last_check_s: float = 0.0


def renew_period(interval: float, lease: float) -> float:
    """How often an agent renews its lease: every k-th check interval (so that renewals ride on the
    checks' wake-ups), at least twice per lease."""
    if interval > lease / 2:
        return lease / 2
    return interval * max(1, math.floor(lease / 2 / interval))


#: The metrics and state files are rewritten at once on a change of health or announcement, else this
#: often (their counters): at hundreds of servers a write a second each was most of an idle agent's work.
METRICS_S = 10.0


class Agent:
    """The agent's loop. ``local`` = (port, health): the agent is folded into the edge's process, and its
    HTTP checks of ``/healthz`` on 127.0.0.1:port become calls of ``health`` (None when healthy, else what
    is wrong)."""

    def __init__(self, config: AgentConfig, local: tuple[int, Callable[[], str | None]] | None = None,
                 phase: float | None = None) -> None:
        self.config = config
        self.checks: list[Check] = list(config.checks)
        if local is not None:
            port, health = local
            self.checks = [LocalCheck(health, c.timeout) if is_local_healthz(c, port) else c for c in self.checks]
        self.hold: Hold | None = None
        self.next_alive = 0.0
        #: Checks on the grid ``phase + k × delay`` (the edge's tick, when folded into its process: one
        #: wake-up for both); None: each check ``delay`` after the last.
        self.phase = phase
        self.state = fsm.State()
        self.counters = Counters()
        self.log_file = open(config.events, "a", buffering=1)  # noqa: SIM115
        self.next_check = 0.0
        #: When the last check started: the next one is due a delay after it.
        self.check_started: float | None = None
        self.next_tick: float | None = None
        self.unsent: str | None = None  # a mode the API process has not accepted yet
        self.hook_tasks: set[asyncio.Task[None]] = set()
        self.stopping = Flag()

    # -- effects -------------------------------------------------------------------------------

    def send(self, mode: str) -> None:
        try:
            if self.config.lease_s is None:
                request(self.config.api_socket, "set", timeout=1.0, mode=mode)
            else:
                if self.hold is None:
                    self.hold = Hold(self.config.api_socket, self.config.lease_s)
                try:
                    self.hold.set(mode)
                except (OSError, ValueError):
                    self.drop_hold()
                    raise
                self.next_alive = monotonic() + self.alive_every
            self.unsent = None
        except (OSError, ValueError) as exc:
            self.counters.api_errors += 1
            if self.unsent != mode:
                self.write_log({"t": monotonic(), "event": "api-unreachable", "mode": mode, "detail": str(exc)})
            self.unsent = mode

    @property
    def alive_every(self) -> float:
        assert self.config.lease_s is not None
        return renew_period(self.config.fsm.interval, self.config.lease_s)

    def drop_hold(self) -> None:
        if self.hold is not None:
            with contextlib.suppress(OSError):
                self.hold.close()
            self.hold = None

    def renew(self, early: float = 0.0) -> None:
        """Renew the lease when due (or due within ``early`` seconds: a renewal that rides on a wake-up for
        a check saves one of its own); a lost API connection means the wanted mode must be sent again."""
        if self.hold is None or monotonic() < self.next_alive - early:
            return
        try:
            self.hold.alive()
            self.next_alive = monotonic() + self.alive_every
        except OSError:
            self.drop_hold()
            self.unsent = self.state.announced

    def write_log(self, record: dict[str, Any]) -> None:
        self.log_file.write(json.dumps(record) + "\n")

    async def run_hook(self, argv: tuple[str, ...], health: str) -> None:
        env = {**os.environ, "STATE": health, "SERVER": self.config.server, "POP": self.config.pop}
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            self.write_log({"t": monotonic(), "event": "hook-failed", "argv": list(argv), "detail": str(exc)})
            return
        try:
            code = await asyncio.wait_for(proc.wait(), HOOK_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        if code != 0:
            self.write_log({"t": monotonic(), "event": "hook-failed", "argv": list(argv), "status": code})

    def carry_out(self, actions: list[fsm.Action], now: float) -> None:
        for action in actions:
            if isinstance(action, fsm.Announce):
                self.send(action.mode)
            elif isinstance(action, fsm.Withdraw):
                self.send("withdrawn")
            elif isinstance(action, fsm.RunHooks):
                self.counters.transitions += 1
                for argv in self.config.hooks:
                    task = asyncio.ensure_future(self.run_hook(argv, action.health))
                    self.hook_tasks.add(task)
                    task.add_done_callback(self.hook_tasks.discard)
            elif isinstance(action, fsm.Log):
                self.write_log({"t": action.t, "event": action.event, "health": action.health,
                                "announced": action.announced, "detail": action.detail,
                                "server": self.config.server})
            elif isinstance(action, fsm.ScheduleCheck):
                # From the check's start, not its result: a fixed cadence, so a hung check costs its
                # timeout once (the detection bound is a worst case), not its timeout plus the delay.
                self.next_check = (self.check_started if self.check_started is not None else now) + action.delay
                if self.phase is not None and action.delay > 0:
                    # The grid point nearest the due time: within half a delay of it either way.
                    self.next_check = next_tick(self.next_check - action.delay / 2, action.delay, self.phase)
            elif isinstance(action, fsm.ScheduleTick):
                self.next_tick = action.at

    def step(self, event: fsm.Event) -> None:
        before = (self.state.health, self.state.announced)
        self.state, actions = fsm.step(self.config.fsm, self.state, event)
        self.carry_out(actions, event.t)
        if (self.state.health, self.state.announced) != before:
            self.write_files()

    def utilisation(self) -> float | None:
        """The edge's utilisation as it last wrote it (None: not written yet, or being replaced)."""
        assert self.config.protect is not None
        try:
            return float(json.loads(self.config.protect.read_text())["utilisation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_files(self) -> None:
        c, s = self.counters, self.state
        state = {"health": s.health, "announced": s.announced, "draining": s.draining, "overloaded": s.overloaded,
                 "pid": os.getpid(),
                 "t": monotonic()}
        write_atomic(self.config.state, json.dumps(state))
        labels = f'server="{self.config.server}",pop="{self.config.pop}"'
        lines = [
            "# HELP anylab_health_up 1 while the server's checks pass (health up or falling).",
            "# TYPE anylab_health_up gauge",
            f"anylab_health_up{{{labels}}} {int(s.health in ('up', 'falling'))}",
            "# HELP anylab_health_announced What the agent asks to announce (one series per mode).",
            "# TYPE anylab_health_announced gauge",
            *(f'anylab_health_announced{{{labels},mode="{m}"}} {int(s.announced == m)}'
              for m in ("normal", "demoted", "withdrawn")),
            "# TYPE anylab_health_checks_total counter",
            f'anylab_health_checks_total{{{labels},result="ok"}} {c.checks_ok}',
            f'anylab_health_checks_total{{{labels},result="failed"}} {c.checks_failed}',
            "# TYPE anylab_health_transitions_total counter",
            f"anylab_health_transitions_total{{{labels}}} {c.transitions}",
            "# TYPE anylab_health_api_errors_total counter",
            f"anylab_health_api_errors_total{{{labels}}} {c.api_errors}",
            "# TYPE anylab_health_last_check_seconds gauge",
            f"anylab_health_last_check_seconds{{{labels}}} {c.last_check_s:.6f}",
        ]
        write_atomic(self.config.metrics, "\n".join(lines) + "\n")

    # -- loop ----------------------------------------------------------------------------------

    async def run(self, stopping: Flag | None = None) -> None:
        """Check and decide until SIGTERM/SIGINT — or, given ``stopping``, until it is set (the signals are
        then the caller's) — then withdraw."""
        if stopping is not None:
            self.stopping = stopping
        else:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
        # Nothing is announced on this agent's behalf until its own first verdict.
        self.send("withdrawn")
        self.write_files()
        last_metrics = monotonic()
        while not self.stopping.is_set():
            now = monotonic()
            due = min(self.next_check, self.next_tick if self.next_tick is not None else float("inf"),
                      self.next_alive if self.hold is not None else float("inf"))
            if due > now + SLACK_S and await self.stopping.pause_until(due):
                break
            now = monotonic()
            draining = self.config.drain_file.exists()
            if draining != self.state.draining:
                self.step(fsm.DrainChanged(now, draining))
            if self.config.fsm.overload_above is not None and self.config.protect is not None:
                utilisation = self.utilisation()
                if utilisation is not None:
                    self.step(fsm.Load(now, utilisation))
            # A timer may fire up to SLACK_S early: what is due this close is due now (the machine is
            # told the time it asked for, so that it acts on it).
            if self.next_tick is not None and now + SLACK_S >= self.next_tick:
                tick, self.next_tick = self.next_tick, None
                self.step(fsm.Tick(max(now, tick)))
            if now + SLACK_S >= self.next_check:
                self.next_check = float("inf")  # the machine schedules the next one
                self.check_started = monotonic()
                outcome = await run_checks(self.checks, self.config.combine)
                self.counters.last_check_s = outcome.duration
                if outcome.ok:
                    self.counters.checks_ok += 1
                else:
                    self.counters.checks_failed += 1
                # Stamped when the result is known: that is when the agent could act on it.
                self.step(fsm.CheckResult(monotonic(), outcome.ok, "" if outcome.ok else outcome.detail))
            if self.unsent is not None:
                self.send(self.unsent)
            self.renew(early=self.alive_every / 2 if self.hold is not None else 0.0)
            if monotonic() - last_metrics > METRICS_S:
                self.write_files()
                last_metrics = monotonic()
        self.step(fsm.Stop(monotonic()))
        if self.unsent is not None:
            self.send(self.unsent)
        self.drop_hold()
        if self.hook_tasks:
            await asyncio.wait(self.hook_tasks, timeout=HOOK_TIMEOUT_S)
        self.log_file.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = AgentConfig.from_json(json.loads(args.config.read_text()))
    asyncio.run(Agent(config).run())


if __name__ == "__main__":
    main()
