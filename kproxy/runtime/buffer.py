"""A body held whole before it is forwarded: in memory up to a limit, then in a temporary file.

:class:`~kproxy.core.buffering.BufferPolicy` decides; this module keeps the bytes. The file is
anonymous (``tempfile.TemporaryFile``: O_TMPFILE on Linux, else created and unlinked at once),
so it has no name to leak: closing it, on success, failure or cancellation alike, gives the
space back, and even a ``kill -9`` leaves nothing behind on disk.

The file is written and read on the event loop: each call moves at most one network read
(64 KiB) through the page cache, which costs less than a trip to a worker thread would.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Final

import attrs

from kproxy.core.buffering import BufferAction, BufferPolicy

FILE_PREFIX: Final = "kproxy-buffer-"
READ_CHUNK: Final = 64 * 1024  # bytes per piece sent on from the file


@attrs.define(eq=False)
class SpooledBody:
    """One buffered body. Use as a context manager, so the file is closed however it ends.

    Args:
      policy: the limits (memory, maximum body); fed with every write.
      directory: where a spilled body's file goes; None means the system temp dir (TMPDIR).
    """

    policy: BufferPolicy
    directory: str | None = None
    _memory: list[bytes] = attrs.field(factory=list)
    _file: IO[bytes] | None = None
    size: int = 0  # bytes held (the policy also counts the refused piece, never written)
    closed: bool = False

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def write(self, data: bytes | memoryview) -> BufferAction:
        """Keep ``data``; returns REJECT (and keeps nothing more) when the body is too large."""
        if self.closed:
            raise RuntimeError("write() on a closed buffer")
        action = self.policy.feed(len(data))
        if action is BufferAction.REJECT:
            return action
        if action is BufferAction.SPILL:
            # Closed by close(), which the owner's `with` block guarantees.
            self._file = tempfile.TemporaryFile(prefix=FILE_PREFIX, dir=self.directory)  # noqa: SIM115
            for piece in self._memory:
                self._file.write(piece)
            self._memory.clear()
        if self._file is not None:
            self._file.write(data)
        elif data:
            self._memory.append(bytes(data))
        self.size += len(data)
        return action

    def chunks(self) -> Iterator[bytes]:
        """The body from its start, in pieces; may be iterated again (a retried request)."""
        if self.closed:
            raise RuntimeError("chunks() on a closed buffer")
        if self._file is None:
            yield from list(self._memory)
            return
        self._file.flush()
        offset = 0
        while True:
            # Seek each time: another iteration may have moved the position in between.
            self._file.seek(offset)
            piece = self._file.read(READ_CHUNK)
            if not piece:
                return
            offset += len(piece)
            yield piece

    def close(self) -> None:
        """Drop the bytes and close (so remove) the file; safe to call more than once."""
        self.closed = True
        self._memory.clear()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> SpooledBody:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
