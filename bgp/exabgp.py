"""ExaBGP 5 on a PoP server: one eBGP session per upstream router, routes driven by our API process."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bgp.exabgp_api import request
from core.daemon import Daemon, NodeEnv
from model.topology import Server


def exabgp_bin(python: str) -> str:
    """The ``exabgp`` next to the interpreter (the venv's), else the one on PATH."""
    beside = Path(python).parent / "exabgp"
    found = str(beside) if beside.exists() else shutil.which("exabgp")
    if not found:
        raise FileNotFoundError("exabgp is not installed (run ./anylab once to set up)")
    return found


def reactor_speed(keepalive: int) -> int:
    """ExaBGP's ``reactor.speed``: its main loop sleeps ``speed × 10 ms`` when nothing is readable (it
    wakes at once for a BGP message or an API line, so reaction time does not depend on it; what waits is
    a keepalive due, sent up to this late — a third of the keepalive keeps it well inside the hold time).
    10 (0.1 s) for keepalives of 1 s; with slower keepalives a third of the keepalive, at most 1 s: an idle
    ExaBGP then wakes once a second instead of ten times (measured at 0.5 s: 0.23 → 0.07 % of a core)."""
    return 10 if keepalive <= 1 else min(100, keepalive * 100 // 3)


def exabgp_env(keepalive: int = 1) -> dict[str, str]:
    """Environment for ExaBGP: foreground, log to stdout, no CLI pipes (the CLI child costs ~28 MB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("exabgp")}
    env.update({
        "exabgp.daemon.user": "root",
        "exabgp.daemon.daemonize": "false",
        "exabgp.log.destination": "stdout",
        "exabgp.log.level": "INFO",
        # A "statistics" log line per counter on every keepalive: the largest part of an idle log.
        "exabgp.log.statistics": "false",
        "exabgp.api.cli": "false",
        "exabgp.api.ack": "true",
        # Its main loop polls every 10 ms otherwise (~0.7 % of a core each); reaction time is unchanged.
        "exabgp.reactor.speed": str(reactor_speed(keepalive)),
    })
    return env


class ExaBgp(Daemon):
    """ExaBGP with the anycast routes in ``routes.json``, announced at start by ``bgp.exabgp_api``."""

    name = "exabgp"

    def __init__(self, env: NodeEnv, server: Server) -> None:
        super().__init__(env)
        self.server = server

    def routes(self) -> dict[str, object]:
        s = self.server
        demote = s.profile.health.demote
        # ExaBGP sends the AS path verbatim (it does not add its own ASN): prepending = repeating it.
        return {"routes": [{"prefix": str(p), "med": s.med, "as_path": [s.asn] * (1 + s.prepend)}
                           for p in s.prefixes],
                "demote": {"prepend": demote.prepend, "med": demote.med}}

    @property
    def bundled_healthcheck(self) -> bool:
        return self.server.health_agent == "exabgp"

    def healthcheck_files(self) -> dict[Path, str]:
        """ExaBGP's own healthcheck with the profile's settings, as close as it allows: its timeout is
        whole seconds (SIGALRM) and its check a shell command, so a GET of ``/healthz`` on the first check's
        host and port is done by bash. Both are scripts because ExaBGP's ``run`` line takes no shell syntax."""
        s, h, d = self.server, self.server.profile.health, self.env.dir
        url = h.checks[0]
        check = (f"exec 3<>/dev/tcp/{url.host}/{url.port} || exit 1\n"
                 "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3\n"
                 "grep -q ok <&3\n")
        argv = [exabgp_bin(self.env.python), "healthcheck", "--no-syslog", "--no-ip-setup", "--withdraw-on-down",
                "--interval", str(h.interval), "--fast-interval", str(h.fast_interval), "--rise", str(h.rise),
                "--fall", str(h.fall), "--timeout", str(max(1, round(h.timeout))), "--disable", str(d / "drain"),
                "--debounce", "--as-path", ' '.join([str(s.asn)] * (1 + s.prepend)),
                "--cmd", f"/bin/bash {d / 'healthz-check.sh'}"]
        for p in s.prefixes:
            argv += ["--ip", str(p)]
        return {d / "healthz-check.sh": check, d / "healthcheck.sh": f"exec {shlex.join(argv)}\n"}

    def render_config(self) -> dict[Path, str]:
        s, t = self.server, self.server.profile
        files: dict[Path, str] = {}
        if self.bundled_healthcheck:
            files = self.healthcheck_files()
            lines = ["process healthcheck {", f"    run /bin/bash {self.env.dir / 'healthcheck.sh'};",
                     "    encoder text;", "}", ""]
        else:
            api = f"{self.env.python} -m bgp.exabgp_api --dir {self.env.dir}"
            lines = ["process anylab-api {", f"    run {api};", "    encoder json;", "}", ""]
        for n in s.neighbors:
            lines += [
                f"neighbor {n.address} {{",
                f"    description \"{n.node}\";",
                f"    router-id {s.router_id};",
                f"    local-address {n.local_address};",
                f"    local-as {s.asn};",
                f"    peer-as {n.asn};",
                f"    hold-time {t.hold};",
                "    family { ipv4 unicast; }",
                *([f"    capability {{ graceful-restart {t.graceful_restart}; }}"] if t.graceful_restart else []),
                "    api {",
                f"        processes [ {'healthcheck' if self.bundled_healthcheck else 'anylab-api'} ];",
                "        neighbor-changes;",
                "    }",
                "}",
                "",
            ]
        return {self.path(".conf"): "\n".join(lines), self.env.dir / "routes.json": json.dumps(self.routes()), **files}

    def validate(self) -> None:
        self.run_check([exabgp_bin(self.env.python), "validate", str(self.path(".conf"))], "exabgp validate",
                       env=exabgp_env(self.server.profile.keepalive))

    @classmethod
    def validate_batch(cls, daemons: Sequence[Daemon]) -> list[str] | None:
        """``exabgp validate`` takes many files and stops at the first bad one, naming it: one run per
        100 servers instead of one Python start each (300 PoPs: ≈ 35 s → 3 s)."""
        speakers = [d for d in daemons if isinstance(d, ExaBgp)]
        for i in range(0, len(speakers), 100):
            chunk = speakers[i:i + 100]
            res = subprocess.run([exabgp_bin(chunk[0].env.python), "validate",
                                  *(str(d.path(".conf")) for d in chunk)],
                                 capture_output=True, text=True, timeout=300, check=False, env=exabgp_env())
            if res.returncode != 0:
                out = (res.stdout + res.stderr).strip()
                bad = next((d for d in chunk if f"{d.path('.conf')} is not" in out), chunk[0])
                return [str(bad.error(f"exabgp validate rejected {bad.path('.conf')}: "
                                      f"{out.splitlines()[-1] if out else res.returncode}"))]
        return []

    def argv(self) -> list[str]:
        return [exabgp_bin(self.env.python), "server", str(self.path(".conf"))]

    def spawn_env(self) -> dict[str, str]:
        return exabgp_env(self.server.profile.keepalive)

    def fork_target(self) -> tuple[str, list[str]] | None:
        # Forked: ExaBGP with its API process as a thread (bgp.exabgp_inproc), one process per server.
        return "bgp.exabgp_inproc", ["server", str(self.path(".conf"))]

    def before_start(self) -> None:
        # The wanted state (api-state.json) is kept: a restarted speaker announces what the health
        # agent and the operator last asked for, as a respawned API process does.
        (self.env.dir / "api.sock").unlink(missing_ok=True)

    def api(self, cmd: str, **args: str) -> dict[str, object]:
        """Send set/announce/withdraw/status to the API process; raises DaemonError if it does not answer."""
        try:
            return request(self.env.dir / "api.sock", cmd, 2.0, **args)
        except (OSError, ValueError) as exc:
            raise self.error(f"API process did not answer {cmd!r}: {exc}") from exc

    def ready(self) -> bool:
        """Ready once ExaBGP has parsed its config and started the API process, which answers (with
        the bundled healthcheck: once the healthcheck process has logged)."""
        if self.bundled_healthcheck:
            out = self.path(".out")
            return out.exists() and "[healthcheck]" in out.read_text(errors="replace")
        try:
            return bool(request(self.env.dir / "api.sock", "status").get("ok"))
        except (OSError, ValueError):
            return False
