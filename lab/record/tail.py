"""Following a JSON-lines file that a lab process appends to and rotates (``FILE`` → ``FILE.1``, as the
probers do past ``--max-bytes``): what a run of an hour needs, since the files it reads at the end keep only
the last two rotations."""

from __future__ import annotations

import os
from pathlib import Path


class JsonlTail:
    """The complete lines appended to ``path`` since the last :meth:`read`, across a rotation to
    ``path.1`` (the rest of the rotated file first). A rotation that happened more than once between two
    reads loses lines: counted in ``missed_rotations`` (unless the newest file reused the first one's inode
and outgrew the offset: reads must come well within one rotation's time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.inode: int | None = None
        self.offset = 0
        self.partial = b""
        self.missed_rotations = 0

    def _read_from(self, path: Path, offset: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()

    def read(self) -> list[str]:
        """The complete lines written since the last call (a partial last line waits for its end)."""
        data = b""
        try:
            st = os.stat(self.path)
            inode, size = st.st_ino, st.st_size
        except FileNotFoundError:
            inode, size = None, 0
        # Rotated: another file, or (a freed inode reused after two rotations) one shorter than our offset.
        if self.inode is not None and (inode != self.inode or size < self.offset):
            try:  # the file we were reading was rotated: its rest is in FILE.1, if only once
                if os.stat(self.rotated).st_ino == self.inode:
                    data += self._read_from(self.rotated, self.offset)
                else:
                    self.missed_rotations += 1
            except FileNotFoundError:
                self.missed_rotations += 1
            self.inode, self.offset = None, 0
            if not data.endswith(b"\n"):  # a line cut by the rotation cannot be finished: dropped
                data = data[: data.rfind(b"\n") + 1]
        if inode is not None:
            chunk = self._read_from(self.path, self.offset)
            self.inode, self.offset = inode, self.offset + len(chunk)
            data += chunk
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return data[:cut].decode(errors="replace").splitlines()
