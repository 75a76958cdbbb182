"""ExaBGP's configs checked in one ``exabgp validate`` run, the bad one named."""

from __future__ import annotations

from pathlib import Path

from bgp.exabgp import ExaBgp
from core.daemon import NodeEnv
from core.proc import ProcessGroup
from lab.run.starts import validate_all
from model.load import load_topology
from tests.conftest import TOPOLOGIES


def speakers(tmp_path: Path) -> list[ExaBgp]:
    topo = load_topology(TOPOLOGIES / "two_pops.yaml")
    out = []
    for s in topo.servers:
        (tmp_path / s.name).mkdir()
        out.append(ExaBgp(NodeEnv(s.name, None, tmp_path / s.name, ProcessGroup(tmp_path)), s))
    return out


def test_good_configs_pass_in_one_run(tmp_path: Path) -> None:
    assert validate_all(list(speakers(tmp_path))) == []


def test_a_bad_config_is_named_with_its_node(tmp_path: Path) -> None:
    good, bad = speakers(tmp_path)
    for d in (good, bad):
        d.write_config()
    bad.path(".conf").write_text(bad.path(".conf").read_text().replace("peer-as", "peer-ass"))
    errors = ExaBgp.validate_batch([good, bad])
    assert errors is not None and len(errors) == 1
    assert bad.node in errors[0] and "exabgp" in errors[0] and "lax-s1/exabgp.conf" in errors[0]
