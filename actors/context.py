"""Everything an actor needs from outside, in one place (and nothing it does not)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from posguard.actors.failpoints import failpoint, record_saved
from posguard.actors.records import PositionRecord
from posguard.actors.settings import ActorSettings
from posguard.actors.store.positions import Store
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import Venue

__all__ = ["ActorContext", "TransitionObserver"]

log = logging.getLogger("posguard.alert")

TransitionObserver = Callable[[PositionRecord, str], None]
"""Called after every saved transition with the record and its note (metrics, demo, bench)."""


@dataclass
class ActorContext:
    venue: Venue
    store: Store
    board: EvidenceBoard
    rules: dict[str, MarketRules]
    settings: ActorSettings
    rng: random.Random = field(default_factory=random.Random)
    observers: list[TransitionObserver] = field(default_factory=list)
    alerts: list[Callable[[str, str], None]] = field(default_factory=list)
    """Called with (symbol, message) when a person must look (metrics, tests, logs)."""
    rest_calls: Counter[str] = field(default_factory=Counter)

    @property
    def account(self) -> str:
        return self.settings.account

    def count_rest(self, record: PositionRecord, method: str) -> None:
        self.rest_calls[method] += 1
        record.rest_calls += 1

    async def alert(self, symbol: str, message: str) -> None:
        """Something a person must know (a position may be bare, a close keeps failing):
        logged as CRITICAL, written to the alerts stream in Redis, passed to the callbacks."""
        log.critical("ALERT %s: %s", symbol, message)
        for callback in self.alerts:
            callback(symbol, message)
        try:
            await self.store.append_alert(symbol, message)
        except Exception as exc:  # noqa: BLE001 - an alert must not be lost to a Redis error
            log.error("could not write the alert to Redis (%s); it is in this log only", exc)

    async def save(self, record: PositionRecord, note: str = "") -> None:
        if record.state.is_terminal and not record.settled_ms:
            record.settled_ms = self.venue.now_ms()
        await self.store.save_record(record, note)
        failpoint(record_saved(record.state))
        for observer in self.observers:
            observer(record, note)
