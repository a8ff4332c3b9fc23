"""JSON-lines logging on stdout, in the shape of kamal-proxy's slog output."""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import Any, Final, TextIO

import attrs
import trio

ACCESS_MSG: Final = "Request"  # the access log line: one per request, batched
FLUSH_INTERVAL: Final = 0.1  # seconds an access line may wait in the buffer
MAX_PENDING: Final = 256  # lines held at most: a bounded buffer, one write(2) per batch
# One encoder for every line: json.dumps(default=...) would build a new one per call.
_ENCODER: Final = json.JSONEncoder(default=str)


@attrs.define(eq=False)
class Logger:
    """One JSON object per line: ``time``, ``level``, ``msg``, then the event's fields.

    Access lines (``msg`` "Request") are held and written in batches, at most
    ``FLUSH_INTERVAL`` (or ``MAX_PENDING`` lines) after they were logged (see ``_serve_flush``):
    a write per request is a write(2) per request, whatever buffering ``out`` has (none under
    PYTHONUNBUFFERED). Every other line is written at once, after any access lines held, so
    the order on the stream is the order of the events.
    """

    out: TextIO = attrs.field(factory=lambda: sys.stdout)
    debug_enabled: bool = False
    context: dict[str, Any] = attrs.field(factory=dict)  # fields every line carries, first
    _pending: list[str] = attrs.field(factory=list)  # access lines not written yet
    _flushing: bool = False  # a flush task is running
    _last_flush: float = 0.0  # time.monotonic() of the last flush
    _stamp_second: int = -1  # the unix second ``_stamp_prefix`` spells
    _stamp_prefix: str = ""

    def debug(self, msg: str, **fields: Any) -> None:
        if self.debug_enabled:
            self._write("DEBUG", msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._write("INFO", msg, fields)

    def access(self, fields: dict[str, Any]) -> None:
        """The access log line of one request (msg "Request"), ``fields`` taken as they are."""
        self._write("INFO", ACCESS_MSG, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._write("WARN", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._write("ERROR", msg, fields)

    def flush(self) -> None:
        """Write out every buffered line."""
        lines, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        try:
            if lines:
                self.out.write("".join(lines))
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed or full stdout must not take the proxy down

    async def _serve_flush(self) -> None:
        """Flush batched access lines every ``FLUSH_INTERVAL`` while there are any. A trio
        system task: it holds up no nursery, and ends (flushing) when the run ends."""
        try:
            while self._pending:
                await trio.sleep(FLUSH_INTERVAL)
                self.flush()
        finally:
            self._flushing = False
            if self._pending:
                self.flush()

    def _defer_flush(self) -> None:
        if self._flushing:
            return
        try:
            trio.lowlevel.spawn_system_task(self._serve_flush)
        except RuntimeError:  # not in a trio run: nothing would flush later
            self.flush()
            return
        self._flushing = True

    def _timestamp(self) -> str:
        """RFC 3339 UTC with milliseconds, as datetime's isoformat gives it; the date and time
        of day are formatted once a second, which is most of the cost."""
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._stamp_second, self._stamp_prefix = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp_prefix}.{int((now - second) * 1000):03d}+00:00"

    def _write(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        record = {"time": self._timestamp(), "level": level, "msg": msg, **self.context}
        record.update(fields)
        line = _ENCODER.encode(record)
        self._pending.append(line + "\n")
        if (
            msg != ACCESS_MSG
            or len(self._pending) >= MAX_PENDING
            or time.monotonic() - self._last_flush >= FLUSH_INTERVAL
        ):
            self.flush()
        else:
            self._defer_flush()
