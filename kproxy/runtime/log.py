"""JSON-lines logging on stdout, in the shape of kamal-proxy's slog output."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any, TextIO

import attrs


@attrs.define(eq=False)
class Logger:
    """One JSON object per line: ``time``, ``level``, ``msg``, then the event's fields."""

    out: TextIO = attrs.field(factory=lambda: sys.stdout)
    debug_enabled: bool = False

    def debug(self, msg: str, **fields: Any) -> None:
        if self.debug_enabled:
            self._write("DEBUG", msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._write("INFO", msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._write("WARN", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._write("ERROR", msg, fields)

    def _write(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        line = json.dumps({"time": now, "level": level, "msg": msg, **fields}, default=str)
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed or full stdout must not take the proxy down
