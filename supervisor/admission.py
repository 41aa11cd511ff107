"""Admission: what an intent must pass before it reaches an actor.

Bad input is refused before anything is created (I7): validation against the venue's market
rules, then the risk limits; entries are also refused in safe mode or while entries are paused.
A refused intent is answered at once with a `rejected` intent record; the rest are queued on
the symbol's actor (I4: one actor per symbol). First of all the intent's id is claimed
(`IntentClaims`): an id already handled, or held by a different intent, is answered without
running (`intent_verdict`).
"""

from __future__ import annotations

import logging

import msgspec

from posguard.actors.intents import (
    CloseIntent,
    ConflictingBody,
    Duplicate,
    Intent,
    IntentRecord,
    IntentRefused,
    OpenIntent,
    action_of,
    body_of,
    check_open,
    check_symbol,
)
from posguard.actors.lifecycle import MailboxFull, Ticket
from posguard.actors.lifecycle.replies import answer_refused_repeat
from posguard.actors.store.client import is_redis_failure
from posguard.actors.store.positions import Store
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.actor_registry import ActorRegistry
from posguard.supervisor.intent_claims import IntentClaims
from posguard.supervisor.risk import RiskLimits, check_open_positions, check_priced, check_static
from posguard.supervisor.supervision import EntryGate

__all__ = ["Admission"]

log = logging.getLogger("posguard.engine")


class Admission:
    """Checks intents and hands the accepted ones to their actors."""

    def __init__(
        self,
        *,
        venue: Venue,
        store: Store,
        rules: dict[str, MarketRules],
        risk: RiskLimits,
        gate: EntryGate,
        actors: ActorRegistry,
    ) -> None:
        self.venue = venue
        self.store = store
        self.rules = rules
        self.risk = risk
        self.gate = gate
        self.actors = actors
        self.claims = IntentClaims()

    async def admit(self, intent: Intent) -> Ticket:
        """Claim the intent's id, validate, then queue on the symbol's actor. A refused intent,
        and one whose id must not run again, is answered at once."""
        body = body_of(intent)
        try:
            first = await self.store.load_intent(intent.intent_id)
        except Exception as exc:
            if not is_redis_failure(exc):
                raise
            return await self.refuse(intent, f"Redis unreachable ({type(exc).__name__}): whether intent id"
                                     f" {intent.intent_id!r} was used before cannot be read, so nothing was done;"
                                     " send it again once Redis answers", body)
        verdict = self.claims.claim(intent, body, first)
        if isinstance(verdict, Duplicate | ConflictingBody):
            ticket = Ticket(intent, body)
            ticket.finish(await answer_refused_repeat(self.store, intent, verdict))
            return ticket
        try:
            ticket = await self._check_and_queue(intent, body)
        except BaseException:
            self.claims.release(intent.intent_id)
            raise
        ticket.on_finish(lambda: self.claims.release(intent.intent_id))
        return ticket

    async def _check_and_queue(self, intent: Intent, body: str) -> Ticket:
        try:
            if isinstance(intent, OpenIntent):
                intent = await self.check_entry(intent)
            elif isinstance(intent, CloseIntent):
                check_symbol(intent.symbol, self.rules)
            return self.actors.get_or_start(intent.symbol).submit(intent, body)
        except (IntentRefused, MailboxFull) as exc:
            return await self.refuse(intent, str(exc), body)

    async def check_entry(self, intent: OpenIntent) -> OpenIntent:
        """Everything an entry must pass before it reaches an actor (I7, risk limits)."""
        intent = check_open(intent, self.rules)
        check_static(intent, self.risk)
        refusal = self.gate.refusal()
        if refusal:
            raise IntentRefused(refusal)
        if intent.stop_distance or self.risk.needs_price:
            try:
                price = await self.venue.fetch_price(intent.symbol)
            except VenueUnavailable as exc:
                raise IntentRefused(f"could not read the last price of {intent.symbol} ({exc}); send it again") from None
            if intent.stop_distance:
                sign = -1 if intent.side == "buy" else 1
                stop = self.rules[intent.symbol].round_price(price * (1 + sign * intent.stop_distance))
                intent = msgspec.structs.replace(intent, stop_price=stop)
            check_priced(intent, price, self.risk)
        if self.risk.max_open_positions:
            scan = await self.store.read_records()
            # An unusable record may stand for an open position: it counts as one.
            live = sum(1 for r in scan.usable if r.state.is_live) + len(scan.bad)
            check_open_positions(live, self.risk)
        return intent

    async def refuse(self, intent: Intent, reason: str, body: str = "") -> Ticket:
        """Answer the intent with a `rejected` record, in Redis if it answers."""
        log.warning("intent %s refused: %s", intent.intent_id, reason)
        body = body or body_of(intent)
        reply = IntentRecord(
            intent_id=intent.intent_id,
            action=action_of(intent),
            symbol=intent.symbol,
            status="rejected",
            reason=reason,
            body=body,
        )
        try:
            await self.store.save_intent(reply)
        except Exception as exc:  # noqa: BLE001 - the refusal still reaches the caller
            log.error("could not record the refusal of %s in Redis: %s", intent.intent_id, exc)
        ticket = Ticket(intent, body)
        ticket.finish(reply)
        return ticket
