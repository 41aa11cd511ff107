"""After a crash or restart: finish the step the record in Redis says was under way.

Redis is the actor's memory (I5): nothing of a step survives a crash but its record and its
intent's reply, so recovery reads both and drives the step on, then answers the intents the
crash cut short (their answers ride with the record write that settles the record).
"""

from __future__ import annotations

import logging

import msgspec

from posguard.actors.context import ActorContext
from posguard.actors.failpoints import before_reply, failpoint
from posguard.actors.intents import IntentRecord, settle_reply
from posguard.actors.lifecycle.amend import resume_amend
from posguard.actors.lifecycle.entry import drive_entry
from posguard.actors.lifecycle.partial_close import resume_close
from posguard.actors.lifecycle.replies import nobody_waiting
from posguard.actors.lifecycle.take_profit import arm_take_profit
from posguard.actors.records import CLOSING_STATES, BadRecord, PositionRecord

__all__ = ["AsRead", "resume", "unanswered_intents"]

log = logging.getLogger("posguard.actor")


class AsRead(msgspec.Struct, frozen=True, kw_only=True):
    """The symbol's record as the engine's start-up read it for every symbol at once
    (`Engine`'s one scan of the records, one pipeline of intent statuses), handed to the
    actor it starts so that its first resume does not read them again one by one: 10,000
    live records would be 20,000 more round trips before the first new entry is served.

    Only for the first resume of an actor the engine starts with it, before any step of
    this process has run on the symbol (the lease makes the process the records' one
    writer): the record cannot have changed since. A restart after a crash reads Redis."""

    record: PositionRecord
    accepted: frozenset[str]
    """Which of the record's intent ids were stored as ``accepted`` (`Store.still_accepted`)."""


async def resume(ctx: ActorContext, symbol: str, as_read: AsRead | None = None) -> None:
    """After a crash or restart: finish the step the record says was under way, and answer
    every intent of the record that still says ``accepted``.

    An entry that may have been sent is looked up by its client order id before anything
    new happens; a close in flight (requested, emergency, or failing) is driven on as a close
    (its orders are reduce-only). A settled record's unanswered intents are answered from it.
    ``as_read``: the record and its intents' statuses as the start-up just read them.
    """
    if as_read is not None:
        record: PositionRecord | None = as_read.record
    else:
        if ctx.store.seen_head(symbol) is None:
            return  # no record (the start-up's scan, or a later look, says so): nothing to resume
        try:
            record = await ctx.store.load_record(symbol)
        except BadRecord as exc:
            # Nothing can be resumed from a record that cannot be read; the audit quarantines
            # the symbol and guards its venue position.
            log.error("%s: not resuming: %s", symbol, exc)
            return
    if record is None:
        return
    waiting = await unanswered_intents(ctx, record, None if as_read is None else as_read.accepted)
    for reply in waiting:
        ctx.await_reply(symbol, reply, after_restart=True)
    try:
        if record.state.is_live:
            log.info("%s: resuming record in state %s (intent %s)", symbol, record.state, record.intent_id)
            if record.state in CLOSING_STATES:
                await resume_close(ctx, record)  # a partial close as partial, never as a full one
            else:
                await drive_entry(ctx, record, resumed=True, owned=nobody_waiting)
                # A protected record the crash caught between its stop and its take-profit's
                # write ahead gets it now (one written ahead was sent, and a leftover of it is
                # cancelled when the record settles; `arm_take_profit` says nothing else).
                await arm_take_profit(ctx, record)
                # An amend cut short: its new values are in the record; finished from there.
                await resume_amend(ctx, record)
    finally:
        left = [r for r in waiting if ctx.still_awaited(symbol, r.intent_id) is not None]
    for reply in left:  # the step ended live (protected), or the record had settled before
        answer = settle_reply(reply, record, after_restart=True)
        failpoint(before_reply(answer.status))
        await ctx.store.save_intent(answer)


async def unanswered_intents(ctx: ActorContext, record: PositionRecord,
                             accepted: frozenset[str] | None = None) -> list[IntentRecord]:
    """The record's open, close and amend intents whose stored answer is still ``accepted``: the
    intake acknowledged them when they were written ahead, so nothing redelivers them.
    ``accepted``: the ids already known to be stored so (`AsRead`); the others are not read."""
    found = []
    for intent_id in dict.fromkeys(filter(None, (record.intent_id, record.close_intent_id, record.amend_intent_id))):
        if accepted is not None and intent_id not in accepted:
            continue
        reply = await ctx.store.load_intent(intent_id)
        if reply is not None and reply.status == "accepted" and reply.symbol == record.symbol:
            found.append(reply)
    return found
