"""Topology as data: YAML (or a Python dict, or a topology script) → validated spec → resolved model.

``load_topology(path)`` and ``build_topology(data, source)`` promise either a fully resolved
:class:`~model.topology.Topology` (every node, interface, address and BGP session decided) or one
:class:`~core.errors.TopologyError` naming the file, the path to the field, the problem and the fix.
The spec is :mod:`model.spec`, the resolution :mod:`model.resolve`; graph-level checks (connectivity,
uniqueness, interface names) are :mod:`model.graph`'s and are run here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import TopologyError
from model.graph import check_topology
from model.resolve import resolve
from model.spec import TopologySpec
from model.topo_script import run_topology_script
from model.topology import Topology

_FIXES: Mapping[str, str] = {
    "missing": "add this field",
    "extra_forbidden": "remove it or correct its spelling",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "string_type": "give a text value",
    "literal_error": "use one of the allowed values",
    "greater_than_equal": "raise the value",
    "less_than_equal": "lower the value",
    "too_short": "give at least one entry",
    "tuple_type": "give a list",
    "ip_v4_address": "give a dotted IPv4 address such as 10.255.0.1",
    "ip_v4_network": "give an IPv4 prefix such as 203.0.113.1/32 (host bits zero)",
    "ip_v4_interface": "give an address with its prefix length, such as 10.0.9.0/31",
    "model_type": "give a mapping of fields",
    "float_parsing": "give a number",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(spec_data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str:
    """Add the entry's name to a field path, e.g. ``pops[2] (sjc).asn``, so the reader finds it."""
    if len(loc) >= 2 and isinstance(loc[1], int):
        items = spec_data.get(str(loc[0]))
        if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
            name = items[loc[1]].get("name")
            if isinstance(name, str):
                head = f"{loc[0]}[{loc[1]}] ({name})"
                rest = _field_path(loc[2:])
                return head + ("." + rest if rest != "(top level)" else "")
    return _field_path(loc)


def _from_validation_error(source: str, data: Mapping[str, Any], exc: ValidationError) -> TopologyError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic tags union members (e.g. 'tuple[...]', 'literal[...]') into loc; they are noise here.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int"})))
    # pydantic's wording, in the file's terms: YAML has lists, not tuples.
    msg = str(err["msg"]).removeprefix("Value error, ").replace("Tuple should", "List should")
    msg = msg.replace(" after validation", "")
    etype = str(err["type"])
    if etype == "value_error":
        # Our validators phrase "problem; fix" themselves.
        problem, _, fix = msg.partition("; ")
        return TopologyError(source, _describe(data, loc), problem, fix or "correct the value")
    if etype == "extra_forbidden":
        return TopologyError(source, _describe(data, loc), "unknown field", _FIXES[etype])
    return TopologyError(source, _describe(data, loc), msg, _FIXES.get(etype, "correct the value"))


def load_topology(path: str | Path, router_kind: str | None = None, profile: Any = None,
                  hosts: int | None = None) -> Topology:
    """Read, validate, resolve and graph-check a topology file; with ``router_kind`` every router is of
    that kind (``frr`` or ``bird``), with ``profile`` (a name or ``{base: …, field: …}``) that is the
    topology's profile, with ``hosts`` the number of hosts it is partitioned over, whatever the file says.

    Raises TopologyError naming the file and field for any bad input; nothing is started.
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(source, "(file)", f"cannot be read ({exc.strerror})",
                            "give the path of an existing topology file, e.g. topologies/global.yaml") from exc
    if path.suffix == ".py":

        data = run_topology_script(path)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise TopologyError(source, where, f"YAML syntax error: {problem}",
                                "fix the indentation or quoting there") from exc
    if router_kind is not None and isinstance(data, dict) and isinstance(data.get("routers"), list):
        data = {**data, "routers": [{**r, "kind": router_kind} if isinstance(r, dict) else r
                                    for r in data["routers"]]}
    for key, value in (("profile", profile), ("hosts", hosts)):
        if value is not None and isinstance(data, dict):
            settings = data.get("settings")
            data = {**data, "settings": {**(settings if isinstance(settings, dict) else {}), key: value}}
    return build_topology(data, source)


def build_topology(data: Any, source: str = "<dict>") -> Topology:
    """Validate ``data`` (the parsed YAML) and resolve it; see :func:`load_topology` for errors."""

    if not isinstance(data, dict):
        raise TopologyError(source, "(top level)", "is not a mapping of fields",
                            "start the file with 'name:', 'regions:', 'routers:', 'pops:', 'clients:'")
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(source, data, exc) from None
    topo = resolve(spec, source)
    check_topology(topo)
    return topo
