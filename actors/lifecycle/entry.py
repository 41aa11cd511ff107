"""The entry path: send the entry order once, verify it from evidence, settle the record.

The entry's client order id is in Redis before the order is sent (I5), and an entry that may
have been sent already is looked up by that id before it is ever sent again (I3). The
verdict is taken from evidence, never from absence (I1); a fill that cannot be verified in
time is protected anyway (I2).
"""

from __future__ import annotations

import anyio

from posguard.actors import ids
from posguard.actors.belonging import belongs_to
from posguard.actors.context import ActorContext
from posguard.actors.failpoints import ENTRY_SENT, failpoint
from posguard.actors.intents import OpenIntent
from posguard.actors.lifecycle.armed_stop import ArmedStop, disarm, needs_armed_stop
from posguard.actors.lifecycle.closing import settle_closed_externally
from posguard.actors.lifecycle.liquidation_guard import recheck_liquidation
from posguard.actors.lifecycle.protection import Protected, protect, protect_with_stop_order
from posguard.actors.lifecycle.replies import IntentConflict, Owned
from posguard.actors.orders import send_once
from posguard.actors.store.positions import RecordHead, Unseen, WriteAheadStale
from posguard.actors.records import IN_FLIGHT_STATES, PositionRecord, Protection, State, is_protected, open_size, utc_now
from posguard.actors.verification import ClosedExternally, Filled, Rejected, Unverified, verify_entry
from posguard.streams.backoff import Deadline
from posguard.streams.venue.errors import NotPlaced, OrderRejected, VenueUnavailable
from posguard.streams.venue.events import Order
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import OrderRequest

__all__ = ["drive_entry", "open_position", "settle_entry"]


async def open_position(ctx: ActorContext, symbol: str, intent: OpenIntent, owned: Owned) -> PositionRecord:
    """An open intent: a new record, or the redelivered intent's own record carried on.

    Written ahead in one round trip (`ActorContext.write_ahead_for`): decided from the record
    as this process last saw it, with no read, and written only if Redis still holds that
    (`Store.write_ahead`); otherwise decided again from a fresh read. A redelivered intent is
    always decided from Redis."""
    pending = ctx.write_ahead_for.get(symbol)
    current: PositionRecord | RecordHead | None
    if pending is None:
        seen = ctx.store.seen_head(symbol)
        current = await ctx.store.load_record(symbol)
        if current is None and isinstance(seen, RecordHead) and seen.state.is_live:
            await ctx.alert(symbol, f"the live record this process last saw ({seen.state}, intent {seen.intent_id}) is"
                                    " gone from Redis (data lost, or deleted by hand); its position may be on the"
                                    f" venue: intent {intent.intent_id} refused until the audit has adopted it")
            raise IntentConflict(
                f"{symbol}: its live position record ({seen.state}, intent {seen.intent_id}) is gone from Redis;"
                " nothing was sent: the audit adopts what the venue holds, send the intent again after it"
            )
    else:
        current = pending.seen = await _seen_head(ctx, symbol)
    if not _takes_a_new_entry(symbol, current, intent.intent_id):
        if not isinstance(current, PositionRecord):
            raise WriteAheadStale(f"{symbol}: intent {intent.intent_id} is already under way; carried on from Redis")
        return await drive_entry(ctx, current, resumed=True, owned=owned)  # a redelivery: carry on
    intent = await ctx.entry_check(intent)  # the market checks: refused before anything is written or sent
    record = PositionRecord(
        symbol=symbol,
        intent_id=intent.intent_id,
        state=State.SUBMITTING,
        side=intent.side,
        qty=intent.qty,
        stop_price=intent.stop_price,
        take_profit=intent.take_profit,
        client_order_id=ids.entry_id(ctx.account, intent.intent_id),
        protection=Protection.ATTACHED_REQUESTED if ctx.venue.supports_attached_stop else Protection.NONE,
        flat_ms=current.flat_ms if current is not None else 0,  # the symbol's last proof of flat
    )
    return await drive_entry(ctx, record, resumed=False, owned=owned)


