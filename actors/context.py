"""Everything an actor needs from outside, in one place (and nothing it does not)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from posguard.actors import ids
from posguard.actors.failpoints import before_reply, failpoint, record_saved
from posguard.actors.intents import IntentRecord, OpenIntent, answers, settle_reply
from posguard.actors.records import PositionRecord
from posguard.actors.settings import ActorSettings
from posguard.actors.store.positions import UNSEEN, RecordHead, Store, Unseen, WriteAheadStale
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.venue.events import Order, Position
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import Venue

if TYPE_CHECKING:
    from posguard.actors.lifecycle.amend import AmendCheck

__all__ = ["ActorContext", "AwaitedReply", "EntryCheck", "PendingWriteAhead", "TransitionObserver"]

log = logging.getLogger("posguard.alert")

TransitionObserver = Callable[[PositionRecord, str], None]
"""Called after every transition with the record and its note (metrics, demo, bench): once it is
written (`ActorContext.save`), or as soon as it is made when it is held for the record's next
write (`ActorContext.stage`)."""

EntryCheck = Callable[[OpenIntent], Awaitable[OpenIntent]]
"""The entry checks that need the market (the supervisor's risk rules), run by the actor before
it writes a new entry ahead: the intent with its stop as a price, or `IntentRefused`."""


@dataclass
class AwaitedReply:
    """An intent answered ``accepted`` whose final answer is not written yet."""

    reply: IntentRecord
    after_restart: bool = False
    """Recovery is finishing the step (the run that accepted it is gone)."""


@dataclass
class PendingWriteAhead:
    """An open intent's ``accepted`` answer, written with its entry's first record write
    (`Store.write_ahead`) instead of before it: one round trip before the send, not four."""

    reply: IntentRecord
    seen: RecordHead | None | Unseen = UNSEEN
    """The symbol's record as the decision saw it (`entry.open_position` sets it): the write
    happens only if Redis still holds that."""


@dataclass
class ActorContext:
    venue: Venue
    store: Store
    board: EvidenceBoard
    rules: dict[str, MarketRules]
    settings: ActorSettings
    entry_check: EntryCheck
    amend_check: AmendCheck | None = None
    """The amend's market checks (`lifecycle.amend.AmendCheck`: the supervisor's risk rules);
    None: amends are refused (a context built without the supervisor's checks)."""
    rng: random.Random = field(default_factory=random.Random)
    observers: list[TransitionObserver] = field(default_factory=list)
    alerts: list[Callable[[str, str], None]] = field(default_factory=list)
    """Called with (symbol, message) when a person must look (metrics, tests, logs)."""
    rest_calls: Counter[str] = field(default_factory=Counter)
    awaiting: dict[tuple[str, str], AwaitedReply] = field(default_factory=dict)
    """By (symbol, intent id): intents whose step is running. The record write that answers one
    (`intents.answers`: a terminal state, or an open's position protected) carries its final
    answer in its own transaction (`save`), so no crash can leave a settled record with its
    intent still saying ``accepted``, and answering costs no round trip of its own."""
    write_ahead_for: dict[str, PendingWriteAhead] = field(default_factory=dict)
    """By symbol: the open intent whose ``accepted`` answer rides with the symbol's next record
    write (`save`), which is then its write ahead (`replies.answer_intent`)."""
    held_notes: dict[str, list[str]] = field(default_factory=dict)
    """By symbol: the notes of state changes held in memory (`stage`), for the journal entry of
    the record's next write. A restarted actor drops its symbol's (`SymbolActor.run`)."""

    @property
    def account(self) -> str:
        return self.settings.account

    def count_rest(self, record: PositionRecord, method: str) -> None:
        self.rest_calls[method] += 1
        record.rest_calls += 1

    async def listed_position(self, symbol: str, record: PositionRecord | None = None) -> Position | None:
        """``symbol``'s open position as the venue's REST list shows it now, None if it lists
        none: the one way an actor's fallback looks (verification, the stop's confirmation, a
        proof, the symbol's own audit). It asks for that symbol alone, so opening thousands of
        positions at once costs each fallback one short answer, not the whole account's list.
        Counted against ``record`` when given. Raises `VenueUnavailable`."""
        if record is not None:
            self.count_rest(record, "fetch_positions")
        return next((p for p in await self.venue.fetch_positions(symbol) if p.symbol == symbol), None)

    async def fetch_order(self, record: PositionRecord, client_order_id: str) -> Order | None:
        """The venue's view of one of the record's orders by client id (None: unknown), counted
        against the record: the one way an actor looks an order up. Asked of the book our id
        names (`ids.is_conditional`: Binance keeps stops in its algo service), so that one
        service being down does not hide an order the other holds. Raises `VenueUnavailable`."""
        self.count_rest(record, "fetch_order")
        return await self.venue.fetch_order(record.symbol, client_order_id, conditional=ids.is_conditional(client_order_id))

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

    def await_reply(self, symbol: str, reply: IntentRecord, *, after_restart: bool = False) -> None:
        """``reply`` (status ``accepted``) is answered by the write that settles ``symbol``'s record."""
        self.awaiting[(symbol, reply.intent_id)] = AwaitedReply(reply, after_restart)

    def still_awaited(self, symbol: str, intent_id: str) -> AwaitedReply | None:
        """Stop awaiting the intent; what was awaited if no record write has answered it."""
        return self.awaiting.pop((symbol, intent_id), None)

    def stage(self, record: PositionRecord, note: str = "") -> None:
        """A state change nothing waits on (the entry acknowledged, its verification begun, its
        fill verified before a stop is placed or seen): observers hear of it now, Redis with
        the record's next write (`save`), whose journal entry carries its note.

        Why not write it: every step that acts on the venue writes the record first, and a crash
        before that write leaves the record as it was last written, which recovery already
        starts from (an entry still ``submitting`` is looked up by its client order id before
        anything is sent again: `orders.send_once`). The write would buy no safety and cost a
        round trip on the way to protection (issue 16: one write after the entry's answer where
        there were four)."""
        self.held_notes.setdefault(record.symbol, []).append(_step(record, note))
        for observer in self.observers:
            observer(record, note)

    async def save(self, record: PositionRecord, note: str = "") -> None:
        answered: list[tuple[str, str]] = []
        replies: list[IntentRecord] = []
        if record.state.is_terminal and not record.settled_ms:
            record.settled_ms = self.venue.now_ms()
        for intent_id in dict.fromkeys((record.intent_id, record.close_intent_id)):
            awaited = self.awaiting.get((record.symbol, intent_id))
            if awaited is not None and answers(record, awaited.reply):
                answered.append((record.symbol, intent_id))
                replies.append(settle_reply(awaited.reply, record, after_restart=awaited.after_restart))
        for reply in replies:  # written with the record, in one transaction
            failpoint(before_reply(reply.status))
        # Taken now, not after the write: a step held while this write is in flight (the armed
        # stop's write beside an entry) goes with the next one.
        held = self.held_notes.pop(record.symbol, None)
        journal_note = "; ".join([*held, _step(record, note or record.reason)]) if held else note
        pending = self.write_ahead_for.pop(record.symbol, None)
        if pending is not None:
            failpoint(before_reply(pending.reply.status))
            if isinstance(pending.seen, Unseen):
                raise WriteAheadStale(f"{record.symbol}: written before its record was looked at")
            await self.store.write_ahead(record, journal_note, accepted=pending.reply, seen=pending.seen,
                                         replies=replies)
        else:
            await self.store.save_record(record, journal_note, replies=replies)
        for key in answered:  # only once written: a failed write leaves them to be answered
            del self.awaiting[key]
        failpoint(record_saved(record.state))
        for observer in self.observers:
            observer(record, note)


def _step(record: PositionRecord, note: str) -> str:
    """One step in a journal note that carries held ones: ``state: note``."""
    return f"{record.state}: {note}" if note else str(record.state)
