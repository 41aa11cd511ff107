"""From the venue's push stream to the actors and to Redis.

Order of work per batch matters: the in-memory board first (so a waiting actor wakes without
waiting for Redis), then one pipelined Redis write for the whole batch. If Redis is down the
events still reach the actors; the cache misses them and says so in the log, and the audit
re-reads the venue when Redis returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream

from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.venue.events import VenueEvent

__all__ = ["MAX_BATCH", "EventCache", "IngestStatistics", "Ingestor"]

log = logging.getLogger("posguard.ingestor")

MAX_BATCH = 1024


class EventCache(Protocol):
    async def write(self, batch: Sequence[VenueEvent]) -> None: ...


class IngestStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """How much has gone through the ingestor, and how much of it missed the Redis journal
    (the actors got it; the audit covers the gap): for metrics, benchmarks and tests."""

    events: int
    """Events handed to the board and the listeners."""
    batches: int
    """Batches they came in (one pipelined cache write each)."""
    cache_failures: int
    """Batches the cache could not write."""


class Ingestor:
    def __init__(
        self,
        board: EvidenceBoard,
        cache: EventCache | None,
        *,
        listeners: Sequence[Callable[[VenueEvent], None]] = (),
    ) -> None:
        self.board = board
        self.cache = cache
        self.listeners = list(listeners)
        self._events = 0
        self._batches = 0
        self._cache_failures = 0

    def statistics(self) -> IngestStatistics:
        return IngestStatistics(events=self._events, batches=self._batches, cache_failures=self._cache_failures)

    async def run(self, receive: ObjectReceiveStream[VenueEvent]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self.ingest(batch)

    async def ingest(self, batch: Sequence[VenueEvent]) -> None:
        for event in batch:
            self.board.apply(event)
            for listener in self.listeners:
                listener(event)
        self._events += len(batch)
        self._batches += 1
        if self.cache is None:
            return
        try:
            await self.cache.write(batch)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: keep the events flowing
            self._cache_failures += 1
            log.warning("event cache write failed, %d events not journalled: %s", len(batch), exc)