async def _seen_head(ctx: ActorContext, symbol: str) -> RecordHead | None:
    """The symbol's record as this process last saw it; read once if it has not seen it yet."""
    seen = ctx.store.seen_head(symbol)
    if isinstance(seen, Unseen):
        await ctx.store.load_record(symbol)
        seen = ctx.store.seen_head(symbol)
    if isinstance(seen, Unseen):
        raise WriteAheadStale(f"{symbol}: its record could not be read")
    return seen


def _takes_a_new_entry(symbol: str, current: PositionRecord | RecordHead | None, intent_id: str) -> bool:
    """The one rule for what a symbol's record lets an open intent do: start a new entry
    (True), carry its own entry on (False: a redelivery), or nothing (`IntentConflict`)."""
    if current is None:
        return True
    if current.state.is_live and current.intent_id != intent_id:
        raise IntentConflict(
            f"{symbol} already has a live position record (state {current.state},"
            f" intent {current.intent_id}); close it before opening another"
        )
    if current.intent_id == intent_id and current.state.is_terminal:
        # Not a redelivery (its answer was written with the record that settled it): the id's
        # intent record has expired, and its client order ids are spent on the venue.
        raise IntentConflict(
            f"intent_id {intent_id!r} was already used for {symbol} (that position ended"
            f" {current.state}); send the intent under a new intent_id"
        )
    return current.intent_id != intent_id


async def drive_entry(ctx: ActorContext, record: PositionRecord, *, resumed: bool, owned: Owned) -> PositionRecord:
    """From any in-flight state to a settled one. Also the crash-recovery path.

    ``resumed``: the record was found in the store in this state, so the entry may have
    been sent already; it is looked up by client order id before it is ever sent.
    """
    sent_at = anyio.current_time()
    if record.state is State.SUBMITTING:
        # The write ahead, before any task group: its refusal (`WriteAheadStale`, nothing
        # written or sent) must reach `answer_intent` as itself, to be decided again from a
        # fresh read, not wrapped in the group's exception group (found by the breaker, issue 16).
        record.sent_ms = record.sent_ms or ctx.venue.now_ms() - 1
        await ctx.save(record, "entry order about to be sent")  # write-ahead (I5)
        owned()
    if record.state not in IN_FLIGHT_STATES or not needs_armed_stop(ctx, record):
        return await _drive(ctx, record, resumed=resumed, sent_at=sent_at, armed=None)
    # No stop rides on the entry here: while its outcome is unknown a whole-position stop is
    # armed beside the send and the verification (`armed_stop`), not after them.
    armed = ArmedStop(ctx, record)
    if resumed and record.filled_qty <= QTY_TOLERANCE:
        armed.arm()  # a restart: the entry may be on the venue, its fate unknown
    async with anyio.create_task_group() as tg:
        tg.start_soon(armed.run)
        try:
            await _drive(ctx, record, resumed=resumed, sent_at=sent_at, armed=armed)
        finally:
            armed.stop()
    return record


