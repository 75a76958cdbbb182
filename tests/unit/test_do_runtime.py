"""Durable Object runtime on one host: input gate, output gate (sync vs async), alarms, fencing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.clock import monotonic
from durable.runtime import ObjectHost
from durable.storage import Fenced, ObjectStore
from tenant.worker_api import Request


class Counter:
    """Reads, yields to the loop (so that interleaving would lose updates), then writes."""

    def __init__(self, state: Any, env: Any) -> None:
        self.state = state
        self.alarms = 0
        self.fail_alarms = env.get("fail_alarms", 0)

    async def fetch(self, request: Request) -> Any:
        if request.url.endswith("/alarm"):
            await self.state.storage.set_alarm(monotonic() + 0.05)
            return "set"
        n = (await self.state.storage.get("n") or 0) + 1
        await asyncio.sleep(0.001)
        await self.state.storage.put("n", n)
        return str(n)

    async def alarm(self) -> None:
        if self.fail_alarms:
            self.fail_alarms -= 1
            raise RuntimeError("alarm handler failed")
        self.alarms += 1
        await self.state.storage.put("alarmed", self.alarms)


class Backup:
    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.root, self.delay = root, delay
        self.stores: dict[str, ObjectStore] = {}

    async def ship(self, object_id: str, entries: list[dict[str, Any]]) -> None:
        await asyncio.sleep(self.delay)
        store = self.stores.setdefault(object_id, ObjectStore(self.root / f"{object_id}.db"))
        store.replay(entries)


def host(tmp_path: Path, backup: Backup, mode: str = "sync", epoch: int = 1, **env: Any) -> ObjectHost:
    return ObjectHost(tmp_path / "owner", Counter, env, lambda oid: epoch, backup.ship, mode)


def test_input_gate_serialises_events(tmp_path: Path) -> None:
    backup = Backup(tmp_path / "backup")
    h = host(tmp_path, backup)

    async def main() -> list[str]:
        rs = await asyncio.gather(*(h.fetch("room", Request("GET", "/")) for _ in range(20)))
        return [r.body.decode() for r in rs]

    assert sorted(asyncio.run(main()), key=int) == [str(i) for i in range(1, 21)]  # no update lost


def test_sync_output_gate_answers_only_after_the_backup_has_it(tmp_path: Path) -> None:
    backup = Backup(tmp_path / "backup", delay=0.02)
    h = host(tmp_path, backup, mode="sync")

    async def main() -> Any:
        await h.fetch("room", Request("GET", "/"))
        return backup.stores["room"].get("n")  # already there when the answer came

    assert asyncio.run(main()) == 1


def test_async_mode_answers_first_and_ships_after(tmp_path: Path) -> None:
    backup = Backup(tmp_path / "backup", delay=0.05)
    h = host(tmp_path, backup, mode="async")

    async def main() -> tuple[Any, Any]:
        await h.fetch("room", Request("GET", "/"))
        before = backup.stores.get("room")
        await asyncio.gather(*h.background)
        return before, backup.stores["room"].get("n")

    before, after = asyncio.run(main())
    assert before is None and after == 1 and h.ship_lag


def test_an_alarm_runs_at_least_once_with_retries(tmp_path: Path) -> None:
    backup = Backup(tmp_path / "backup")
    h = host(tmp_path, backup, fail_alarms=2)

    async def main() -> Any:
        await h.fetch("room", Request("GET", "/alarm"))
        for _ in range(200):  # bounded: 0.05 s + retries after 0.1 and 0.2 s
            if h.objects["room"].store.get("alarmed"):
                break
            await asyncio.sleep(0.01)
        return h.objects["room"].store.get("alarmed"), h.alarms

    assert asyncio.run(main()) == (1, {})


def test_a_fenced_owner_cannot_write(tmp_path: Path) -> None:
    backup = Backup(tmp_path / "backup")
    h = host(tmp_path, backup, epoch=1)

    async def main() -> None:
        await h.fetch("room", Request("GET", "/"))
        h.objects["room"].store.fence(2)  # the directory moved the object on
        await h.fetch("room", Request("GET", "/"))

    with pytest.raises(Fenced, match="no longer current"):
        asyncio.run(main())


class FencedBackup(Backup):
    async def ship(self, object_id: str, entries: list[dict[str, Any]]) -> None:
        raise Fenced("the backup is at a newer epoch")


def test_a_write_committed_before_the_backup_fenced_it_is_not_a_definite_failure(tmp_path: Path) -> None:
    """Issue 20: the owner commits, then the backup refuses the shipment (it is at a newer epoch). That
    write is in the old owner's store, so it must not be reported as certainly not done (Fenced); a read
    fenced the same way is (FencedAfterCommit is for writes only)."""
    from durable.runtime import FencedAfterCommit

    h = host(tmp_path, FencedBackup(tmp_path / "backup"))
    with pytest.raises(FencedAfterCommit):
        asyncio.run(h.fetch("room", Request("GET", "/")))  # Counter writes n

    class Reader(Counter):
        async def fetch(self, request: Request) -> Any:
            return str(await self.state.storage.get("n"))

    reader = ObjectHost(tmp_path / "owner2", Reader, {}, lambda oid: 1, FencedBackup(tmp_path / "b2").ship, "sync")
    asyncio.run(reader.fetch("room", Request("GET", "/")))  # nothing to ship: answered
