"""Save first, then switch: a command answers ``OK`` once its change is made and saved, and
``ERR`` with nothing changed when the state cannot be saved (a full disk, a read-only
directory). Every command that changes the state file goes through :meth:`StateSaver.commit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

import attrs
import trio

from kproxy.core import snapshot
from kproxy.errors import CommandError, StateError
from kproxy.runtime.log import Logger
from kproxy.runtime.state_store import StateStore

SAVE_TIMEOUT: Final = 10.0  # seconds a state save may wait and take (it runs shielded)

T = TypeVar("T")


def replaced_record(
    records: list[snapshot.ServiceRecord], name: str, record: snapshot.ServiceRecord | None
) -> list[snapshot.ServiceRecord]:
    """``records`` with service ``name``'s replaced by ``record`` in place, added at the end
    if new, or dropped when ``record`` is None (a remove)."""
    kept = [r for r in records if r.name != name or record is not None]
    if record is not None:
        if any(r.name == name for r in kept):
            return [record if r.name == name else r for r in kept]
        kept.append(record)
    return kept


@attrs.define(eq=False)
class StateSaver:
    """Saves the state a change is about to make, then makes it; changes run one at a time."""

    store: StateStore | None  # None: nothing is saved (embedding, workers)
    logger: Logger
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def commit(
        self,
        prospective: Callable[[], Iterable[snapshot.ServiceRecord]],
        switch: Callable[[], T],
    ) -> T:
        """Save the services as they will be once ``switch`` runs, then run it.

        Args:
            prospective: every service's record after the change. Called once earlier commits
                are done, so it sees their effect; it may raise to refuse the change (a route
                taken meanwhile), which then changes nothing.
            switch: makes the change in the running proxy. Runs right after the save with no
                await between, so a request sees the change only once the file holds it; it
                must not fail.

        Returns:
            what ``switch`` returns.

        Raises:
            CommandError: the state could not be saved; neither the file nor the running
                proxy changed.
        """
        async with self._lock:
            records = list(prospective())
            if self.store is not None:
                await self._save(self.store, snapshot.dump_text(records))
            return switch()

    async def _save(self, store: StateStore, text: str) -> None:
        # Shielded: a control client that goes away mid-save must not leave the file and the
        # running proxy apart. The bound covers a wait for an earlier, stuck save.
        with trio.move_on_after(SAVE_TIMEOUT, shield=True) as scope:
            try:
                await store.write(text)
            except StateError as exc:
                self.logger.error("State save failed; nothing changed", error=str(exc))
                raise CommandError(f"{exc}; nothing changed") from exc
        if scope.cancelled_caught:
            self.logger.error("State save failed; nothing changed", error="timed out")
            raise CommandError(
                f"saving the state took longer than {SAVE_TIMEOUT:g}s; nothing changed"
            )
