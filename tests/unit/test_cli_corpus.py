"""The bad-input corpus: well over a hundred invocations of every command with a bad file, name, flag or
topology script. Each must print exactly its first line from ``cli_corpus.txt`` (one line per case:
``ID<TAB>first line``, regenerated with ``python -m tests.unit.test_cli_corpus --write`` and read before
committing), exit 2, and leave nothing behind: no run root, no namespace, no process, nothing changed
outside its scratch directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT, TOPOLOGIES

MALFORMED = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "cli_corpus.txt"
NETNS = Path("/run/netns")
GOOD = "topologies/two_pops.yaml"  # relative: the lines must not depend on where the checkout is

SCRIPTS = {
    "exits": "import sys\nsys.exit(0)\n",
    "raises": "def topology():\n    raise RuntimeError('boom')\n",
    "no-function": "x = 1\n",
    "chatters": "print('hello')\ndef topology():\n    return {}\n",
    "returns-list": "def topology():\n    return [1, 2]\n",
    "import-error": "import no_such_module_anywhere\n",
}


def cases() -> dict[str, list[str]]:
    """Case id → argv (after ``anylab``); ``@`` stands for the case's scratch directory."""
    out: dict[str, list[str]] = {}
    for path in MALFORMED:  # every malformed topology, through up and through graph
        rel = str(path.relative_to(PROJECT))
        out[f"up {path.stem}"] = ["up", rel]
        out[f"graph {path.stem}"] = ["graph", "-o", "@/x.mmd", rel]
    for kind in ("binary", "utf16", "nul", "fifo", "directory", "missing", "huge", "deep", "empty", "scalar"):
        out[f"up file {kind}"] = ["up", f"@/{kind}.yaml" if kind != "directory" else "@"]
    for script in SCRIPTS:
        out[f"up script {script}"] = ["up", f"@/{script}.py"]
    name_commands = [["up", GOOD], ["down"], ["status"], ["exec", "r1", "--", "true"],
                     ["graph", "-o", "@/x.mmd", "--catchment", "observed"], ["fail", "drain", "sjc"],
                     ["restore", "sjc"], ["measure", "drain", "sjc"], ["deploy", "w", "@/w.py"], ["rollback", "w"],
                     ["deployments"], ["kv", "get", "ns", "k"], ["scale", "sjc", "--servers", "2"], ["overload", "sjc"],
                     ["do", "list"], ["demo"], ["link", "r1", "r2", "--delay", "1"], ["inflation"]]
    for i, bad in enumerate(["../victim", "", "Bad-Name", "x" * 17]):
        for cmd in name_commands[i::4] if i else name_commands:
            out[f"name {bad!r} {cmd[0]}"] = [cmd[0], "--name", bad, *cmd[1:]]
    flags = {
        "up timeout": ["up", "--timeout", "abc"], "up kind": ["up", "--kind", "gobgp", GOOD],
        "up hosts": ["up", "--hosts", "two", GOOD], "up extra arg": ["up", GOOD, GOOD],
        "up unknown option": ["up", "--frob"], "no such command": ["frob"],
        "status option": ["status", "--frob"], "exec no node": ["exec"],
        "graph no output": ["graph"], "graph suffix": ["graph", "-o", "@/x.txt"],
        "graph directory": ["graph", "-o", "@/no/such/x.mmd"], "graph catchment": ["graph", "-o", "@/x.mmd",
                                                                                 "--catchment", "maybe", GOOD],
        "link delay": ["link", "r1", "r2", "--delay", "-5"], "link nothing": ["link", "r1", "r2"],
        "link distribution": ["link", "r1", "r2", "--jitter-distribution", "pareto"],
        "link loss": ["link", "r1", "r2", "--loss", "100"], "link queue": ["link", "r1", "r2", "--queue", "0"],
        "link no lab": ["link", "r1", "r2", "--delay", "5"], "link one end": ["link", "r1"],
        "inflation fail": ["inflation", "--fail", "../x"], "inflation no lab": ["inflation"],
        "fail scenario": ["fail", "nosuch", "sjc"], "fail no target": ["fail", "drain"],
        "fail count": ["fail", "flap", "sjc", "--count", "many"], "restore nothing": ["restore"],
        "measure scenario": ["measure", "nosuch", "sjc"],
        "measure repeat": ["measure", "drain", "sjc", "--repeat", "0"],
        "measure repeat type": ["measure", "drain", "sjc", "--repeat", "x"],
        "measure json dir": ["measure", "drain", "sjc", "--json", "@/no/such/r.json"],
        "measure http rate": ["measure", "drain", "sjc", "--http", "--http-rate", "0"],
        "deploy missing file": ["deploy", "w", "@/missing.py"], "deploy binary": ["deploy", "w", "@/binary.py"],
        "deploy var": ["deploy", "w", "@/w.py", "--var", "novalue"], "deploy var name": ["deploy", "w", "@/w.py",
                                                                                        "--var", "1x=y"],
        "deploy kv": ["deploy", "w", "@/w.py", "--kv", "K"],
        "deploy do": ["deploy", "w", "@/w.py", "--do", "D=not-a-class"],
        "deploy no file": ["deploy", "w"], "rollback no worker": ["rollback"],
        "kv action": ["kv", "frob", "ns"], "kv put no value": ["kv", "put", "ns", "k"],
        "kv get no key": ["kv", "get", "ns"], "kv limit": ["kv", "list", "ns", "--limit", "lots"],
        "scale no servers": ["scale", "sjc"], "scale servers type": ["scale", "sjc", "--servers", "two"],
        "overload multiple": ["overload", "sjc", "--multiple", "lots"], "do action": ["do", "frob"],
        "do where incomplete": ["do", "where", "reg/Register"], "do failovers": ["do", "nemesis", "--failovers", "x"],
        "down extra": ["down", "x"], "ls extra": ["ls", "x"], "version extra": ["--version-please"],
        "status watch": ["status", "--watch", "0"], "status watch type": ["status", "--watch", "often"],
        "status count alone": ["status", "--count", "3"],
        "status count": ["status", "--watch", "1", "--count", "0"],
        "exec no command": ["exec", "r1"],
        "capture no write": ["capture", "r1", "r1-eth0"],
        "capture count": ["capture", "r1", "r1-eth0", "-w", "@/x.pcap", "-c", "0"],
        "capture duration": ["capture", "r1", "r1-eth0", "-w", "@/x.pcap", "--duration", "9999"],
        "capture directory": ["capture", "r1", "r1-eth0", "-w", "@/no/such/x.pcap"],
        "capture into directory": ["capture", "r1", "r1-eth0", "-w", "@"],
        "capture no lab": ["capture", "r1", "r1-eth0", "-w", "@/x.pcap"],
        "validate kind": ["validate", "--kind", "gobgp", GOOD],
        "validate nodes alone": ["validate", GOOD, "--nodes", "r1"],
        "validate configs not empty": ["validate", GOOD, "--configs", "@"],
        "validate configs parent": ["validate", GOOD, "--configs", "@/no/such/dir"],
        "validate configs file": ["validate", GOOD, "--configs", "@/w.py"],
        "validate bad nodes": ["validate", GOOD, "--show-configs", "--nodes", "r9"],
        "validate empty nodes": ["validate", GOOD, "--show-configs", "--nodes", ","],
        "up force type": ["up", "--force", "yes", GOOD],
        "measure csv dir": ["measure", "drain", "sjc", "--csv", "@/no/such/r.csv"],
        "measure two stdouts": ["measure", "drain", "sjc", "--csv", "-", "--json", "-"],
    }
    out.update({f"flag {k}": v for k, v in flags.items()})
    return out


