"""Shared test helpers: paths, and skipping root-only tests when not root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TOPOLOGIES = PROJECT / "topologies"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces and the lab's daemons)")
    for item in items:
        if "/tests/netns/" in str(item.path) or "/tests/lab/" in str(item.path):
            item.add_marker(skip)
