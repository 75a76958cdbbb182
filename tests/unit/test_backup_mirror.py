"""Copying a backup store to the DR region (backup.mirror): only the store's own files, by checked paths;
immutable files placed once with their hash checked; a snapshot verified by restoring it (a corrupt copy
fails); retention that keeps the newest good snapshot whatever its age."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from backup.kv import MANIFEST, KvBackup, Snapshot
from backup.mirror import Index, check_path, expired, place, read_range, verify_snapshot
from backup.streams import STATE_FILE, BackupError, ObjectsBackup
from core.errors import TopologyError
from kv.store import Entry
from lab.faults.catalogue import plan
from model.load import build_topology
from tests.conftest import TOPOLOGIES


@pytest.mark.parametrize("rel", [
    "../etc/passwd", "/etc/passwd", "kv/../../x", "kv/state/users.db", "kv/wal/../../../x.jsonl",
    "kv/snapshots/000001/incarnation", "other/wal/a.jsonl", "kv/artifacts/abc", "kv/snapshots/1/manifest.json",
    "kv/wal/.hidden.jsonl", "",
])
def test_a_path_outside_what_a_store_copies_is_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(BackupError):
        check_path(rel)
    with pytest.raises(BackupError):
        read_range(tmp_path, rel, 0, 10)


def store_with_snapshots(root: Path) -> tuple[KvBackup, ObjectsBackup]:
    kv = KvBackup(root / "kv")
    kv.record("kv-na", {"users": [Entry(b"k", b"v", None, None, 1, "kv-na", False).to_json()]}, t=1.0)
    kv.snapshot(t=2.0, wall=0.0, scratch=root / "scratch")
    do = ObjectsBackup(root / "do")
    do.record("eu", {"key": "w/C/a", "entries": [{"seq": 1, "epoch": 1, "ops": [["put", "n", 1]]}]}, t=1.0)
    do.snapshot(t=2.0, wall=0.0)
    return kv, do


def test_the_index_lists_wals_whole_snapshots_and_nothing_else(tmp_path: Path) -> None:
    kv, _do = store_with_snapshots(tmp_path)
    (tmp_path / "kv" / "snapshots" / "000002").mkdir()  # being written: no manifest yet
    (tmp_path / "kv" / "snapshots" / "000002" / "users.db").write_bytes(b"partial")
    files = Index(tmp_path).files()
    assert set(files) == {"kv/wal/kv-na.jsonl", "kv/snapshots/000001/users.db", "kv/snapshots/000001/manifest.json",
                          "do/wal/eu.jsonl", "do/snapshots/000001/state.json", "do/snapshots/000001/manifest.json"}
    assert "sha256" not in files["kv/wal/kv-na.jsonl"] and len(files["do/snapshots/000001/state.json"]["sha256"]) == 64
    assert read_range(tmp_path, "kv/wal/kv-na.jsonl", 2, 5) == (tmp_path / "kv/wal/kv-na.jsonl").read_bytes()[2:7]
    kv.state.close()


def test_a_copied_snapshot_verifies_and_a_corrupt_one_does_not(tmp_path: Path) -> None:
    store_with_snapshots(tmp_path / "p")
    files = Index(tmp_path / "p").files()
    for rel, meta in files.items():
        if "/snapshots/" in rel:
            place(tmp_path / "c" / rel, (tmp_path / "p" / rel).read_bytes(), meta["sha256"])
    with pytest.raises(BackupError, match="do not hash"):
        place(tmp_path / "c" / "x", b"other bytes", files["do/snapshots/000001/state.json"]["sha256"])
    for part in ("kv", "do"):
        snap = tmp_path / "c" / part / "snapshots" / "000001"
        assert verify_snapshot(part, snap, tmp_path / "scratch"), part
        assert (snap / MANIFEST).stat().st_mode & 0o777 == 0o444
    # Corrupted after the copy: the DR's restore sees it.
    bad = tmp_path / "c" / "do" / "snapshots" / "000001" / STATE_FILE
    bad.chmod(0o644)
    bad.write_text(json.dumps({"w/C/a": {"epoch": 1, "seq": 1, "data": {"n": 2}}}))
    assert not verify_snapshot("do", bad.parent, tmp_path / "scratch")
    db = tmp_path / "c" / "kv" / "snapshots" / "000001" / "users.db"
    db.chmod(0o644)
    db.write_bytes(b"not a database" * 100)
    assert not verify_snapshot("kv", db.parent, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()
    shutil.rmtree(tmp_path / "c")


def snap(n: int, t: float, ok: bool = True) -> Snapshot:
    return Snapshot(n, t, 0.0, {}, "d", "d" if ok else "x")


@pytest.mark.parametrize(("snaps", "now", "keep", "gone"), [
    ([], 100.0, 10.0, []),
    ([snap(1, 0.0), snap(2, 50.0), snap(3, 95.0)], 100.0, 10.0, [1, 2]),
    ([snap(1, 0.0), snap(2, 50.0)], 100.0, 10.0, [1]),               # the newest is kept, however old
    ([snap(1, 0.0), snap(2, 50.0, ok=False)], 100.0, 10.0, [2]),      # ... the newest *good* one
    ([snap(1, 90.0), snap(2, 91.0), snap(3, 92.0)], 100.0, 10.0, []),
    ([snap(1, 0.0), snap(2, 1.0)], 100.0, 1000.0, []),
])
def test_retention_deletes_what_is_older_than_kept_but_never_the_newest_good_snapshot(
        snaps: list[Snapshot], now: float, keep: float, gone: list[int]) -> None:
    assert expired(snaps, now, keep) == gone


def test_the_dr_copy_must_be_in_another_region_than_the_primary_store() -> None:
    data = yaml.safe_load((TOPOLOGIES / "global.yaml").read_text())
    topo = build_topology(data)
    assert topo.backup is not None and topo.backup_dr is not None
    assert (topo.backup_dr.name, topo.backup_dr.router, topo.backup_dr.region) == ("drbk", "eu-e", "dr")
    assert topo.backup.region == "na"
    data["backup"]["dr_router"] = "na-e"  # the primary's region
    with pytest.raises(TopologyError, match=r"dr_router.*another region"):
        build_topology(data)
    data["backup"]["dr_router"] = "nowhere"
    with pytest.raises(TopologyError, match="nowhere"):
        build_topology(data)


def test_the_dr_region_racks_a_standby_platform_no_regional_fault_touches() -> None:
    data = yaml.safe_load((TOPOLOGIES / "global.yaml").read_text())
    topo = build_topology(data)
    site = topo.dr_site
    assert site is not None and site.nodes() == ("cp-dr", "kv-dr", "dr-s1")
    assert {n.region for n in (site.control, site.storage)} == {site.pop.region} == {"dr"}
    (dr,) = site.servers
    assert dr.name == "dr-s1" and dr.standby and dr.pop == "dr" and dr.asn == 64690
    assert [n.node for n in dr.neighbors] == ["eu-e"] and "dr-s1" in {n.node for n in topo.router("eu-e").neighbors}
    # Not the serving platform: nothing predicted to reach it, no fault targets it; built all the same.
    assert "dr" not in {p.name for p in topo.pops} and dr not in topo.servers and dr in topo.all_servers()
    assert site.control not in topo.control_planes and site.storage not in topo.kv_masters
    assert set(site.nodes()) <= set(topo.node_names())
    # Adding the site renumbered and renamed nothing that was there before.
    data["backup"]["dr_servers"] = 0
    bare = build_topology(data)
    assert bare.dr_site is None
    assert {(i.node, i.name, str(i.address)) for i in bare.interfaces()} <= {
        (i.node, i.name, str(i.address)) for i in topo.interfaces()}
    # Every regional fault, and the loss of them all, leaves the DR region alone.
    for scenario, target in [("region-loss", "eu"), ("region-down", "eu"), ("catastrophic", "global")]:
        got = plan(topo, scenario, target)
        assert not set(got.servers + got.hosts + got.routers) & {*site.nodes(), "drbk"}, (scenario, got)
    lost = plan(topo, "catastrophic", "global")
    assert set(lost.hosts) == {*(k.name for k in topo.kv_masters), *(c.name for c in topo.control_planes),
                               "control", "bk"}
    assert set(lost.servers) == {s.name for s in topo.servers if not s.standby} and not lost.routers


@pytest.mark.parametrize(("change", "match"), [
    ({"backup": {"dr_servers": 1}}, "needs backup.dr_router"),
    ({"regions": "dr"}, "region 'dr' is the DR region's"),
    ({"pops": "dr"}, "PoP 'dr' is the DR region's"),
    ({"backup": {"dr_asn": 64601}}, "AS 64601 is PoP sjc's"),
    ({"backup": {"dr_asn": 65535}}, "reserved"),
    ({"backup": {"dr_servers": 9}}, "less than or equal to 8"),
])
def test_a_standby_platform_that_cannot_stand_is_refused(change: dict[str, Any], match: str) -> None:
    data = yaml.safe_load((TOPOLOGIES / "global.yaml").read_text())
    if change.get("regions"):
        data["regions"].append({"name": change["regions"]})
    elif change.get("pops"):
        data["pops"][1]["name"] = change["pops"]
    else:
        if "dr_router" not in str(change) and change["backup"].get("dr_servers") == 1:
            del data["backup"]["dr_router"]
        data["backup"].update(change["backup"])
    with pytest.raises(TopologyError, match=match):
        build_topology(data)