async def _drive(ctx: ActorContext, record: PositionRecord, *, resumed: bool, sent_at: float,
                 armed: ArmedStop | None) -> PositionRecord:
    acknowledged: Order | None = None
    if record.state is State.SUBMITTING:  # written ahead by `drive_entry`
        request = OrderRequest(
            symbol=record.symbol,
            side=record.side,
            qty=record.qty,
            client_order_id=record.client_order_id,
            stop_loss=record.stop_price if record.protection is Protection.ATTACHED_REQUESTED else None,
            # Attached beside the stop where the venue attaches one; else placed after it (`take_profit`).
            take_profit=record.take_profit if record.take_profit and ctx.venue.supports_attached_stop else None,
        )

        async def send() -> Order:
            try:
                return await ctx.venue.create_order(request)
            except NotPlaced:
                raise  # refused before it took effect: nothing placed
            except VenueUnavailable:
                if armed is not None:
                    armed.arm()
                raise

        try:
            order = await send_once(
                ctx, record, record.client_order_id, send,
                Deadline(ctx.settings.verification.hard_deadline), maybe_sent=resumed,
            )
        except OrderRejected as exc:
            if armed is not None:
                await armed.finish()
            record.transition(State.REJECTED, f"venue rejected the entry: {exc.reason}")
            await ctx.save(record)
            await disarm(ctx, record)
            return record
        failpoint(ENTRY_SENT)
        if order is not None:
            acknowledged = order
            record.order_id = order.order_id
            if belongs_to(record, order) and order.filled > record.filled_qty:
                # The answer reports a fill (Binance's RESULT): evidence, and written with the
                # record's next write (the stop's write ahead, `place_stop`), so that a restart
                # after it verifies from it instead of asking again behind the start-up's own
                # REST calls. A restart before it finds the entry `submitting` and arms a
                # whole-position stop at once (`drive_entry`).
                record.filled_qty = min(order.filled, record.qty)
                record.entry_price = order.avg_price or record.entry_price
            record.transition(State.SUBMITTED)
            ctx.stage(record, f"venue acknowledged: {order.status}, filled {order.filled}")
    if record.state in IN_FLIGHT_STATES:
        if record.state is not State.VERIFYING:
            record.transition(State.VERIFYING)
            ctx.stage(record)
        if armed is not None and acknowledged is None and record.filled_qty <= QTY_TOLERANCE:
            armed.arm()  # no answer by the send's deadline
        verdict = await verify_entry(ctx, record, sent_at, acknowledged)
        if armed is not None:
            await armed.finish()
        await settle_entry(ctx, record, verdict, sent_at)
    elif record.state is State.OPEN or (record.state is State.UNVERIFIED and not is_protected(record)):
        await protect(ctx, record, open_size(record), None, sent_at)  # records its own outcome
    elif record.state is State.PROTECTED and not is_protected(record):
        # A stop replacement was cut short (the liquidation re-check's tightening): the record's
        # stop is the new one, and the position's may be the old one, which never fires. Placed
        # again, as the replacement it was: the venue's old stop is no proof of this one.
        await protect_with_stop_order(ctx, record, open_size(record), sent_at, replacing=True)
    return record


async def settle_entry(
    ctx: ActorContext,
    record: PositionRecord,
    verdict: Filled | ClosedExternally | Rejected | Unverified,
    sent_at: float,
) -> None:
    """Record the verification's verdict, and protect whatever may be open."""
    elapsed_ms = round((anyio.current_time() - sent_at) * 1000, 1)
    match verdict:
        case Rejected(reason=reason, source=source):
            record.evidence = source
            record.transition(State.REJECTED, reason)
            await ctx.save(record)
            ctx.board.forget(record.client_order_id)
            await disarm(ctx, record)
        case ClosedExternally(filled_qty=filled, exit_qty=exit_qty, avg_price=avg, source=source):
            record.filled_qty, record.entry_price, record.evidence = filled, avg, source
            record.sent_to_verified_ms = elapsed_ms
            record.filled_at = utc_now()
            if not await settle_closed_externally(
                ctx, record, f"filled {filled}, then closed by the venue (exits {exit_qty}) before protection"
            ):  # the proof is not complete (the entry still filling): protect what may be open
                record.transition(State.OPEN)
                ctx.stage(record, f"filled {filled}; the exits do not prove it gone yet")
                await protect(ctx, record, filled, None, sent_at)
        case Filled():
            record.filled_qty = verdict.filled_qty  # the entry's proven fills; exits are counted apart
            record.entry_price = verdict.avg_price
            record.evidence = verdict.source
            record.sent_to_verified_ms = elapsed_ms
            record.filled_at = utc_now()
            record.transition(State.OPEN)
            partial = "" if verdict.complete else " (still filling at the deadline: size is a lower bound)"
            ctx.stage(record, f"filled {verdict.filled_qty} at {verdict.avg_price} ({verdict.source}){partial}")
            # An entry still filling is protected for all it may yet fill: a reduce-only stop
            # larger than the position is cut to it at the trigger, and a part that fills
            # after verification is covered from the start, not from the next audit's look.
            size = verdict.open_qty if verdict.complete else verdict.open_qty + max(0.0, record.qty - verdict.filled_qty)
            outcome = await protect(ctx, record, size, verdict.position_seen, sent_at)  # recorded there
            if isinstance(outcome, Protected):
                await recheck_liquidation(ctx, record, verdict.position_seen)
        case Unverified(reason=reason):
            record.transition(State.UNVERIFIED, reason)
            await ctx.save(record)
            await ctx.alert(record.symbol, f"entry {record.client_order_id} unverified: {reason}; protecting it anyway")
            await protect(ctx, record, record.qty, None, sent_at)  # records its own outcome
