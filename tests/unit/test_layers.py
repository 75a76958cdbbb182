"""The house's floors hold: the import-linter contract in pyproject.toml passes on this tree and fails on
a scratch copy with a back-import committed, and no two files import each other (directly or around a
circle), checked on grimp's graph — the one import-linter builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES: list[str] = CONFIG["root_packages"]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def scratch(tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    root.mkdir()
    shutil.copy(PROJECT / "pyproject.toml", root)
    for pkg in PACKAGES:
        shutil.copytree(PROJECT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "results"))
    return root


def cycles(root: Path) -> list[list[str]]:
    """Every set of files that import each other around a circle (type-checking imports included)."""
    code = ("import json, sys, grimp, networkx as nx\n"
            "g = grimp.build_graph(*sys.argv[1:])\n"
            "d = nx.DiGraph([(m, i) for m in g.modules for i in g.find_modules_directly_imported_by(m)])\n"
            "print(json.dumps([sorted(c) for c in nx.strongly_connected_components(d) if len(c) > 1]))\n")
    res = subprocess.run([sys.executable, "-c", code, *PACKAGES], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120,
                         check=True)
    found: list[list[str]] = json.loads(res.stdout)
    return found


def test_every_top_level_package_has_a_layer() -> None:
    on_disk = {p.parent.name for p in PROJECT.glob("*/__init__.py")}
    layered = {name.strip() for layer in CONFIG["contracts"][0]["layers"] for name in layer.split("|")}
    assert on_disk == set(PACKAGES) == layered


def test_the_contract_holds() -> None:
    res = lint(PROJECT)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(("file", "line", "contract"), [
    ("core/clock.py", "import lab.run.lab", "Top-level packages, one direction"),
    ("model/spec.py", "from kv import store", "Top-level packages, one direction"),
    ("lab/run/observe.py", "from lab.measure import runner", "Inside lab/, one direction"),
    ("kv/store.py", "import durable.storage", "The platform's services do not know each other"),
    ("pop_agent/sync.py", "import model.graph", "The platform knows neither the lab nor the topology model"),
    ("lab/run/lab.py", "import mininet.net", "Only lab.run.net imports Mininet"),
])
def test_a_back_import_breaks_it(tmp_path: Path, file: str, line: str, contract: str) -> None:
    root = scratch(tmp_path)
    path = root / file
    path.write_text(path.read_text() + f"\n{line}  # a back-import, on purpose\n")
    res = lint(root)
    assert res.returncode != 0
    assert f"{contract} BROKEN" in res.stdout, res.stdout[-3000:]


def test_no_file_imports_itself_around_a_circle() -> None:
    assert cycles(PROJECT) == []


def test_a_circle_is_seen(tmp_path: Path) -> None:
    root = scratch(tmp_path)
    path = root / "core" / "records.py"
    path.write_text(path.read_text() + "\nfrom core import proc  # a circle, on purpose\n")
    assert any({"core.proc", "core.records"} <= set(c) for c in cycles(root))
