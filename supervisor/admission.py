"""Admission: what an intent must pass before it reaches an actor, and before it is sent.

Bad input is refused before anything is created (I7). First the intent's id is claimed
(`IntentClaims`): an id already handled, or held by a different intent, is answered without
running (`intent_verdict`). Then at intake, with nothing awaited: the
venue's market rules, the static risk limits, the entry gate (safe mode, paused entries) and a
slot under ``risk.max_open_positions`` (`OpenSlots`). A refused intent is answered at once with
a `rejected` intent record; the rest are queued on the symbol's actor at once (I4), so nothing
the venue does holds up the intake. The checks that need the market (`priced_entry`: the stop's
side, the liquidation price, the priced limits) are run by the symbol's actor before it writes
the entry ahead (issue 13, defect 9): a slow ticker delays that symbol's entries only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec

from posguard.actors.intents import (
    AmendIntent,
    CloseIntent,
    ConflictingBody,
    Duplicate,
    Intent,
    IntentRecord,
    IntentRefused,
    OpenIntent,
    action_of,
    body_of,
    check_amend,
    check_intent_id,
    check_close,
    check_open,
    intent_verdict,
    stop_tightens,
    take_profit_beyond,
)
from posguard.actors.lifecycle.amend import Amendment
from posguard.actors.lifecycle import MailboxFull, Ticket
from posguard.actors.lifecycle.replies import answer_refused_repeat
from posguard.actors.store.client import is_redis_failure
from posguard.actors.records import PositionRecord
from posguard.actors.store.positions import Store
from posguard.streams.venue.markets import MarketRules
from posguard.supervisor.actor_registry import ActorRegistry
from posguard.supervisor.intent_claims import IntentClaims
from posguard.supervisor.open_slots import OpenSlots
from posguard.supervisor.prices import PriceReader
from posguard.supervisor.risk import RiskLimits, check_priced, check_protection, check_static
from posguard.supervisor.supervision import EntryGate

__all__ = ["Admission", "PricedChecks"]

log = logging.getLogger("posguard.engine")

Alert = Callable[[str, str], Awaitable[None]]


class PricedChecks:
    """The entry checks that need the market, run by the symbol's actor (`ActorContext.entry_check`)."""

    def __init__(self, *, prices: PriceReader, rules: dict[str, MarketRules], risk: RiskLimits, alert: Alert,
                 gate: EntryGate) -> None:
        self.prices = prices
        self.rules = rules
        self.risk = risk
        self.alert = alert
        self.gate = gate

    async def __call__(self, intent: OpenIntent) -> OpenIntent:
        """The intent with its stop as a price, or `IntentRefused`. A bug met here refuses this
        intent alone (and alerts): it must not crash the actor into a restart loop.

        The entry gate is asked again last, just before the actor writes the entry ahead: an
        intent queued on its actor before entries were paused (Redis lost its data, safe mode)
        is refused like one that arrives after (found by the breaker, issue 16: one queued
        when Redis was flushed doubled a position the audit had yet to adopt)."""
        try:
            checked = await self._check(intent)
        except IntentRefused:
            raise
        except Exception as exc:
            if is_redis_failure(exc):
                raise
            message = (f"intent {intent.intent_id}: internal error {type(exc).__name__} in the entry checks;"
                       " refused, nothing sent; the traceback is in posguard's log")
            log.error("%s", message, exc_info=exc)
            await self.alert(intent.symbol, message)
            raise IntentRefused(f"internal error ({type(exc).__name__}): nothing was sent; tell the operator"
                                " (see posguard's log)") from None
        refusal = self.gate.refusal()
        if refusal:
            raise IntentRefused(refusal)
        return checked

    async def _check(self, intent: OpenIntent) -> OpenIntent:
        price = await self.prices.price(intent.symbol)
        if intent.stop_distance:
            sign = -1 if intent.side == "buy" else 1
            stop = self.rules[intent.symbol].round_price(price * (1 + sign * intent.stop_distance))
            intent = msgspec.structs.replace(intent, stop_price=stop)
        if intent.take_profit_distance:
            sign = 1 if intent.side == "buy" else -1
            take_profit = self.rules[intent.symbol].round_price(price * (1 + sign * intent.take_profit_distance))
            intent = msgspec.structs.replace(intent, take_profit=take_profit)
        leverage, leverage_from = await self.prices.leverage(intent.symbol)
        check_priced(intent, price, self.risk, leverage=leverage, leverage_from=leverage_from)
        return intent


    async def amend(self, intent: AmendIntent, record: PositionRecord) -> Amendment:
        """An amend's new stop and take-profit as prices, checked against the last price and
        the position (`risk.check_protection`, the entry's own rule), or `IntentRefused`.
        Not gated: moving a stop or a take-profit opens nothing, and safe mode keeps protecting."""
        rules = self.rules[intent.symbol]
        price = await self.prices.price(intent.symbol)
        stop: float | None = None
        if intent.stop_price:
            stop = intent.stop_price
        elif intent.stop_distance is not None:
            sign = -1 if record.side == "buy" else 1
            stop = rules.round_price(price * (1 + sign * intent.stop_distance))
        elif intent.breakeven:
            stop = rules.round_price(record.entry_price)
            if not record.entry_price or not stop_tightens(record.side, record.stop_price, stop):
                raise IntentRefused(f"breakeven: the entry price {record.entry_price:g} would not tighten the stop"
                                    f" {record.stop_price:g}; nothing was changed")
        take_profit: float | None = None
        if intent.take_profit:
            take_profit = intent.take_profit
        elif intent.take_profit_distance is not None:
            sign = 1 if record.side == "buy" else -1
            take_profit = rules.round_price(price * (1 + sign * intent.take_profit_distance))
        elif intent.remove_take_profit:
            take_profit = 0.0
        new_stop = stop if stop is not None else record.stop_price
        new_take_profit = take_profit if take_profit is not None else record.take_profit
        if new_take_profit and not take_profit_beyond(record.side, new_stop, new_take_profit):
            beyond = "above" if record.side == "buy" else "below"
            raise IntentRefused(f"take_profit: {new_take_profit:g} must be {beyond} the stop {new_stop:g} for a"
                                f" {record.side}")
        leverage, leverage_from = await self.prices.leverage(intent.symbol)
        check_protection(record.side, new_stop, take_profit or 0.0, price, self.risk, leverage=leverage,
                         leverage_from=leverage_from, entry_price=record.entry_price)
        return Amendment(stop_price=stop, take_profit=take_profit)


