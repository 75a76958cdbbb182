"""Topology scripts: ``topologies/*.py`` files that build a topology through the Python API.

A script defines ``topology() -> dict`` returning the same structure as a YAML file; run directly,
it prints that YAML (and ``anylab up topologies/x.py`` brings it up).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from core.errors import TopologyError


def run_topology_script(path: Path) -> Any:
    """Import ``path`` and call its ``topology()``; raises TopologyError if that fails."""
    spec = importlib.util.spec_from_file_location(f"anylab_topology_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise TopologyError(str(path), "(file)", "cannot be imported as a Python module",
                            "give a .py file that defines topology()")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        build = module.topology
    except AttributeError as exc:
        raise TopologyError(str(path), "topology()", "is not defined",
                            "define a function topology() returning the topology as a dict") from exc
    except Exception as exc:
        raise TopologyError(str(path), "(file)", f"raised {type(exc).__name__}: {exc}",
                            "fix the script so that importing it works") from exc
    try:
        return build()
    except Exception as exc:
        raise TopologyError(str(path), "topology()", f"raised {type(exc).__name__}: {exc}",
                            "fix the script's topology() function") from exc
