"""The state file on disk: written atomically, so ``kill -9`` leaves the old or the new state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from kproxy.core import snapshot
from kproxy.errors import StateError
from kproxy.runtime.atomic_file import write_atomically

STATE_FILE_NAME: Final = "kproxy.state.json"


@attrs.define(eq=False)
class StateStore:
    directory: Path
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE_NAME

    def read(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none yet (read once at start-up).

        Temp files left by a save that ``kill -9`` interrupted are removed here.
        """
        for leftover in self.directory.glob(f".{STATE_FILE_NAME}.*.tmp"):
            leftover.unlink(missing_ok=True)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state file {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(f"state file {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise StateError(f"state file {self.path} does not hold a JSON object")
        return data

    async def write(self, text: str) -> None:
        """Save ``text`` (``snapshot.dump_text``); saves are serialized so a slower older one
        can't overwrite a newer one."""
        async with self._lock:
            try:
                await trio.to_thread.run_sync(write_atomically, self.path, text.encode())
            except OSError as exc:
                raise StateError(f"cannot save state to {self.path}: {exc}") from exc

    def load(self) -> tuple[list[snapshot.ServiceRecord], list[str]]:
        """The services in the state file, and why any could not be restored (none: no file).

        A file that is unusable as a whole (another format version) raises StateError: it is
        left untouched rather than overwritten by the next change.
        """
        self._check_writable()
        data = self.read()
        if data is None:
            return [], []
        try:
            return snapshot.load(data)
        except ValueError as exc:
            raise StateError(
                f"cannot restore {self.path}: {exc}; move the file away to start with no services"
            ) from exc

    def _check_writable(self) -> None:
        """Refuse to start with a state directory that cannot be written: every command would
        answer ERR (a read-only file system, a path that is a file)."""
        probe = self.directory / f".{STATE_FILE_NAME}.{os.getpid()}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            probe.unlink()
        except OSError as exc:
            raise StateError(
                f"cannot write to the state directory {self.directory} "
                f"({exc.strerror or exc}); make it writable or choose another with --state-dir"
            ) from None
