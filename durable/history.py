"""Recording a Jepsen-style history: every client operation as ``invoke`` then ``ok``, ``fail`` or
``info``, with CLOCK_MONOTONIC times (one clock for every namespace of the lab), one JSON line each.

The rule for the completion is what makes a history checkable: ``ok`` when the answer says it happened
(with the result), ``fail`` only when it certainly did not (refused before anything was sent, or an
answer saying so), ``info`` when it is unknown (a timeout, a connection reset after the request left):
the checker then lets the operation take effect at any time after its invocation, or never.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from core.clock import monotonic


class Definite(Exception):
    """Raised by an operation that certainly did not take effect (recorded as ``fail``)."""


class Served:
    """What an operation's call may return instead of a bare result: the result and facts to record
    with it (who served it)."""

    def __init__(self, value: Any, **facts: Any) -> None:
        self.value, self.facts = value, facts



class Recorder:
    """Appends events to a list (and to ``out`` if given, one JSON line each)."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out
        self.events: list[dict[str, Any]] = []

    def _emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.out is not None:
            self.out.write(json.dumps(event) + "\n")

    async def run(self, process: Any, f: str, key: Any, value: Any, call: Callable[[], Awaitable[Any]],
                  timeout: float) -> Any:
        """Invoke ``call`` and record the outcome; returns the result (None unless ``ok``). Never raises
        for what the operation does."""
        self._emit({"time": monotonic(), "process": process, "type": "invoke", "f": f, "key": key, "value": value})
        try:
            result = await asyncio.wait_for(call(), timeout)
        except Definite as exc:
            self._emit({"time": monotonic(), "process": process, "type": "fail", "f": f, "key": key,
                        "value": None, "error": str(exc)})
            return None
        except Exception as exc:  # a timeout, a reset, an answer it cannot read: the outcome is unknown
            self._emit({"time": monotonic(), "process": process, "type": "info", "f": f, "key": key,
                        "value": None, "error": type(exc).__name__})
            return None
        facts: dict[str, Any] = {}
        if isinstance(result, Served):
            result, facts = result.value, result.facts
        self._emit({"time": monotonic(), "process": process, "type": "ok", "f": f, "key": key, "value": result,
                    **facts})
        return result


def load(path: Path) -> list[dict[str, Any]]:
    """A recorded history (a torn last line is skipped)."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
