"""Recursive resolvers as the lab's daemons, looked up by kind in :data:`KINDS`: ``unbound`` (Unbound
1.17) and ``bind`` (BIND 9.18's ``named``), two implementations whose server selection and retry timers
differ (what a provider's outage shows). A resolver starts from the lab's own root (root hints naming the
lab's root servers, never the Internet's) and iterates; DNSSEC validation is off (the lab's zones are
unsigned). Both run with their defaults otherwise: their behaviour is what is measured.

``validate`` is the resolver's own check (``unbound-checkconf``, ``named-checkconf``); ``ready`` is an
answer to a query.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from core.daemon import Daemon, NodeEnv
from dnsd.probe import ask

PORT = 53


class Resolver(Daemon):
    """A recursive resolver on ``listen`` (port 53), its root hints ``roots`` (name → address)."""

    kind: ClassVar[str]

    def __init__(self, env: NodeEnv, listen: tuple[str, ...], roots: dict[str, str]) -> None:
        super().__init__(env)
        if not listen or not roots:
            raise self.error("a resolver needs an address to listen on and the root servers")
        self.listen, self.roots = listen, roots

    def hints(self) -> str:
        lines = [f". 3600000 NS {name}" for name in sorted(self.roots)]
        lines += [f"{name} 3600000 A {address}" for name, address in sorted(self.roots.items())]
        return "\n".join(lines) + "\n"

    def ready(self) -> bool:
        """It answers a query at all (resolving needs the lab's routes to the root:
        :func:`lab.run.dns.wait_dns` waits for that)."""
        return ask(self.env.netns, self.listen[0], ".", "SOA", timeout=0.5, recursion=True) is not None


class Unbound(Resolver):
    name = "unbound"
    kind = "unbound"

    def conf(self) -> str:
        d = self.env.dir
        lines = ["server:", *(f"    interface: {a}" for a in self.listen), f"    port: {PORT}",
                 "    do-daemonize: no", '    username: ""', '    chroot: ""', f'    directory: "{d}"',
                 f'    pidfile: "{d / "unbound.pid"}"', "    use-syslog: no", "    verbosity: 1",
                 f'    root-hints: "{self.path("-root.hints")}"', "    access-control: 0.0.0.0/0 allow",
                 '    module-config: "iterator"', "    do-ip6: no", "    do-not-query-localhost: no",
                 # RFC 6761 reserves test., and Unbound answers it locally by default: the lab's TLD is test.
                 '    local-zone: "test." nodefault',
                 "remote-control:", "    control-enable: no"]
        return "\n".join(lines) + "\n"

    def render_config(self) -> dict[Path, str]:
        return {self.path(".conf"): self.conf(), self.path("-root.hints"): self.hints()}

    def validate(self) -> None:
        self.run_check(["unbound-checkconf", str(self.path(".conf"))], "unbound-checkconf")

    def argv(self) -> list[str]:
        return ["unbound", "-d", "-c", str(self.path(".conf"))]


class Bind(Resolver):
    name = "named"
    kind = "bind"

    def conf(self) -> str:
        d = self.env.dir
        listen = " ".join(f"{a};" for a in self.listen)
        lines = ["options {", f'    directory "{d}";', f'    pid-file "{d / "named.pid"}";',
                 f'    session-keyfile "{d / "session.key"}";', f'    managed-keys-directory "{d}";',
                 f"    listen-on port {PORT} {{ {listen} }};", "    listen-on-v6 { none; };",
                 "    recursion yes;", "    allow-query { any; };", "    allow-recursion { any; };",
                 "    dnssec-validation no;", "    notify no;",
                 "};",
                 # No rndc channel: named would listen on 127.0.0.1:953 with the host's rndc key.
                 "controls { };",
                 f'zone "." {{ type hint; file "{self.path("-root.hints")}"; }};']
        return "\n".join(lines) + "\n"

    def render_config(self) -> dict[Path, str]:
        return {self.path(".conf"): self.conf(), self.path("-root.hints"): self.hints()}

    def validate(self) -> None:
        self.run_check(["named-checkconf", str(self.path(".conf"))], "named-checkconf")

    def argv(self) -> list[str]:
        # -g: foreground, log to stderr; -n 1: one worker thread (the lab shares two cores).
        return ["named", "-g", "-n", "1", "-c", str(self.path(".conf"))]


#: Resolver kinds by name.
KINDS: dict[str, type[Resolver]] = {cls.kind: cls for cls in (Unbound, Bind)}
