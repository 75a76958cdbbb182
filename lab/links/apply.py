"""What a namespace's kernel does for its shaped links: random loss in nftables, bandwidth in HTB, and
which packets go to the relay's queues (iptables NFQUEUE: nft has no ``queue`` in this kernel). Each
function renders one complete, idempotent ruleset for a namespace (pure) or loads it there (replacing
the rules at once: a change never passes through a half-shaped state, and never unhooks a chain, which
would drop every packet the relay holds).

Order on a packet's way out: nftables loss (priority −200), then the relay (mangle, −150), then the HTB
qdisc — lost packets never take the relay's time, and the rate limit acts on what the delay released.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.errors import AnylabError

NFT_TABLE = "anylab_links"
#: Loss is drawn from a uniform in [0, LOSS_SCALE): resolution 1 ppm.
LOSS_SCALE = 1_000_000
#: HTB queue when a link has a bandwidth but no ``queue``: Linux's default txqueuelen.
DEFAULT_QUEUE = 1000


@dataclass(frozen=True)
class Relayed:
    """One interface's relay queues in its namespace: ``out`` for packets leaving through it, ``into`` for
    packets arriving on it (None: that direction is not relayed)."""

    interface: str
    out: int | None
    into: int | None


def nft_loss(losses: Mapping[str, float]) -> str:
    """The nftables script that drops a fraction of what leaves each interface (``losses``: interface →
    fraction in [0, 1)): the table's chain is created if missing, emptied and refilled in one transaction.
    The chain is never deleted: unhooking a chain makes the kernel drop every packet the namespace's relay
    holds (``nfqnl_nf_hook_drop`` flushes all its queues), so a change of one link would lose what is in
    flight on every shaped link of the router."""
    rules = [f'add rule inet {NFT_TABLE} out oifname "{i}" numgen random mod {LOSS_SCALE} < {round(f * LOSS_SCALE)}'
             " counter drop" for i, f in sorted(losses.items()) if f > 0]
    head = [f"table inet {NFT_TABLE} {{", "  chain out {",
            "    type filter hook postrouting priority -200; policy accept;", "  }", "}",
            f"flush chain inet {NFT_TABLE} out"]
    return "\n".join([*head, *rules, ""])


def iptables_queues(relayed: Sequence[Relayed]) -> str:
    """The iptables-restore input (mangle table, loaded with ``--noflush``: its two chains emptied and
    refilled in one transaction, never deleted — see :func:`nft_loss`) sending each relayed direction to
    its queue. No ``--queue-bypass``: with no relay listening, the kernel drops the packets."""
    lines = ["*mangle", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", "-F PREROUTING", "-F POSTROUTING"]
    for r in relayed:
        if r.out is not None:
            lines.append(f"-A POSTROUTING -o {r.interface} -j NFQUEUE --queue-num {r.out}")
        if r.into is not None:
            lines.append(f"-A PREROUTING -i {r.interface} -j NFQUEUE --queue-num {r.into}")
    return "\n".join([*lines, "COMMIT", ""])


def tc_bandwidth(interface: str, mbit: float | None, queue: int | None) -> list[list[str]]:
    """The ``tc`` commands giving ``interface`` an HTB rate limit of ``mbit`` with a pfifo of ``queue``
    packets, or (``mbit`` None) back to no qdisc. The first command clears what was there (its failure —
    nothing to delete — is expected)."""
    cmds = [["qdisc", "del", "dev", interface, "root"]]
    if mbit is None:
        return cmds
    rate = f"{mbit * 1000:.0f}kbit"
    # burst: 10 ms at the rate (at least one 64 KB GSO packet), so HTB's refill granularity does not
    # cost throughput; cburst the same.
    burst = max(65536, int(mbit * 1e6 / 8 * 0.01))
    return [
        *cmds,
        ["qdisc", "add", "dev", interface, "root", "handle", "1:", "htb", "default", "1"],
        ["class", "add", "dev", interface, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate,
         "burst", str(burst), "cburst", str(burst)],
        ["qdisc", "add", "dev", interface, "parent", "1:1", "handle", "10:", "pfifo", "limit",
         str(queue or DEFAULT_QUEUE)],
    ]


def run_in(netns: str, argv: Sequence[str], stdin: str | None = None, *, may_fail: bool = False) -> str:
    """Run ``argv`` in the namespace at path ``netns``; its standard output. Raises AnylabError with its
    output unless it exits 0 (or ``may_fail``)."""
    res = subprocess.run(["nsenter", f"--net={netns}", "--", *argv], input=stdin, capture_output=True, text=True,
                         check=False, timeout=30)
    if res.returncode != 0 and not may_fail:
        raise AnylabError(f"{' '.join(argv[:2])} in {netns}: {(res.stderr or res.stdout).strip()}")
    return res.stdout


def load_loss(netns: str, losses: Mapping[str, float]) -> None:
    """Replace the namespace's loss rules; raises AnylabError."""
    run_in(netns, ["nft", "-f", "-"], nft_loss(losses))


def load_queues(netns: str, relayed: Sequence[Relayed]) -> None:
    """Replace the namespace's relay rules; raises AnylabError."""
    run_in(netns, ["iptables-restore", "--noflush", "-w", "5"], iptables_queues(relayed))


def load_bandwidth(netns: str, interface: str, mbit: float | None, queue: int | None) -> None:
    """Set (or clear) one interface's rate limit; raises AnylabError."""
    cmds = tc_bandwidth(interface, mbit, queue)
    run_in(netns, ["tc", *cmds[0]], may_fail=True)
    for cmd in cmds[1:]:
        run_in(netns, ["tc", *cmd])
