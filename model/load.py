"""Topology as data: YAML (or a Python dict, or a topology script) → validated spec → resolved model.

``load_topology(path)`` and ``build_topology(data, source)`` promise either a fully resolved
:class:`~model.topology.Topology` (every node, interface, address and BGP session decided) or one
:class:`~core.errors.TopologyError` naming the file, the path to the field, the problem and the fix.
The spec is :mod:`model.spec`, the resolution :mod:`model.resolve`; graph-level checks (connectivity,
uniqueness, interface names) are :mod:`model.graph`'s and are run here too.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import TopologyError
from model.resolve import resolve
from model.spec import TopologySpec
from model.topo_script import run_topology_script
from model.topology import Topology

#: Bounds on what validation reads, so a hostile file fails fast with one line instead of minutes and
#: gigabytes: the file's size, how deep its lists and mappings nest, and how many of each entry it has
#: (well above the design's Stage 3: 300 PoPs, 102 routers).
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_ENTRIES: Mapping[str, int] = {"regions": 64, "routers": 2000, "links": 20000, "pops": 2000, "clients": 2000,
                                  "kv_masters": 64, "origins": 64, "anycast": 64}


class _UniqueKeyLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """libyaml's safe loader (the pure-Python one takes a minute for 30 MB), refusing a key given twice in
    one mapping: YAML keeps the last silently, which dropped a whole ``routers:`` section."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _depth(data: Any) -> int:
    """How deep lists and mappings nest (iteratively: a 20 000-deep list must not exhaust the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _read_text(path: Path, source: str) -> str:
    """The file's text; raises TopologyError for what is not a readable, bounded, UTF-8 text file (a FIFO
    or a device would block ``up``; a binary file is not a topology)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise TopologyError(source, "(file)", "is not a regular file", "give the path of a topology file")
        if info.st_size > MAX_FILE_BYTES:
            raise TopologyError(source, "(file)", f"is {info.st_size / 1e6:.1f} MB; a topology may be "
                                f"{MAX_FILE_BYTES // (1024 * 1024)} MB at most",
                                "split it, or generate it with a script")
        raw = path.read_bytes()
    except OSError as exc:
        raise TopologyError(source, "(file)", f"cannot be read ({exc.strerror})",
                            "give the path of an existing topology file, e.g. topologies/global.yaml") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(source, f"byte {exc.start}", "is not UTF-8 text (a binary file, or UTF-16?)",
                            "save the topology as UTF-8 text") from None
    if "\x00" in text:
        raise TopologyError(source, f"byte {text.index(chr(0))}", "holds a NUL byte: not a text file",
                            "save the topology as UTF-8 text")
    return text


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


def _one_validation_error(source: str, data: Mapping[str, Any], err: Any) -> TopologyError:
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


def _from_validation_error(source: str, data: Mapping[str, Any], exc: ValidationError) -> TopologyError:
    """All of pydantic's errors as one TopologyError, in file order, each field once (a value that fits
    no member of a union is reported by every member: the first report is kept)."""
    found: dict[str, TopologyError] = {}
    errors = exc.errors(include_url=False)
    inner = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc = tuple(err["loc"])
        # pydantic counts a list's length after dropping the entries that failed: "at least 1 item,
        # not 0" beside an entry's own error is a consequence, not a problem of its own.
        if err["type"] == "too_short" and any(len(o) > len(loc) and o[:len(loc)] == loc for o in inner):
            continue
        one = _one_validation_error(source, data, err)
        found.setdefault(one.field, one)
    return TopologyError.of_all(list(found.values()))


def load_topology(path: str | Path, router_kind: str | None = None, profile: Any = None,
                  hosts: int | None = None, settings: Mapping[str, Any] | None = None) -> Topology:
    """Read, validate, resolve and graph-check a topology file; with ``router_kind`` every router is of
    that kind (``frr`` or ``bird``), with ``profile`` (a name or ``{base: …, field: …}``) that is the
    topology's profile, with ``hosts`` the number of hosts it is partitioned over, and with ``settings``
    those settings (validated as the file's), whatever the file says.

    Raises TopologyError naming the file and field for any bad input; nothing is started.
    """
    path = Path(path)
    source = str(path)
    text = _read_text(path, source)
    if path.suffix == ".py":
        data = run_topology_script(path)
    else:
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader (libyaml's), see above
        except RecursionError:
            raise TopologyError(source, "(file)", f"nests deeper than {MAX_DEPTH} levels",
                                "a topology is a few levels of mappings and lists") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
            problem = getattr(exc, "problem", None) or "not valid YAML"
            if "given twice" in problem:
                raise TopologyError(source, where, problem, "give each key once (merge the two)") from None
            raise TopologyError(source, where, f"YAML syntax error: {problem}",
                                "fix the indentation or quoting there") from exc
    if router_kind is not None and isinstance(data, dict) and isinstance(data.get("routers"), list):
        data = {**data, "routers": [{**r, "kind": router_kind} if isinstance(r, dict) else r
                                    for r in data["routers"]]}
    for key, value in (("profile", profile), ("hosts", hosts), *(settings or {}).items()):
        if value is not None and isinstance(data, dict):
            settings = data.get("settings")
            data = {**data, "settings": {**(settings if isinstance(settings, dict) else {}), key: value}}
    return build_topology(data, source)


def build_topology(data: Any, source: str = "<dict>") -> Topology:
    """Validate ``data`` (the parsed YAML) and resolve it; see :func:`load_topology` for errors."""

    if not isinstance(data, dict):
        raise TopologyError(source, "(top level)", "is not a mapping of fields",
                            "start the file with 'name:', 'regions:', 'routers:', 'pops:', 'clients:'")
    if _depth(data) > MAX_DEPTH:
        raise TopologyError(source, "(file)", f"nests deeper than {MAX_DEPTH} levels",
                            "a topology is a few levels of mappings and lists")
    for key, most in MAX_ENTRIES.items():
        entries = data.get(key)
        if isinstance(entries, list) and len(entries) > most:
            raise TopologyError(source, key, f"has {len(entries)} entries; the lab takes {most} at most",
                                "split the topology over several labs")
    from model.graph import check_topology  # networkx: 0.2 s to import, only for the graph checks

    topo = rebuild_topology(data, source)
    check_topology(topo)
    return topo


def rebuild_topology(data: Mapping[str, Any], source: str) -> Topology:
    """The topology of a spec that passed :func:`build_topology` before (a running lab's state): its
    fields validated and references resolved again (the state is read from disk), the graph checks not
    repeated. Raises TopologyError as :func:`build_topology` does."""
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(source, data, exc) from None
    return resolve(spec, source)