CASES = cases()


def scratch(tmp: Path) -> None:
    """The files the cases name: hostile topologies and scripts, a worker."""
    text = (TOPOLOGIES / "two_pops.yaml").read_text()
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (tmp / "utf16.yaml").write_bytes(text.encode("utf-16"))
    (tmp / "nul.yaml").write_text(text + "\x00")
    os.mkfifo(tmp / "fifo.yaml")
    with open(tmp / "huge.yaml", "wb") as fh:
        fh.truncate(17 * 1024 * 1024)
    (tmp / "deep.yaml").write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    (tmp / "empty.yaml").write_text("")
    (tmp / "scalar.yaml").write_text("just a string\n")
    for script, code in SCRIPTS.items():
        (tmp / f"{script}.py").write_text(code)
    (tmp / "w.py").write_text("async def fetch(request, env, ctx):\n    return 'ok'\n")
    (tmp / "binary.py").write_bytes(b"\xff\xfe\x00\x01")


def first_line(case: str, tmp: Path) -> tuple[int, str, Path]:
    root = tmp / "root"
    argv = [a.replace("@", str(tmp)) for a in CASES[case]]
    res = subprocess.run([sys.executable, "-m", "lab.cli.main", *argv], cwd=PROJECT, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, check=False,
                         env={**os.environ, "ANYLAB_RUN_ROOT": str(root), "ANYLAB_CORPUS": str(tmp)})
    lines = (res.stderr or res.stdout).splitlines()
    return res.returncode, (lines[0] if lines else "").replace(str(tmp), "@"), root


def golden() -> dict[str, str]:
    pairs = (line.split("\t", 1) for line in GOLDEN.read_text().splitlines() if line)
    return dict((k, v) for k, v in pairs)


def test_the_corpus_is_large_and_the_golden_file_matches_it() -> None:
    assert len(CASES) >= 100
    assert sorted(golden()) == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_its_line_exit_2_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    scratch(tmp_path)
    before = sorted(os.listdir(tmp_path))
    spaces = sorted(os.listdir(NETNS)) if NETNS.is_dir() else []
    code, line, root = first_line(case, tmp_path)
    assert (code, line) == (2, golden()[case])
    assert line.startswith("error: ")
    assert sorted(os.listdir(tmp_path)) == before and not root.exists()
    assert (sorted(os.listdir(NETNS)) if NETNS.is_dir() else []) == spaces
    leftover = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"ANYLAB_CORPUS={tmp_path}".encode() in (proc / "environ").read_bytes():
                leftover.append(proc.name)
        except OSError:
            continue
    assert leftover == [], f"processes left behind: {leftover}"


if __name__ == "__main__":  # regenerate the golden file: python -m tests.unit.test_cli_corpus --write
    import tempfile

    assert sys.argv[1:] == ["--write"], "usage: python -m tests.unit.test_cli_corpus --write"
    rows = []
    for case in sorted(CASES):
        with tempfile.TemporaryDirectory() as d:
            scratch(Path(d))
            code, line, _ = first_line(case, Path(d))
        rows.append(f"{case}\t{line}")
        print(f"{code} {case}: {line}", file=sys.stderr)
    GOLDEN.write_text("\n".join(rows) + "\n")
