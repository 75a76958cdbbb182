"""The Durable Object directory as a pure state machine: which region owns each object, at which epoch,
and which region holds its backup.

``step(state, event) -> (state, actions)``; no I/O. Events:

- :class:`Place` — a first call for an object: owner = the location hint if it names a live region, else
  a stable hash of the object id over the live regions (sorted); backup = another stable hash over the
  other live regions (so a failed region's objects spread over the rest).
- :class:`Seeded` — the owner reports that the object's backup holds a copy (the owner's lease renewal:
  ``shipped_to``); until then the backup is not *seeded*.
- :class:`RegionDown` — every object owned there whose backup is seeded moves to it with ``epoch + 1``
  (the fence: the old owner's storage refuses that object's writes from then on); one whose backup was
  never seeded stays unavailable until its region returns (promoting a backup without a copy would
  serve an empty object and lose every acknowledged write); objects whose backup was there get a new
  backup. Actions say what the I/O layer must do: ``promote`` (restore snapshot + replay log on the
  new owner), ``fence`` (tell the old owner's store the new epoch, when it is reachable again),
  ``reseed`` (ship the whole object to a new backup), ``route`` (update the PoPs' DO routers).
- :class:`RegionUp` — the region is live again: it takes new objects, and objects left without a live
  backup get one (``reseed``); owners do not move back on their own (a move would be another failover).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Placement:
    owner: str
    epoch: int
    backup: str | None
    #: The backup holds a copy (the owner said so); a new backup starts unseeded.
    seeded: bool = False


@dataclass(frozen=True)
class State:
    regions: tuple[str, ...]
    live: frozenset[str]
    objects: dict[str, Placement] = field(default_factory=dict)


@dataclass(frozen=True)
class Place:
    object_id: str
    hint: str | None = None


@dataclass(frozen=True)
class RegionDown:
    region: str


@dataclass(frozen=True)
class RegionUp:
    region: str


@dataclass(frozen=True)
class Seeded:
    """The owner of ``object_id`` reports that ``backup`` holds a copy of it."""

    object_id: str
    backup: str


@dataclass(frozen=True)
class Action:
    kind: str  # promote | fence | reseed | route
    object_id: str
    region: str
    epoch: int


def initial(regions: list[str]) -> State:
    return State(tuple(sorted(regions)), frozenset(regions))


def _live(state: State) -> list[str]:
    return [r for r in state.regions if r in state.live]


def _stable(object_id: str, options: list[str]) -> str:
    digest = int.from_bytes(hashlib.sha256(object_id.encode()).digest()[:8], "big")
    return options[digest % len(options)]


def _backup_for(object_id: str, owner: str, live: list[str]) -> str | None:
    """A stable choice among the live regions other than the owner: the objects of a failed region
    spread over the others instead of all landing on one."""
    options = sorted(r for r in live if r != owner)
    return _stable(f"{object_id}/backup", options) if options else None


def step(state: State, event: Any) -> tuple[State, list[Action]]:
    """The next state and the actions the I/O layer must carry out. Raises ValueError for an event
    that makes no sense (an unknown region, no live region to place an object in)."""
    if isinstance(event, Place):
        if event.object_id in state.objects:
            return state, []
        live = _live(state)
        if not live:
            raise ValueError("no live region to place an object in")
        owner = event.hint if event.hint in state.live else _stable(event.object_id, live)
        backup = _backup_for(event.object_id, owner, live)
        objects = {**state.objects, event.object_id: Placement(owner, 1, backup)}
        return replace(state, objects=objects), [Action("route", event.object_id, owner, 1)]
    if isinstance(event, Seeded):
        p = state.objects.get(event.object_id)
        if p is None or p.seeded or p.backup != event.backup:
            return state, []  # not this object's current backup (a report from before a reseed)
        return replace(state, objects={**state.objects, event.object_id: replace(p, seeded=True)}), []
    if isinstance(event, RegionDown | RegionUp) and event.region not in state.regions:
        raise ValueError(f"unknown region {event.region!r}; there are: {', '.join(state.regions)}")
    if isinstance(event, RegionUp):
        if event.region in state.live:
            return state, []
        live = [r for r in state.regions if r in state.live | {event.region}]
        objects = dict(state.objects)
        up_actions: list[Action] = []
        for oid, p in sorted(state.objects.items()):
            if p.owner in live and (p.backup is None or p.backup not in live):
                backup = _backup_for(oid, p.owner, live)
                objects[oid] = replace(p, backup=backup, seeded=False)
                if backup is not None:
                    up_actions.append(Action("reseed", oid, backup, p.epoch))
        return replace(state, live=frozenset(live), objects=objects), up_actions
    if isinstance(event, RegionDown):
        live = [r for r in _live(state) if r != event.region]
        objects = dict(state.objects)
        actions: list[Action] = []
        for oid, p in sorted(state.objects.items()):
            if p.owner == event.region:
                if p.backup is None or p.backup not in live or not p.seeded:
                    continue  # nowhere to go (no live backup with a copy): unavailable until it returns
                epoch = p.epoch + 1
                backup = _backup_for(oid, p.backup, live)
                objects[oid] = Placement(p.backup, epoch, backup)
                actions += [Action("promote", oid, p.backup, epoch), Action("fence", oid, event.region, epoch),
                            Action("route", oid, p.backup, epoch)]
                if backup is not None:
                    actions.append(Action("reseed", oid, backup, epoch))
            elif p.backup == event.region:
                backup = _backup_for(oid, p.owner, live)
                objects[oid] = replace(p, backup=backup, seeded=False)
                if backup is not None:
                    actions.append(Action("reseed", oid, backup, p.epoch))
        return replace(state, live=frozenset(live), objects=objects), actions
    raise ValueError(f"unknown event {event!r}")
