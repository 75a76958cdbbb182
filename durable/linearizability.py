"""A linearizability checker for the Durable Object histories (Wing & Gong's search with Lowe's
memoisation, checked per object: linearizability is compositional).

A history is a list of events ``{"process", "type": "invoke"|"ok"|"fail"|"info", "f", "key", "value",
"time"}`` as a Jepsen-style client records them: every operation is an ``invoke`` followed, on the same
process, by ``ok`` (it happened, with its result in ``value``), ``fail`` (it certainly did not happen) or
``info`` (unknown: it may have taken effect at any time after its invocation, or never). The models:

- ``register``: ``read`` → the value, ``write`` v, ``cas`` [old, new] → ok only if the value was old
  (a ``cas`` whose result is false must have seen another value);
- ``counter``: ``incr`` by n → the new total, ``read`` → the total.

``check(history, model)`` returns a :class:`Verdict`: linearizable or not, and for the first object
that is not, the shortest prefix of its operations that is already not linearizable: what a person
needs to read.

No maintained Python checker exists (Knossos and Porcupine are Clojure and Go), hence this one; it is
exponential in the worst case like theirs, and fine for the per-object histories of the lab's tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Step = Callable[[Any, str, Any, Any], tuple[bool, Any]]


@dataclass(frozen=True)
class Op:
    """An operation with its window: it took effect at one instant in [invoke, complete]."""

    index: int
    process: Any
    f: str
    key: Any
    arg: Any
    result: Any
    invoke: float
    complete: float  # math.inf for an indeterminate (info) operation
    definite: bool  # ok: it must be in the linearization; info: it may be left out


def register(state: Any, f: str, arg: Any, result: Any) -> tuple[bool, Any]:
    """One step of a read/write/cas register (initial state None)."""
    if f == "read":
        return result == state, state
    if f == "write":
        return True, arg
    if f == "cas":
        old, new = arg
        if result is False:  # the client was told the comparison failed
            return state != old, state
        return state == old, new if state == old else state
    raise ValueError(f"register: unknown operation {f!r}")


def counter(state: Any, f: str, arg: Any, result: Any) -> tuple[bool, Any]:
    """One step of a counter (initial state 0 or None): ``incr`` returns the new total."""
    total = state or 0
    if f == "incr":
        new = total + (arg if arg is not None else 1)
        return result is None or result == new, new
    if f == "read":
        return (result or 0) == total, total  # a counter never incremented reads as absent (None)
    raise ValueError(f"counter: unknown operation {f!r}")


MODELS: dict[str, Step] = {"register": register, "counter": counter}


def operations(history: Iterable[dict[str, Any]]) -> list[Op]:
    """Pair invocations with their completions, per process; drop failed ones. An invocation with no
    completion counts as indeterminate. Raises ValueError for a malformed history: a completion without an
    invocation, or a second invocation on a process whose first has not completed (a Jepsen process runs
    one operation at a time; replacing the first would silently drop an operation that may have happened)."""
    pending: dict[Any, tuple[int, dict[str, Any]]] = {}
    ops: list[Op] = []
    for i, ev in enumerate(history):
        proc, kind = ev["process"], ev["type"]
        if kind == "invoke":
            if proc in pending:
                raise ValueError(f"event {i}: invoke on process {proc!r} while its invoke at event "
                                 f"{pending[proc][0]} has not completed")
            pending[proc] = (i, ev)
            continue
        if proc not in pending:
            raise ValueError(f"event {i}: {kind} on process {proc!r} without an invoke")
        j, inv = pending.pop(proc)
        if kind == "fail" or (kind == "info" and inv["f"] == "read"):
            continue  # it did not happen, or it was a read of unknown outcome: no effect either way
        ops.append(Op(j, proc, inv["f"], inv.get("key"), inv.get("value"),
                      ev.get("value") if kind == "ok" else None, float(inv["time"]),
                      float(ev["time"]) if kind == "ok" else math.inf, kind == "ok"))
    ops += [Op(j, p, inv["f"], inv.get("key"), inv.get("value"), None, float(inv["time"]), math.inf, False)
            for p, (j, inv) in pending.items() if inv["f"] != "read"]
    return sorted(ops, key=lambda o: (o.invoke, o.index))


def _window(ops: list[Op], done: int) -> tuple[list[int], float]:
    """The operations (indices into ``ops``, which are in invocation order) that may take effect next,
    given those in ``done``, and the horizon: the next one must have started before every pending one
    had finished, so the scan stops at the first invocation past the earliest pending completion."""
    horizon, out = math.inf, []
    low = (~done & (done + 1)).bit_length() - 1  # the first operation not yet taken
    for i in range(low, len(ops)):
        if done >> i & 1:
            continue
        o = ops[i]
        if o.invoke > horizon:
            break
        out.append(i)
        horizon = min(horizon, o.complete)
    return [i for i in out if ops[i].invoke <= horizon], horizon


def linearizable(ops: list[Op], step: Step, initial: Any = None) -> bool:
    """Whether some order of ``ops`` (all definite ones, any subset of the indeterminate ones) respects
    every operation's window and the model. Depth-first with an explicit stack (histories are longer
    than Python's recursion limit) and Lowe's memo of (operations done, state)."""
    ops = sorted(ops, key=lambda o: (o.invoke, o.index))
    must = sum(1 << i for i, o in enumerate(ops) if o.definite)
    seen: set[tuple[int, Any]] = set()

    def candidates(done: int) -> list[int]:
        return _window(ops, done)[0]

    stack: list[tuple[int, Any, list[int]]] = [(0, initial, candidates(0))]
    while stack:
        done, state, todo = stack[-1]
        if done & must == must:
            return True
        if not todo:
            stack.pop()
            continue
        i = todo.pop()
        o = ops[i]
        ok, new = step(state, o.f, o.arg, o.result)
        if not ok:
            continue
        nxt = done | 1 << i
        memo = (nxt, _freeze(new))
        if memo in seen:
            continue
        seen.add(memo)
        stack.append((nxt, new, candidates(nxt)))
    return False


def counter_linearizable(ops: list[Op]) -> bool | None:
    """The counter model's search when every indeterminate operation is an increment by the same
    amount (None otherwise: use :func:`linearizable`). Such increments are interchangeable, so of those
    that took effect it is enough to consider the earliest invoked: the search state is (definite
    operations done, how many of the indeterminate increments took effect) instead of one bit per
    indeterminate increment — which keeps a history with dozens of timed-out increments polynomial."""
    definite = sorted((o for o in ops if o.definite), key=lambda o: (o.invoke, o.index))
    pending = sorted((o for o in ops if not o.definite), key=lambda o: (o.invoke, o.index))
    if any(o.f != "incr" for o in pending) or len({o.arg for o in pending}) > 1:
        return None
    step_by = pending[0].arg if pending and pending[0].arg is not None else 1
    n, m = len(definite), len(pending)
    must = (1 << n) - 1
    seen: set[tuple[int, int]] = set()

    def moves(done: int, k: int) -> list[int]:
        out, horizon = _window(definite, done)
        if k < m and pending[k].invoke <= horizon:
            out.append(-1)  # the next indeterminate increment takes effect now
        return out

    stack: list[tuple[int, int, int, list[int]]] = [(0, 0, 0, moves(0, 0))]
    while stack:
        done, k, total, todo = stack[-1]
        if done == must:
            return True
        if not todo:
            stack.pop()
            continue
        i = todo.pop()
        if i == -1:
            nxt, nk, new = done, k + 1, total + step_by
        else:
            o = definite[i]
            ok, new = counter(total, o.f, o.arg, o.result)
            if not ok:
                continue
            nxt, nk = done | 1 << i, k
        if (nxt, nk) in seen:
            continue
        seen.add((nxt, nk))
        stack.append((nxt, nk, new, moves(nxt, nk)))
    return False


def _freeze(state: Any) -> Any:
    if isinstance(state, list):
        return tuple(_freeze(s) for s in state)
    if isinstance(state, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in state.items()))
    return state


@dataclass
class Verdict:
    linearizable: bool
    objects: int
    operations: int
    key: Any = None
    #: The shortest prefix of the failing object's operations that is not linearizable.
    counterexample: list[Op] = field(default_factory=list)

    def explain(self) -> str:
        if self.linearizable:
            return f"linearizable: {self.operations} operations on {self.objects} objects"
        lines = [f"NOT linearizable: object {self.key!r}; the shortest failing prefix of its operations:"]
        for o in sorted(self.counterexample, key=lambda o: o.invoke):
            end = "?" if o.complete == math.inf else f"{o.complete:.6f}"
            lines.append(f"  [{o.invoke:.6f} → {end}] process {o.process}: {o.f}({o.arg!r}) → {o.result!r}")
        return "\n".join(lines)


def _check_ops(ops: list[Op], step: Step, model: str) -> bool:
    fast = counter_linearizable(ops) if model == "counter" else None
    return fast if fast is not None else linearizable(ops, step)


def shrink(ops: list[Op], step: Step, model: str = "") -> list[Op]:
    """The shortest prefix (in invocation order) that is already not linearizable. (Dropping operations
    from the middle can always end at a lone read of a value whose write was dropped — minimal, and
    useless to a reader; a prefix keeps the writes that made the failing read possible.)"""
    ordered = sorted(ops, key=lambda o: (o.invoke, o.index))
    for k in range(1, len(ordered) + 1):
        if not _check_ops(ordered[:k], step, model):
            return ordered[:k]
    return ordered


def check(history: Iterable[dict[str, Any]], model: str = "register") -> Verdict:
    """Check a whole history, object by object. Raises ValueError for a malformed history."""
    step = MODELS[model]
    ops = operations(history)
    by_key: dict[Any, list[Op]] = {}
    for o in ops:
        by_key.setdefault(o.key, []).append(o)
    for key, key_ops in by_key.items():
        if not _check_ops(key_ops, step, model):
            return Verdict(False, len(by_key), len(ops), key, shrink(key_ops, step, model))
    return Verdict(True, len(by_key), len(ops))
