"""A DNS hierarchy in one namespace (issue 23's first step): Knot DNS serves the root, ``test.`` and the
primary of ``edge.test.``; NSD is a secondary of ``edge.test.`` (NOTIFY + IXFR from Knot); Unbound
resolves through it all from the lab's own root hints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.rcode
import pytest

from core.clock import monotonic
from core.daemon import Daemon, NodeEnv
from core.proc import ProcessGroup
from core.wait import wait_for
from dnsd.auth import KINDS as AUTH_KINDS
from dnsd.auth import Knot, Served
from dnsd.probe import ask
from dnsd.resolver import KINDS as RESOLVER_KINDS
from dnsd.zone import Record, Zone
from tests.netns.spaces import daemon_space, refuses_a_bad_config

KNOT, NSD, RESOLVER = "10.53.0.1", "10.53.0.2", "10.53.0.9"
ANYCAST = "203.0.113.1"

ROOT = Zone(".", 1, "a.root.test.", (Record("@", "NS", "a.root.test."), Record("a.root.test.", "A", KNOT),
                                      Record("test.", "NS", "ns.test."), Record("ns.test.", "A", KNOT)))
TLD = Zone("test.", 1, "ns.test.", (Record("@", "NS", "ns.test."), Record("ns", "A", KNOT),
                                     Record("edge", "NS", "ns1.edge.test."), Record("edge", "NS", "ns2.edge.test."),
                                     Record("ns1.edge", "A", KNOT), Record("ns2.edge", "A", NSD)))
EDGE = Zone("edge.test.", 1, "ns1.edge.test.", (Record("@", "NS", "ns1"), Record("@", "NS", "ns2"),
                                                 Record("ns1", "A", KNOT), Record("ns2", "A", NSD),
                                                 Record("*", "A", ANYCAST), Record("hello", "A", ANYCAST)))


@pytest.fixture
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    run_dir = tmp_path_factory.mktemp("run")
    with daemon_space("dns", (KNOT, NSD, RESOLVER), run_dir) as path:
        yield path, run_dir


def started(daemons: list[Daemon]) -> None:
    for d in daemons:
        d.env.dir.mkdir(parents=True, exist_ok=True)
        d.write_config()
        d.validate()  # every one checked before any starts
    for d in daemons:
        d.start()
        d.wait_ready()


def test_a_name_resolves_through_the_labs_root_and_a_zone_change_reaches_the_secondary(
        space: tuple[str, Path]) -> None:
    path, run_dir = space
    procs = ProcessGroup(run_dir)
    env = NodeEnv("dns", path, run_dir / "dns", procs)
    knot = Knot(env, (KNOT,), (Served(ROOT), Served(TLD), Served(EDGE, secondaries=(NSD,))))
    nsd = AUTH_KINDS["nsd"](env, (NSD,), (Served(EDGE, primaries=(KNOT,)),))
    unbound = RESOLVER_KINDS["unbound"](env, (RESOLVER,), {"a.root.test.": KNOT})
    daemons: list[Daemon] = [knot, nsd, unbound]
    try:
        started(daemons)
        wait_for(lambda: nsd.serial("edge.test.") == 1, timeout=10, what="NSD to transfer edge.test", interval=0.05)
        for name in ("hello.edge.test.", "anything.edge.test."):
            reply = ask(path, RESOLVER, name, "A", timeout=2.0, recursion=True)
            assert reply is not None and reply.rcode() == dns.rcode.NOERROR, name
            assert [rr.address for rrset in reply.answer for rr in rrset] == [ANYCAST], name
        # Both providers answer with authority, the same data.
        for server in (KNOT, NSD):
            reply = ask(path, server, "hello.edge.test.", "A")
            assert reply is not None and reply.flags & dns.flags.AA and reply.answer, server
        # A zone change: the primary reloads, notifies, NSD transfers it (IXFR: Knot keeps the difference).
        knot.served = (knot.served[0], knot.served[1],
                       replace(knot.served[2], zone=replace(EDGE, serial=2, records=(
                           *EDGE.records, Record("new", "A", ANYCAST)))))
        t0 = monotonic()
        knot.reload()
        wait_for(lambda: nsd.serial("edge.test.") == 2, timeout=10, what="NSD at serial 2", interval=0.02)
        took = monotonic() - t0
        reply = ask(path, NSD, "new.edge.test.", "A")
        assert reply is not None and reply.answer and took < 5.0  # NOTIFY: well below the 60 s refresh
        assert "[edge.test.] IXFR, outgoing, remote 10.53.0.2" in knot.path(".out").read_text()  # not AXFR
    finally:
        for d in reversed(daemons):
            d.stop()


def test_each_server_refuses_a_config_it_cannot_run(space: tuple[str, Path]) -> None:
    path, run_dir = space
    env = NodeEnv("dns", path, run_dir / "dns", ProcessGroup(run_dir))
    env.dir.mkdir(parents=True)
    for d in (Knot(env, (KNOT,), (Served(EDGE),)), AUTH_KINDS["nsd"](env, (NSD,), (Served(EDGE, primaries=(KNOT,)),)),
              RESOLVER_KINDS["unbound"](env, (RESOLVER,), {"a.root.test.": KNOT})):
        refuses_a_bad_config(d, ".conf", "server:", "\n    no-such-option: 1")
    refuses_a_bad_config(RESOLVER_KINDS["bind"](env, (RESOLVER,), {"a.root.test.": KNOT}), ".conf", "options {",
                         "\n    no-such-option 1;")
