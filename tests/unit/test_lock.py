"""requirements.lock is complete and is what the venv runs (issue 18: a fully pinned, hashed lock).

`check_lock` is the whole rule; the tests run it on the real lock and venv, and on locks broken on
purpose (a missing hash, a range, a package left out, a version drifted) to show each one is caught.
"""

from __future__ import annotations

import re
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
BUILD_INPUT = ROOT / "scripts" / "build-requirements.in"
# The venv's own installer, made by `python -m venv`, not installed from the lock.
NOT_LOCKED = {"pip", "anylab"}

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<rest>.*)$")


def parse_lock(text: str) -> tuple[dict[str, str], list[str]]:
    """The lock's pins as {canonical name: version}, and what is wrong with its form.

    An entry is a requirement line with its continuation lines (ending in a backslash); each must be
    `name==version` followed by at least one `--hash=sha256:` of 64 hex digits.
    """
    pins: dict[str, str] = {}
    errors: list[str] = []
    entries: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw.rstrip()
        if not line.strip():
            if current:
                entries.append(current)
                current = ""
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            entries.append(current)
            current = ""
    if current:
        entries.append(current)
    for entry in entries:
        words = entry.split()
        match = _ENTRY.match(words[0])
        if match is None or "==" not in words[0]:
            errors.append(f"not pinned with ==: {words[0]}")
            continue
        name, _, version = words[0].partition("==")
        hashes = [w for w in words[1:] if re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", w)]
        if not hashes:
            errors.append(f"no sha256 hash: {words[0]}")
        pins[canonicalize_name(name)] = version
    return pins, errors


def declared_requirements() -> list[Requirement]:
    """What pyproject.toml (dependencies, the dev extra) and the build input ask for."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    lines += [ln.strip() for ln in BUILD_INPUT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [Requirement(line) for line in lines]


def check_lock(text: str, installed: dict[str, str], declared: list[Requirement]) -> list[str]:
    """Every problem of a lock against the venv and the declared requirements; [] when none.

    Rules: every entry pinned `==` with a hash; every declared requirement locked at a version its
    specifier admits; every installed distribution (but the venv's pip and the project) locked at the
    installed version; nothing locked that is not installed.
    """
    pins, errors = parse_lock(text)
    for req in declared:
        wanted = canonicalize_name(req.name)
        if wanted not in pins:
            errors.append(f"declared but not locked: {req}")
        elif not req.specifier.contains(pins[wanted], prereleases=True):
            errors.append(f"locked {wanted}=={pins[wanted]} does not satisfy {req}")
    for name, version in sorted(installed.items()):
        if name in NOT_LOCKED:
            continue
        if name not in pins:
            errors.append(f"installed but not locked: {name}=={version}")
        elif pins[name] != version:
            errors.append(f"installed {name}=={version}, locked {pins[name]}")
    errors += [f"locked but not installed: {n}=={v}" for n, v in sorted(pins.items()) if n not in installed]
    return errors


def installed_distributions() -> dict[str, str]:
    """What pip installed into the venv: its site-packages only (sys.path may also hold, e.g.,
    setuptools' vendored copies once something imported setuptools)."""
    dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=dirs)}


def test_the_lock_is_complete_hashed_and_is_the_venv() -> None:
    assert check_lock(LOCK.read_text(), installed_distributions(), declared_requirements()) == []


def test_every_entry_has_hashes_of_its_files() -> None:
    pins, errors = parse_lock(LOCK.read_text())
    assert errors == []
    assert len(pins) >= 50  # the ~55 packages of the venv, not the 17 direct ones of the old lock


def test_a_broken_lock_is_caught() -> None:
    """Each way a lock can be wrong is reported: the check could have failed."""
    text = LOCK.read_text()
    installed = installed_distributions()
    declared = declared_requirements()
    pins, _ = parse_lock(text)
    # A hash removed from one entry.
    no_hash = re.sub(r"(?m)^(aiohttp==[^ ]+) \\\n(?:\s+--hash=\S+ ?\\?\n)+", r"\1\n", text)
    assert "no sha256 hash: aiohttp==" in " ".join(check_lock(no_hash, installed, declared))
    # A range instead of a pin.
    ranged = text.replace(f"pydantic=={pins['pydantic']}", "pydantic>=2")
    assert "not pinned with ==: pydantic>=2" in check_lock(ranged, installed, declared)
    # A package dropped (typer's entry, hashes and all).
    dropped = re.sub(r"(?m)^typer==.*\n(?:\s+.*\n)*?(?=^\S)", "", text)
    found = check_lock(dropped, installed, declared)
    assert any(e.startswith("declared but not locked: typer") for e in found)
    assert any(e.startswith("installed but not locked: typer==") for e in found)
    # The venv drifted from the lock.
    drifted = dict(installed, networkx="0.0.1")
    assert f"installed networkx==0.0.1, locked {pins['networkx']}" in check_lock(text, drifted, declared)
    # A declared requirement the locked version does not satisfy.
    strict = [*declared, Requirement("rich>=999")]
    assert f"locked rich=={pins['rich']} does not satisfy rich>=999" in check_lock(text, installed, strict)
