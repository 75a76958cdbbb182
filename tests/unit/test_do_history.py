"""Recorder + checker end to end, against in-memory registers: a correct one and one that serves reads
from a lagging replica (the bug the checker exists to catch)."""

from __future__ import annotations

import asyncio
import io
import json
import random
from typing import Any

from durable.history import Definite, Recorder
from durable.linearizability import check


class Register:
    """One value; operations take a little while, so clients overlap. With ``stale_reads`` reads are
    served from a copy that lags one write behind."""

    def __init__(self, stale_reads: bool = False) -> None:
        self.value: Any = None
        self.previous: Any = None
        self.stale_reads = stale_reads

    async def write(self, v: Any) -> Any:
        await asyncio.sleep(random.uniform(0, 0.002))
        self.previous, self.value = self.value, v
        await asyncio.sleep(random.uniform(0, 0.002))
        return v

    async def read(self) -> Any:
        await asyncio.sleep(random.uniform(0, 0.002))
        return self.previous if self.stale_reads else self.value

    async def cas(self, old: Any, new: Any) -> bool:
        await asyncio.sleep(random.uniform(0, 0.002))
        if self.value != old:
            return False
        self.previous, self.value = self.value, new
        return True


async def workload(reg: Register, rec: Recorder, seed: int) -> None:
    rng = random.Random(seed)
    random.seed(seed)  # the operations' durations too: the same interleaving every run

    async def client(p: int) -> None:
        for i in range(25):
            r = rng.random()
            if r < 0.4:
                await rec.run(p, "read", "x", None, reg.read, timeout=1)
            elif r < 0.8:
                v = p * 100 + i

                async def write(v: Any = v) -> Any:
                    return await reg.write(v)

                await rec.run(p, "write", "x", v, write, timeout=1)
            else:
                old, new = rng.choice([None, *range(5)]), p * 100 + i

                async def cas(old: Any = old, new: Any = new) -> Any:
                    return await reg.cas(old, new)

                await rec.run(p, "cas", "x", [old, new], cas, timeout=1)

    await asyncio.gather(*(client(p) for p in range(4)))


def test_a_correct_register_records_a_linearizable_history() -> None:
    out = io.StringIO()
    rec = Recorder(out)
    asyncio.run(workload(Register(), rec, seed=1))
    v = check([json.loads(line) for line in out.getvalue().splitlines()])
    assert v.linearizable and v.operations == 100, v.explain()


def test_stale_reads_are_caught() -> None:
    rec = Recorder()
    asyncio.run(workload(Register(stale_reads=True), rec, seed=2))
    v = check(rec.events)
    assert not v.linearizable and v.counterexample, v.explain()


def test_outcomes_ok_fail_info() -> None:
    rec = Recorder()

    async def refused() -> Any:
        raise Definite("refused before sending")

    async def hangs() -> Any:
        await asyncio.sleep(10)

    async def main() -> None:
        await rec.run(1, "write", "x", 1, refused, timeout=1)
        await rec.run(2, "write", "x", 2, hangs, timeout=0.01)

    asyncio.run(main())
    assert [e["type"] for e in rec.events] == ["invoke", "fail", "invoke", "info"]
