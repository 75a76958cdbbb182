"""The Durable Object directory's state machine, by tables of events."""

from __future__ import annotations

import pytest

from durable.directory import Action, Place, Placement, RegionDown, RegionUp, Seeded, State, initial, step

REGIONS = ["apac", "eu", "na"]


def seeded(s: State, oid: str = "room-1") -> State:
    """The owner's report that the object's current backup holds its copy."""
    backup = s.objects[oid].backup
    return step(s, Seeded(oid, backup))[0] if backup is not None else s


def test_placement_follows_the_hint_else_a_stable_hash() -> None:
    s = initial(REGIONS)
    s, acts = step(s, Place("room-1", hint="eu"))
    assert s.objects["room-1"] == Placement("eu", 1, "na") and acts == [Action("route", "room-1", "eu", 1)]
    s2, _ = step(initial(REGIONS), Place("room-2"))
    s3, _ = step(initial(REGIONS), Place("room-2"))
    assert s2.objects == s3.objects  # the same id lands in the same region every time
    assert step(s, Place("room-1", hint="na"))[0] == s  # placed once


@pytest.mark.parametrize(("down", "expect", "kinds"), [
    # The owner's region fails: the backup owns it at the next epoch; the old owner is fenced.
    ("eu", Placement("na", 2, "apac"), ["promote", "fence", "route", "reseed"]),
    # The backup's region fails: a new backup (not seeded yet), same owner and epoch.
    ("na", Placement("eu", 1, "apac"), ["reseed"]),
    # Another region: nothing to do.
    ("apac", Placement("eu", 1, "na", seeded=True), []),
])
def test_region_down(down: str, expect: Placement, kinds: list[str]) -> None:
    s, _ = step(initial(REGIONS), Place("room-1", hint="eu"))
    s, acts = step(seeded(s), RegionDown(down))
    assert s.objects["room-1"] == expect and [a.kind for a in acts] == kinds
    assert all(a.epoch == expect.epoch for a in acts)


def test_two_failovers_and_no_way_back_without_another() -> None:
    s, _ = step(initial(REGIONS), Place("room-1", hint="eu"))
    s, _ = step(seeded(s), RegionDown("eu"))
    s, _ = step(seeded(s), RegionDown("na"))
    assert s.objects["room-1"] == Placement("apac", 3, None)  # the last region: no backup left
    s, acts = step(s, RegionUp("eu"))
    # Owners do not move back; the object gets a backup again, seeded from its owner.
    assert s.objects["room-1"] == Placement("apac", 3, "eu")
    assert acts == [Action("reseed", "room-1", "eu", 3)]
    s, acts = step(seeded(s), RegionDown("apac"))
    assert s.objects["room-1"] == Placement("eu", 4, None)  # to the re-seeded backup
    s, acts = step(s, RegionDown("eu"))
    assert s.objects["room-1"] == Placement("eu", 4, None) and acts == []  # nowhere to go: unavailable


def test_bad_events() -> None:
    with pytest.raises(ValueError, match="unknown region 'mars'"):
        step(initial(REGIONS), RegionDown("mars"))
    s = initial(["na"])
    s, _ = step(s, RegionDown("na"))
    with pytest.raises(ValueError, match="no live region"):
        step(s, Place("x"))


def test_a_backup_that_never_got_a_copy_is_not_promoted() -> None:
    """Issue 20: the owner's region fails before its backup confirmed a copy: promoting it would serve an
    empty object (every acknowledged write lost), so the object waits for its region; a report naming an
    earlier backup does not count for the current one."""
    s, _ = step(initial(REGIONS), Place("room-1", hint="eu"))
    down, acts = step(s, RegionDown("eu"))
    assert down.objects["room-1"] == Placement("eu", 1, "na") and acts == []  # unavailable, not moved
    stale, _ = step(s, Seeded("room-1", "apac"))  # not its backup
    assert not stale.objects["room-1"].seeded
    s, acts = step(seeded(s), RegionDown("eu"))
    assert s.objects["room-1"].owner == "na" and "promote" in [a.kind for a in acts]