class Admission:
    """Checks intents and hands the accepted ones to their actors."""

    def __init__(
        self,
        *,
        store: Store,
        rules: dict[str, MarketRules],
        risk: RiskLimits,
        gate: EntryGate,
        actors: ActorRegistry,
        slots: OpenSlots,
    ) -> None:
        self.store = store
        self.rules = rules
        self.risk = risk
        self.gate = gate
        self.actors = actors
        self.claims = IntentClaims()
        self.slots = slots

    async def admit(self, intent: Intent) -> Ticket:
        """Claim the intent's id, validate, then queue on the symbol's actor. A refused intent,
        and one whose id another intent holds in flight, is answered at once.

        What Redis knows of the id is not read here (no round trip before the hand-off): the
        actor's write ahead is refused by Redis if the id has a record (`Store.write_ahead`),
        and the actor then decides from it (a duplicate, another intent's id, one to carry
        on); a refusal here is written only where the id has none (`refuse`)."""
        body = body_of(intent)
        verdict = self.claims.claim(intent, body, None)
        if isinstance(verdict, Duplicate | ConflictingBody):
            ticket = Ticket(intent, body)
            ticket.finish(await answer_refused_repeat(self.store, intent, verdict))
            return ticket
        try:
            ticket = await self._check_and_queue(intent, body)
        except BaseException:
            self.claims.release(intent.intent_id)
            raise
        ticket.on_finish(lambda _: self.claims.release(intent.intent_id))
        return ticket

    async def _check_and_queue(self, intent: Intent, body: str) -> Ticket:
        try:
            check_intent_id(intent.intent_id)
            if isinstance(intent, OpenIntent):
                intent = self.check_entry(intent)
            elif isinstance(intent, CloseIntent):
                intent = check_close(intent, self.rules)
            elif isinstance(intent, AmendIntent):
                intent = check_amend(intent, self.rules)
            ticket = self.actors.get_or_start(intent.symbol).submit(intent, body)
        except (IntentRefused, MailboxFull) as exc:
            self.slots.release(intent.intent_id)
            return await self.refuse(intent, str(exc), body)
        if isinstance(intent, OpenIntent):
            ticket.on_finish(lambda _: self.slots.release(intent.intent_id))
        return ticket

    def check_entry(self, intent: OpenIntent) -> OpenIntent:
        """What an entry must pass at intake, with nothing awaited (I7, the static limits); the
        slot it takes is given back when it is answered."""
        intent = check_open(intent, self.rules)
        check_static(intent, self.risk)
        refusal = self.gate.refusal()
        if refusal:
            raise IntentRefused(refusal)
        self.slots.reserve(intent.intent_id, intent.symbol)
        return intent

    async def refuse(self, intent: Intent, reason: str, body: str = "") -> Ticket:
        """Answer the intent with a `rejected` record, in Redis if it answers. An id Redis
        already holds keeps its record: a duplicate or another intent's id is answered as
        such (`intent_verdict`), and one under way (an ``accepted`` entry a restart carries on)
        has this refusal pushed to its reply list only."""
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
        ticket = Ticket(intent, body)
        try:
            earlier = await self.store.save_intent_if_new(reply)
            if earlier is not None:
                verdict = intent_verdict(body, earlier)
                if isinstance(verdict, Duplicate | ConflictingBody):
                    ticket.finish(await answer_refused_repeat(self.store, intent, verdict))
                    return ticket
                await self.store.push_reply(reply)
        except Exception as exc:  # noqa: BLE001 - the refusal still reaches the caller
            log.error("could not record the refusal of %s in Redis: %s", intent.intent_id, exc)
        ticket.finish(reply)
        return ticket
