"""The one exception hierarchy of anylab, the lab's and the platform's alike: library code raises these,
only ``__main__`` exits. The platform's own errors (KV, Durable Objects, deployments, the control
plane's client) derive from :class:`AnylabError` in their packages; the lab's are below."""

from __future__ import annotations


class AnylabError(Exception):
    """Any failure anylab reports; the message names the node and daemon when there is one."""

    def __init__(self, message: str, *, node: str | None = None, daemon: str | None = None) -> None:
        self.node = node
        self.daemon = daemon
        where = "/".join(part for part in (node, daemon) if part)
        super().__init__(f"{where}: {message}" if where else message)


class TopologyError(AnylabError):
    """A topology file is invalid: names the file, the path to the field, what is wrong and the fix."""

    # How many further problems one error lists; the rest are counted, so a broken file cannot print
    # thousands of lines.
    MAX_LISTED = 20

    def __init__(self, source: str, field: str, problem: str, fix: str,
                 also: tuple[TopologyError, ...] = ()) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.fix = fix
        self.also = also
        lines = [f"{source}: {field}: {problem}. Fix: {fix}"]
        lines += [f"  also {e.field}: {e.problem}. Fix: {e.fix}" for e in also[:self.MAX_LISTED]]
        if len(also) > self.MAX_LISTED:
            lines.append(f"  and {len(also) - self.MAX_LISTED} more problems")
        super().__init__("\n".join(lines))

    @classmethod
    def of_all(cls, errors: list[TopologyError]) -> TopologyError:
        """One error for several of one file: the first on the first line (so a script reading one line
        gets it), every other on a line of its own below. ``errors`` must not be empty."""
        first = errors[0]
        return cls(first.source, first.field, first.problem, first.fix, tuple(errors[1:]))

    @property
    def count(self) -> int:
        """How many problems this error reports."""
        return 1 + len(self.also)


class WaitTimeout(AnylabError):
    """A poll with a deadline ran out; the message carries the last state seen."""


class DaemonError(AnylabError):
    """A daemon failed to render, validate, start, become ready or stop."""


class UsageError(AnylabError):
    """A command asked for something that does not exist or does not apply (exit status 2); the lab is
    left untouched."""
