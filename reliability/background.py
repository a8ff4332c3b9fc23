"""A scenario's helper that runs in a thread beside it (a prober, a stream client): started,
then stopped by an Event its loop watches."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Mixin: ``start()`` runs ``_run`` in a daemon thread until ``stop()``. The class holds
    ``_stop`` (a threading.Event that ``_run`` watches) and ``_thread``."""

    _stop: threading.Event
    _thread: threading.Thread | None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
