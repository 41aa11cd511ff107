"""An intent's answer: written ``accepted`` before its step runs, final once the step ends.

The reply in Redis is how whoever sent the intent (``posguard open/close``, a bot reading
the reply list) learns the outcome; an intent id that already has a final answer is not run
again and is answered ``duplicate``, pointing at that answer; an intent past its expiry is
answered ``stale`` before anything is written ahead or sent. A step also says when the intent is *owned*: its first
record write is in Redis, so a crash is recovered from there and a queue may forget it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from posguard.actors.context import ActorContext
from posguard.actors.failpoints import before_reply, failpoint
from posguard.actors.intents import (
    FINAL_STATUSES,
    Intent,
    IntentRecord,
    IntentRefused,
    duplicate_of,
    settle_reply,
    stale_reason,
)
from posguard.actors.records import BadRecord, PositionRecord
from posguard.actors.store.positions import Store

__all__ = [
    "IntentConflict",
    "IntentStep",
    "Owned",
    "answer_duplicate",
    "answer_intent",
    "bad_record_refusal",
    "nobody_waiting",
    "wall_clock_ms",
]

log = logging.getLogger("posguard.actor")

IntentStep = Callable[[], Awaitable[PositionRecord]]
"""An intent's step, bound to its intent: runs it to the end and returns the record it left."""

Owned = Callable[[], None]
"""Called once the current intent's first record write is in Redis (see `Ticket.owned`)."""


def nobody_waiting() -> None:
    """`Owned` for a step no caller waits on (recovery, repairs): nothing to acknowledge."""


class IntentConflict(RuntimeError):
    """The intent cannot run in the symbol's current state; nothing was sent."""


async def answer_intent(ctx: ActorContext, symbol: str, intent: Intent, action: str, step: IntentStep) -> IntentRecord:
    """Write the intent ahead as ``accepted``, run its step, then write its final answer."""
    store = ctx.store
    previous = await store.load_intent(intent.intent_id)
    if previous is not None and previous.status in FINAL_STATUSES:
        await answer_duplicate(ctx.store, previous)
        return previous
    if previous is None:  # not begun yet (an accepted one may have sent its order: carry on)
        stale = stale_reason(intent, wall_clock_ms())
        if stale:
            log.warning("%s: intent %s refused: %s", symbol, intent.intent_id, stale)
            reply = IntentRecord(intent_id=intent.intent_id, action=action, symbol=symbol, status="stale",
                                 reason=stale)
            failpoint(before_reply(reply.status))
            await store.save_intent(reply)
            return reply
    reply = IntentRecord(intent_id=intent.intent_id, action=action, symbol=symbol, status="accepted")
    failpoint(before_reply(reply.status))
    await store.save_intent(reply)
    ctx.await_reply(symbol, reply)
    try:
        try:
            record = await step()
        except (IntentConflict, IntentRefused) as exc:
            reply.status, reply.reason = "rejected", str(exc)
        except BadRecord as exc:
            reply.status, reply.reason = "rejected", bad_record_refusal(exc)
        else:
            settle_reply(reply, record)
    finally:
        unanswered = ctx.still_awaited(symbol, intent.intent_id) is not None
    if unanswered:  # the step ended without settling the record (protected, refused): answer now
        failpoint(before_reply(reply.status))
        await store.save_intent(reply)
    return reply


def bad_record_refusal(error: BadRecord) -> str:
    """Why an intent for a quarantined symbol is refused, and what the operator does about it."""
    return (f"refused: the position record is unusable ({error}); it is quarantined: fix the field or delete"
            " the hash (see posguard status), then send the intent again")


def wall_clock_ms() -> int:
    """Epoch ms on this host: the clock ``expires_ms`` is compared with (senders, Redis and
    posguard are assumed to agree within about a second, as NTP keeps them)."""
    return int(time.time() * 1000)


async def answer_duplicate(store: Store, first: IntentRecord) -> None:
    """An intent id sent again after it was handled: reply ``duplicate`` (so a client blocked
    on the reply list is answered), keep the first answer in the intent record, run nothing."""
    log.info("intent %s already handled (%s); answering duplicate", first.intent_id, first.status)
    reply = duplicate_of(first)
    failpoint(before_reply(reply.status))
    await store.push_reply(reply)

