"""Authoritative DNS servers as the lab's daemons, one class per server software, looked up by kind in
:data:`KINDS`: ``knot`` (Knot DNS 3.2) and ``nsd`` (NSD 4.6). Each serves zones as the primary (from a zone
file the lab renders) or as a secondary (transferred from its primaries, told of changes by NOTIFY, with
IXFR where the primary has the differences). Two programs, not one, for diversity: a bug or a bad
release of one does not take down every provider.

Each ``validate`` is the server's own config check (``knotc conf-check``, ``nsd-checkconf``); ``ready``
is an SOA query of its first zone answered with authority.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.daemon import Daemon, NodeEnv
from dnsd.probe import ask, soa_serial
from dnsd.zone import Zone, render

PORT = 53


@dataclass(frozen=True)
class Served:
    """A zone as one server serves it: the primary (no ``primaries``) loads ``zone``'s file and notifies
    and transfers to ``secondaries``; a secondary transfers it from ``primaries`` and takes their NOTIFY."""

    zone: Zone
    primaries: tuple[str, ...] = ()
    secondaries: tuple[str, ...] = ()

    @property
    def primary(self) -> bool:
        return not self.primaries


class AuthServer(Daemon):
    """An authoritative server on ``listen`` (addresses, port 53) serving ``served``."""

    kind: ClassVar[str]

    def __init__(self, env: NodeEnv, listen: tuple[str, ...], served: tuple[Served, ...]) -> None:
        super().__init__(env)
        if not listen or not served:
            raise self.error("an authoritative server needs an address to listen on and a zone")
        self.listen, self.served = listen, served

    def zone_file(self, zone: Zone) -> Path:
        return self.env.dir / f"{self.name}-zones" / f"{zone.origin.rstrip('.') or 'root'}.zone"

    def zone_files(self) -> dict[Path, str]:
        return {self.zone_file(s.zone): render(s.zone) for s in self.served if s.primary}

    def before_start(self) -> None:
        (self.env.dir / f"{self.name}-zones").mkdir(parents=True, exist_ok=True)
        for path, text in self.zone_files().items():
            path.write_text(text)

    def ready(self) -> bool:
        """A primary: it answers its first zone's SOA with authority. A secondary: it answers at all (its
        zone comes by transfer once the lab's routes are up: :func:`lab.run.dns.wait_dns`)."""
        first = self.served[0]
        if first.primary:
            return soa_serial(self.env.netns, self.listen[0], first.zone.origin) is not None
        return ask(self.env.netns, self.listen[0], first.zone.origin, "SOA") is not None

    def serial(self, origin: str) -> int | None:
        """The serial this server answers for ``origin`` now (None: it does not answer it)."""
        return soa_serial(self.env.netns, self.listen[0], origin)


