"""A topology's configurations without a lab: every daemon made as ``up`` makes it, its files rendered,
written and (``dry_run``) checked by the daemon itself — no namespace, no process left running."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from core.daemon import NodeEnv
from core.errors import AnylabError
from core.proc import ProcessGroup
from lab.run.starts import validate_all
from lab.run.wiring import daemons_of
from model.topology import Topology

#: What --show-configs prints instead of a secret (tokens and peer keys: fresh random ones here, never
#: the running lab's).
SECRET = "(a secret: written with mode 0600, not shown)"


def render_configs(topo: Topology, nodes: list[str], directory: Path | None,
                   dry_run: bool) -> tuple[dict[str, dict[str, str]], list[str]]:
    """(node → file path relative to its node directory → text, the dry run's errors) for ``nodes``.

    The files go under ``directory`` when given (the caller checked it is new or empty), else under a
    scratch directory removed before returning. ``dry_run`` writes them and runs every daemon's own check
    (:func:`lab.run.starts.validate_all`); every error is returned, none raised. Raises AnylabError when a
    daemon cannot render its configuration at all."""
    root = directory if directory is not None else Path(tempfile.mkdtemp(prefix="anylab-validate-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        if directory is None:
            # FRR's daemons read their files as user frr: mkdtemp's 0700 would make every dry run read
            # nothing (and FRR exits 0 on that; bgp/frr.py now treats it as a rejection). Secrets stay 0600.
            root.chmod(0o755)
        procs = ProcessGroup(root)

        def env_of(node: str) -> NodeEnv:
            return NodeEnv(node, None, root / node, procs)

        made = daemons_of(topo, env_of)
        chosen = [d for n in nodes for d in made.get(n, [])]
        rendered: dict[str, dict[str, str]] = {n: {} for n in nodes}
        for d in chosen:
            try:
                files = {**d.render_config(), **dict.fromkeys(d.secrets(), SECRET)}
            except AnylabError as exc:
                raise AnylabError(f"{d.node}/{d.name}: cannot render its configuration: {exc}") from exc
            for path, text in files.items():
                shown = path.relative_to(root / d.node) if path.is_relative_to(root / d.node) else path
                rendered[d.node][str(shown)] = text
        errors: list[str] = []
        if dry_run:
            errors = validate_all(chosen)  # writes every file, then each daemon checks its own
        elif directory is not None:
            for d in chosen:
                d.write_config()
        return rendered, errors
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
        else:  # the nodes not asked for got an empty directory from daemons_of: not left behind
            for sub in root.iterdir():
                if sub.is_dir() and sub.name not in nodes and not any(sub.iterdir()):
                    sub.rmdir()
