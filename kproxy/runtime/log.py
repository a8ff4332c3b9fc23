"""JSON-lines logging on stdout, in the shape of kamal-proxy's slog output."""

from __future__ import annotations

import datetime
import json
import sys
import time
import types
from collections.abc import Mapping
from typing import Any, Final, TextIO

import attrs
import trio

ACCESS_MSG: Final = "Request"  # the access log line: one per request, batched
FLUSH_INTERVAL: Final = 0.1  # seconds an access line may wait in the buffer
MAX_PENDING: Final = 256  # lines held at most: a bounded buffer, one write(2) per batch
# One encoder for every line: json.dumps(default=...) would build a new one per call.
_ENCODER: Final = json.JSONEncoder(default=str)
# The milliseconds and offset that end a timestamp, one string per millisecond.
_MILLIS: Final = tuple(f".{ms:03d}+00:00" for ms in range(1000))

# The fields of an access line as RequestLog fills them (kamal-proxy's names, in its order).
# Every request logs them, and JSONEncoder spends ~150 ns per dict member, so the usual line is
# formatted by RequestLog.members instead (one f-string, these names).
ACCESS_FIELDS: Final = (
    "host",
    "port",
    "path",
    "request_id",
    "service",
    "target",
    "method",
    "req_content_length",
    "req_content_type",
    "client_addr",
    "client_port",
    "remote_addr",
    "user_agent",
    "proto",
    "scheme",
    "query",
    "status",
    "duration",
    "resp_content_length",
    "resp_content_type",
)


def _read_only(context: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(context))


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
    # Fields every line carries, first; fixed when the Logger is made (read-only afterwards).
    context: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only)
    _pending: list[str] = attrs.field(factory=list)  # access lines not written yet
    _flushing: bool = False  # a flush task is running
    _last_flush: float = 0.0  # time.monotonic() of the last flush
    _stamp_second: int = -1  # the unix second ``_stamp_prefix`` spells
    _stamp_prefix: str = ""
    # ``"level": "INFO", "msg": "Request", `` and the context, as JSON members; None if the
    # context does not suit access's template.
    _access_head: str | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._access_head = _access_head(self.context)

    def debug(self, msg: str, **fields: Any) -> None:
        if self.debug_enabled:
            self._write("DEBUG", msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._write("INFO", msg, fields)

    def access(self, fields: dict[str, Any]) -> None:
        """The access log line of one request (msg "Request"), ``fields`` taken as they are
        (the usual line comes through ``access_members`` instead)."""
        self._write("INFO", ACCESS_MSG, fields)

    def access_members(self, members: str) -> bool:
        """``access`` of the usual line, given its members as JSON text
        (``RequestLog.members``); False, writing nothing, if the context does not suit the
        template (then ``access`` writes it)."""
        head = self._access_head
        if head is None:
            return False
        # _timestamp and _add, inlined: this runs for every request.
        now = time.time()
        second = int(now)
        if second == self._stamp_second:
            stamp = self._stamp_prefix + _MILLIS[int((now - second) * 1000)]
        else:
            stamp = self._timestamp()
        pending = self._pending
        pending.append(f'{{"time": "{stamp}", {head}{members}}}\n')
        # No clock reading here: the flush task's sleep bounds the wait (trio wakes a sleeper
        # at the first scheduling pass after its deadline, however busy the worker).
        if len(pending) >= MAX_PENDING:
            self.flush()
        elif not self._flushing:
            self._defer_flush()
        return True

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
        return self._stamp_prefix + _MILLIS[int((now - second) * 1000)]

    def _write(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        record = {"time": self._timestamp(), "level": level, "msg": msg, **self.context, **fields}
        self._add(_ENCODER.encode(record) + "\n", batched=msg == ACCESS_MSG)

    def _add(self, line: str, *, batched: bool) -> None:
        self._pending.append(line)
        if (
            not batched
            or len(self._pending) >= MAX_PENDING
            or time.monotonic() - self._last_flush >= FLUSH_INTERVAL
        ):
            self.flush()
        elif not self._flushing:
            self._defer_flush()


def _access_head(context: Mapping[str, Any]) -> str | None:
    """``"level": "INFO", "msg": "Request", `` and ``context``, as the encoder writes them; None
    if the context does not suit the template: a non-str key or a value other than str or int
    (an equal bool or float would be spelled differently), or a key an access line has."""
    if not all(type(key) is str and type(value) in (str, int) for key, value in context.items()):
        return None
    if not context.keys().isdisjoint(("time", *ACCESS_FIELDS)):
        return None
    return _ENCODER.encode({"level": "INFO", "msg": ACCESS_MSG, **context})[1:-1] + ", "