class Knot(AuthServer):
    name = "knot"
    kind = "knot"

    def conf(self) -> str:
        d = self.env.dir
        remotes = sorted({a for s in self.served for a in (*s.primaries, *s.secondaries)})
        listen = ", ".join(f"{a}@{PORT}" for a in self.listen)
        # NSID (RFC 5001): an answer says which node gave it (which node of an anycast provider).
        lines = ["server:", f'    rundir: "{d / "knot-run"}"', f"    listen: [ {listen} ]", f"    nsid: {self.node}",
                 "log:", "  - target: stdout", "    any: info",
                 "database:", f'    storage: "{d / "knot-db"}"']
        if remotes:
            lines.append("remote:")
            for i, a in enumerate(remotes):
                # From its own address: the peer's ACL names it (a node may hold more than one).
                lines += [f"  - id: r{i}", f"    address: {a}@{PORT}", f"    via: {self.listen[0]}"]
            lines.append("acl:")
            for i, a in enumerate(remotes):
                lines += [f"  - id: a{i}", f"    address: [ {a} ]", "    action: [ transfer, notify ]"]
        lines += ["template:", "  - id: default", f'    storage: "{d / "knot-zones"}"', "    zonefile-sync: -1",
                  "    zonefile-load: difference", "    journal-content: changes", "    semantic-checks: on"]
        lines.append("zone:")
        for s in self.served:
            lines += [f"  - domain: {s.zone.origin}", f'    file: "{self.zone_file(s.zone)}"']
            peers = s.secondaries if s.primary else s.primaries
            ids = [f"r{remotes.index(a)}" for a in peers]
            acls = [f"a{remotes.index(a)}" for a in peers]
            if s.primary and ids:
                lines.append(f"    notify: [ {', '.join(ids)} ]")
            if not s.primary:
                lines.append(f"    master: [ {', '.join(ids)} ]")
            if acls:
                lines.append(f"    acl: [ {', '.join(acls)} ]")
        return "\n".join(lines) + "\n"

    def render_config(self) -> dict[Path, str]:
        return {self.path(".conf"): self.conf()}

    def before_start(self) -> None:
        super().before_start()
        for sub in ("knot-run", "knot-db"):
            (self.env.dir / sub).mkdir(parents=True, exist_ok=True)

    def validate(self) -> None:
        self.run_check(["knotc", "-c", str(self.path(".conf")), "conf-check"], "knotc conf-check")

    def argv(self) -> list[str]:
        return ["knotd", "-c", str(self.path(".conf"))]

    def knotc(self, *command: str) -> list[str]:
        """The argv of a blocking ``knotc`` command to this server (``-b``: it returns when done)."""
        return ["knotc", "-c", str(self.path(".conf")), "-s", str(self.env.dir / "knot-run" / "knot.sock"), "-b",
                *command]

    def reload(self) -> None:
        """Load the zone files again (a primary's new serial is then notified to its secondaries)."""
        self.before_start()
        self.run_check(self.knotc("zone-reload"), "knotc zone-reload")

    def notify(self, origin: str) -> None:
        """Send NOTIFY for ``origin`` to its secondaries now (one that has no copy yet transfers it)."""
        self.run_check(self.knotc("zone-notify", origin), "knotc zone-notify")


class Nsd(AuthServer):
    name = "nsd"
    kind = "nsd"

    def conf(self) -> str:
        d = self.env.dir
        lines = ["server:", *(f"    ip-address: {a}" for a in self.listen), f"    port: {PORT}",
                 '    username: ""', '    chroot: ""', f'    zonesdir: "{d / "nsd-zones"}"',
                 f'    zonelistfile: "{d / "nsd-zone.list"}"', f'    xfrdfile: "{d / "nsd-xfrd.state"}"',
                 f'    xfrdir: "{d / "nsd-xfr"}"', f'    pidfile: "{d / "nsd.pid"}"', '    database: ""',
                 "    verbosity: 1", "    hide-version: yes", f'    nsid: "ascii_{self.node}"',
                 # Load each transfer at once: by default NSD loads at most one a second, and deploys a
                 # second apart then wait up to a second for the one before (measured: 1.09 s vs 0.1 s).
                 "    xfrd-reload-timeout: 0",
                 "remote-control:", "    control-enable: no"]
        for s in self.served:
            lines += ["zone:", f"    name: {s.zone.origin}", f'    zonefile: "{self.zone_file(s.zone)}"',
                      f"    outgoing-interface: {self.listen[0]}"]  # its own address: the peer's ACL names it
            for a in s.primaries:
                lines += [f"    request-xfr: {a} NOKEY", f"    allow-notify: {a} NOKEY"]
            for a in s.secondaries:
                lines += [f"    notify: {a} NOKEY", f"    provide-xfr: {a} NOKEY"]
        return "\n".join(lines) + "\n"

    def render_config(self) -> dict[Path, str]:
        return {self.path(".conf"): self.conf()}

    def before_start(self) -> None:
        super().before_start()
        (self.env.dir / "nsd-xfr").mkdir(parents=True, exist_ok=True)

    def validate(self) -> None:
        self.run_check(["nsd-checkconf", str(self.path(".conf"))], "nsd-checkconf")

    def argv(self) -> list[str]:
        return ["nsd", "-d", "-c", str(self.path(".conf"))]


#: Authoritative server kinds by name.
KINDS: dict[str, type[AuthServer]] = {cls.kind: cls for cls in (Knot, Nsd)}
