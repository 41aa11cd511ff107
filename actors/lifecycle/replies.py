"""An intent's answer: written ``accepted`` before its step runs, final once the step ends.

The reply in Redis is how whoever sent the intent (``posguard open/close``, a bot reading
the reply list) learns the outcome; an intent id that already has a final answer is not run
again and is answered ``duplicate``, pointing at that answer (another intent under that id is
refused: `intent_verdict`); an intent past its expiry is
answered ``stale`` before anything is written ahead or sent. A step also says when the intent is *owned*: its first
record write is in Redis, so a crash is recovered from there and a queue may forget it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from posguard.actors.context import ActorContext, PendingWriteAhead
from posguard.actors.failpoints import before_reply, failpoint
from posguard.actors.intents import (
    CarryOn,
    ConflictingBody,
    Duplicate,
    Intent,
    IntentRecord,
    IntentRefused,
    OpenIntent,
    Run,
    action_of,
    conflict_of,
    duplicate_of,
    intent_verdict,
    settle_reply,
    stale_reason,
)
from posguard.actors.records import BadRecord, PositionRecord
from posguard.actors.store.positions import Store, WriteAheadStale

__all__ = [
    "IntentConflict",
    "IntentStep",
    "Owned",
    "answer_intent",
    "answer_refused_repeat",
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


class RefusedBeforeWriteAhead(WriteAheadStale):
    """An open tried without reading Redis was refused by its entry checks (`IntentRefused`:
    the market, the risk limits, the gate) before its write ahead: nothing was written or sent.
    Those checks do not depend on what Redis holds, so the fresh read only decides whether the
    id may take this answer (a new id) or must be answered as it already is; the step is not
    run again (its checks read the ticker for up to `risk.price_deadline` and may alert)."""

    def __init__(self, refusal: IntentRecord) -> None:
        super().__init__(f"refused before its write ahead: {refusal.reason}")
        self.refusal = refusal


async def answer_intent(
    ctx: ActorContext, symbol: str, intent: Intent, step: IntentStep, *, body: str
) -> IntentRecord:
    """Write the intent ahead as ``accepted`` (with the ``body`` it arrived with), run its
    step, then write its final answer; unless `intent_verdict` says it must not run.

    An open intent is first tried without reading Redis: its ``accepted`` answer rides with
    the entry's first record write, which Redis refuses if the id has a record already or the
    symbol's record changed (`Store.write_ahead`). Refused, or ended before that write (a
    conflict, a refusal: answers that must not be written over an id's earlier one unread),
    nothing was written or sent, and it is decided again here from a fresh read."""
    refused: IntentRecord | None = None
    if isinstance(intent, OpenIntent) and not stale_reason(intent, wall_clock_ms()):
        reply = _accepted(symbol, intent, body)
        ctx.write_ahead_for[symbol] = PendingWriteAhead(reply)
        try:
            return await _run_step(ctx, symbol, reply, step, unwritten_is_stale=True)
        except RefusedBeforeWriteAhead as exc:
            refused = exc.refusal
            log.info("%s: intent %s %s; its id is looked up in Redis", symbol, intent.intent_id, exc)
        except WriteAheadStale as exc:
            log.info("%s: intent %s decided again from Redis: %s", symbol, intent.intent_id, exc)
        finally:
            ctx.write_ahead_for.pop(symbol, None)
    store = ctx.store
    verdict = intent_verdict(body, await store.load_intent(intent.intent_id))
    match verdict:
        case Duplicate() | ConflictingBody():
            return await answer_refused_repeat(store, intent, verdict)
        case Run():
            stale = stale_reason(intent, wall_clock_ms())
            if stale:
                log.warning("%s: intent %s refused: %s", symbol, intent.intent_id, stale)
                reply = IntentRecord(intent_id=intent.intent_id, action=action_of(intent), symbol=symbol,
                                     status="stale", reason=stale, body=body)
                failpoint(before_reply(reply.status))
                await store.save_intent(reply)
                return reply
            if refused is not None:
                failpoint(before_reply(refused.status))
                await store.save_intent(refused)
                return refused
        case CarryOn():
            pass  # begun before (an accepted one may have sent its order): carry on, never stale
    reply = _accepted(symbol, intent, body)
    failpoint(before_reply(reply.status))
    await store.save_intent(reply)
    return await _run_step(ctx, symbol, reply, step, unwritten_is_stale=False)


def _accepted(symbol: str, intent: Intent, body: str) -> IntentRecord:
    return IntentRecord(intent_id=intent.intent_id, action=action_of(intent), symbol=symbol, status="accepted",
                        body=body)


async def _run_step(ctx: ActorContext, symbol: str, reply: IntentRecord, step: IntentStep, *,
                    unwritten_is_stale: bool) -> IntentRecord:
    """Run the step of an intent answered ``accepted`` and write its final answer unless the
    record write that settled the step carried it. ``unwritten_is_stale``: the ``accepted``
    answer was to ride with the step's first write (`PendingWriteAhead`); a step that ends
    before it raises `WriteAheadStale` instead of answering."""
    ctx.await_reply(symbol, reply)
    refused = False
    try:
        try:
            record = await step()
        except IntentRefused as exc:
            reply.status, reply.reason, refused = "rejected", str(exc), True
        except IntentConflict as exc:
            reply.status, reply.reason = "rejected", str(exc)
        except BadRecord as exc:
            reply.status, reply.reason = "rejected", bad_record_refusal(exc)
        else:
            settle_reply(reply, record)
    finally:
        unanswered = ctx.still_awaited(symbol, reply.intent_id) is not None
    if unwritten_is_stale and symbol in ctx.write_ahead_for:
        if refused:
            raise RefusedBeforeWriteAhead(reply)
        raise WriteAheadStale(f"it ended before its write ahead ({reply.status}: {reply.reason})")
    if unanswered:  # the step ended without settling the record (protected, refused): answer now
        failpoint(before_reply(reply.status))
        await ctx.store.save_intent(reply)
    return reply


async def answer_refused_repeat(store: Store, intent: Intent, verdict: Duplicate | ConflictingBody) -> IntentRecord:
    """Answer an intent whose id must not run again: a reply pushed to the id's list (so a
    client blocked on it is answered), the first intent's record left as it is, nothing run.
    Returns the first answer (a duplicate) or the refusal (another intent's id)."""
    match verdict:
        case Duplicate(first=first):
            log.info("intent %s already handled (%s); answering duplicate", first.intent_id, first.status)
            reply = duplicate_of(first)
            failpoint(before_reply(reply.status))
            await store.push_reply(reply)
            return first
        case ConflictingBody(first_body=first_body):
            refusal = conflict_of(intent, first_body)
            log.warning("intent %s refused: %s", intent.intent_id, refusal.reason)
            failpoint(before_reply(refusal.status))
            await store.push_reply(refusal)
            return refusal


def bad_record_refusal(error: BadRecord) -> str:
    """Why an intent for a quarantined symbol is refused, and what the operator does about it."""
    return (f"refused: the position record is unusable ({error}); it is quarantined: fix the field or delete"
            " the hash (see posguard status), then send the intent again")


def wall_clock_ms() -> int:
    """Epoch ms on this host: the clock ``expires_ms`` is compared with (senders, Redis and
    posguard are assumed to agree within about a second, as NTP keeps them)."""
    return int(time.time() * 1000)
