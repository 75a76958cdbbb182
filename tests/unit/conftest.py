"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tenant.isolate import IsolateSpawner


@pytest.fixture(scope="module")
def spawner() -> Iterator[IsolateSpawner]:
    """A running isolate spawner (sandboxed, as the edge runs it), one per test module."""
    z = IsolateSpawner()
    z.start()
    yield z
    z.stop()
