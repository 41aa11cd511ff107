"""After a crash or restart: finish the step the record in Redis says was under way.

Redis is the actor's memory (I5): nothing of a step survives a crash but its record and its
intent's reply, so recovery reads both and drives the step on, then answers the intent the
crash cut short.
"""

from __future__ import annotations

import logging

from posguard.actors.context import ActorContext
from posguard.actors.failpoints import before_reply, failpoint
from posguard.actors.lifecycle.closing import drive_close
from posguard.actors.lifecycle.entry import drive_entry
from posguard.actors.lifecycle.replies import nobody_waiting, settle_reply
from posguard.actors.records import BadRecord, PositionRecord, State

__all__ = ["answer_interrupted", "resume"]

log = logging.getLogger("posguard.actor")


async def resume(ctx: ActorContext, symbol: str) -> None:
    """After a crash or restart: finish the step the record says was under way.

    An entry that may have been sent is looked up by its client order id before anything
    new happens; a close in flight is driven on (its orders are reduce-only).
    """
    try:
        record = await ctx.store.load_record(symbol)
    except BadRecord as exc:
        # Nothing can be resumed from a record that cannot be read; the audit quarantines
        # the symbol and guards its venue position.
        log.error("%s: not resuming: %s", symbol, exc)
        return
    if record is None or record.state.is_terminal:
        return
    log.info("%s: resuming record in state %s (intent %s)", symbol, record.state, record.intent_id)
    if record.state is State.CLOSING:
        intent_id = record.close_intent_id
        await drive_close(ctx, record)
    elif record.state is State.EMERGENCY_CLOSING:
        intent_id = record.intent_id  # the entry whose protection failed
        record.state = State.CLOSING
        record.close_intent_id = record.close_intent_id or record.intent_id + ":emergency"
        await drive_close(ctx, record)
    else:
        intent_id = record.intent_id
        await drive_entry(ctx, record, resumed=True, owned=nobody_waiting)
    await answer_interrupted(ctx, intent_id, record)


async def answer_interrupted(ctx: ActorContext, intent_id: str, record: PositionRecord) -> None:
    """The intent whose step a crash cut short still says ``accepted``: answer it now, so
    whoever follows it (``posguard open/close``, a bot reading the reply list) learns the
    outcome. The intake acknowledged it when it was written ahead; nothing redelivers it."""
    reply = await ctx.store.load_intent(intent_id)
    if reply is not None and reply.status == "accepted":
        settle_reply(reply, record)
        reply.reason = f"finished after a restart: {reply.reason}" if reply.reason else "finished after a restart"
        failpoint(before_reply(reply.status))
        await ctx.store.save_intent(reply)
