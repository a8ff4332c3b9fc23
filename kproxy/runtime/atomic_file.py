"""Files replaced whole: a ``kill -9`` or a power cut at any moment leaves the old content or
the new, never a mix (the state file, cached certificates). Blocking: callers run it with
``trio.to_thread.run_sync``, the one kind of work kproxy gives a thread."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o666, directory_mode: int = 0o777
) -> None:
    """Replace ``path`` with ``data``: a temp file in the same directory, fsync, rename over,
    fsync the directory. POSIX rename is atomic, and the fsyncs make the new content durable
    before and after the switch. ``mode`` is the file's (masked by the umask unless it is
    stricter), ``directory_mode`` that of directories made on the way."""
    path.parent.mkdir(mode=directory_mode, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            if mode & 0o077 == 0:  # a private file, even where a leftover temp file was not
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
