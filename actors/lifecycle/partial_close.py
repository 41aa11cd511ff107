"""A close intent: of the whole position (`closing.drive_close`), or of a part of it.

A partial close (``qty`` or ``fraction``, sized by `intents.close_size`) is written ahead like
any close (``closing``, with the close intent's id and the size asked for in
`PositionRecord.partial_close_qty`, so that a restart resumes it as the partial close it is,
never as a full one), then:

1. reduce-only market orders for the size asked (`closing.reduce_position`), each written
   ahead, the reduction proven from their fills (`proof.reduced_by`);
2. the stop resized to what remains, the position covered at every step: a stop the position
   holds (Bybit's attached stop, Full mode) or a whole-position stop (Binance
   ``closePosition``) covers any size and needs nothing; a sized stop order is replaced by one
   sized to the remainder, the new one first, the old one cancelled after it is live. The
   take-profit needs nothing either: posguard's are whole-position (Bybit's attached one,
   Binance's ``closePosition`` TAKE_PROFIT_MARKET, `take_profit.arm_take_profit`). Bybit says
   of a position's TP/SL that the system will "adjust the qty according to the size of the
   open position" (Set Trading Stop:
   https://bybit-exchange.github.io/docs/v5/position/trading-stop); Binance's closePosition
   is "Close-All" of the position whatever its size (New Algo Order:
   https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/New-Algo-Order);
3. the record back to ``protected`` (`closing -> protected`, only for a partial close), with
   `PositionRecord.closed_qty` raised by what was closed, so `records.open_size` says what
   remains; that write answers the intent (`intents.answers`): ``done``, outcome
   ``protected``, the remaining size in the reason.

A position that turns out gone meanwhile (a stop fired, the venue had less to reduce) is
settled on its proof like any other end (`closing.settle_closed`).
"""

from __future__ import annotations

import logging

from posguard.actors.context import ActorContext
from posguard.actors.coverage import record_stop_covers_any_size
from posguard.actors.intents import CloseIntent, close_size
from posguard.actors.lifecycle.closing import close_key, drive_close, reduce_position, settle_closed
from posguard.actors.lifecycle.protection import Protected, protect_with_stop_order
from posguard.actors.lifecycle.replies import IntentConflict, Owned
from posguard.actors.proof import Gone
from posguard.actors.records import CLOSING_STATES, IN_FLIGHT_STATES, PositionRecord, Protection, State, open_size
from posguard.streams.venue.errors import VenueError
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["close_on_request", "drive_partial_close", "resume_close"]

log = logging.getLogger("posguard.actor")


async def close_on_request(ctx: ActorContext, symbol: str, intent: CloseIntent, owned: Owned) -> PositionRecord:
    """A close intent: only a live, settled entry can be closed, only a protected one in part;
    the close (and the part it asks for) is written ahead."""
    record = await ctx.store.load_record(symbol)
    if record is None or not record.state.is_live:
        state = record.state if record is not None else "none"
        raise IntentConflict(f"{symbol} has no live position to close (record state: {state})")
    if record.state in IN_FLIGHT_STATES:
        raise IntentConflict(f"{symbol}: the entry is still being verified; close it once it settles")
    if record.state in CLOSING_STATES:
        raise IntentConflict(f"{symbol}: a close is already under way ({record.state}, {record.close_intent_id})")
    part = close_size(intent, open_size(record), ctx.rules.get(symbol))  # IntentRefused below the minimum
    if part and record.state is not State.PROTECTED:
        raise IntentConflict(f"{symbol}: only a protected position can be closed in part (record state:"
                             f" {record.state}); close all of it, or wait until its stop is confirmed")
    record.transition(State.CLOSING)
    record.close_intent_id = intent.intent_id
    record.partial_close_qty = part
    await ctx.save(record, f"partial close of {part:g} of {open_size(record):g} requested" if part
                   else "close requested")
    owned()
    return await resume_close(ctx, record)


async def resume_close(ctx: ActorContext, record: PositionRecord) -> PositionRecord:
    """Drive a close on from a closing state, as the record says it is: a partial close as a
    partial one, any other as a close of the whole position. Also how a restart finishes one."""
    if record.state is State.CLOSING and record.partial_close_qty:
        return await drive_partial_close(ctx, record)
    return await drive_close(ctx, record)


async def drive_partial_close(ctx: ActorContext, record: PositionRecord) -> PositionRecord:
    """Steps 1 to 3 of the module's docstring, from a record ``closing`` with its part set."""
    target = record.partial_close_qty
    reduced = await reduce_position(ctx, record, id_key=close_key(record), target=target)
    if isinstance(reduced, Gone):
        await settle_closed(ctx, record, reduced, "partial close: the position was gone before all of it was closed")
        return record
    remaining = max(0.0, round(open_size(record) - reduced, 12))
    if remaining <= QTY_TOLERANCE:
        # More filled than asked (an attempt whose answer was lost filled after all): nothing
        # is left by our fills, so it ends as a close of the whole position, on its proof.
        record.partial_close_qty = 0.0
        await ctx.save(record, f"partial close: closed {reduced:g}, nothing left open; closing it as a whole")
        return await drive_close(ctx, record)
    if not await _resize_stop(ctx, record, remaining):
        return record  # an exit or a close of it all instead, recorded as such
    short = "" if reduced >= target - QTY_TOLERANCE else f" (of {target:g} asked: the venue did not take more)"
    record.transition(State.PROTECTED, f"partial close: closed {reduced:g}{short}; {remaining:g} open, protected")
    record.closed_qty = round(record.closed_qty + reduced, 12)
    record.partial_close_qty = 0.0
    await ctx.save(record)  # answers the close intent (`intents.answers`)
    return record


async def _resize_stop(ctx: ActorContext, record: PositionRecord, remaining: float) -> bool:
    """The stop sized to ``remaining``; False if the record ended instead (recorded so).

    A stop the position holds, or a whole-position stop, covers any size: nothing to do. A
    sized stop is replaced: the new one placed first (`protect_with_stop_order`, ``replacing``),
    the old one cancelled only once the new one is live, so the position is never bare. The
    old one is larger than the position: a reduce-only stop that is only cut to the position
    if it fires, so one that cannot be cancelled is logged, not alerted."""
    if await _stop_covers_any_size(ctx, record):
        return True
    old = record.stop_client_order_id
    outcome = await protect_with_stop_order(ctx, record, remaining, replacing=True)
    if not isinstance(outcome, Protected):
        return False
    if old and old != record.stop_client_order_id:
        try:
            ctx.count_rest(record, "cancel_order")
            await ctx.venue.cancel_order(record.symbol, old)
        except VenueError as exc:
            log.warning("%s: could not cancel the replaced stop %s (%s); it is reduce-only and larger than the"
                        " position, cancelled when the record settles", record.symbol, old, exc)
    return True


async def _stop_covers_any_size(ctx: ActorContext, record: PositionRecord) -> bool:
    """Whether the record's live stop covers the position at any size: one the position holds,
    or a whole-position order (`coverage.record_stop_covers_any_size`, or the venue's own view
    of the stop order: pushed, else asked by id). Not known: False, and the stop is replaced,
    which is safe either way (the new one goes first)."""
    if record.protection is Protection.ATTACHED_CONFIRMED or record_stop_covers_any_size(record):
        return True
    if record.protection is not Protection.STOP_ORDER or not record.stop_client_order_id:
        return False
    order = ctx.board.order(record.stop_client_order_id)
    if order is None:
        try:
            order = await ctx.fetch_order(record, record.stop_client_order_id)
        except VenueError:
            return False
    return order is not None and order.status == "open" and order.closes_position
