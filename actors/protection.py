"""Making sure a filled position carries a live stop-loss, or is closed (I2).

In order of preference:
1. The stop attached to the entry order, confirmed on the venue's position (push or REST).
2. A separate reduce-only stop order, sized to what filled, confirmed by the venue's answer.
3. If no stop can be placed after bounded retries, or the market is already through the
   stop price: close the position (reduce-only). A position is never left bare.

An attached stop that cannot be confirmed in time is backed by a separate stop rather than
trusted: two reduce-only stops are harmless, a missing one is not.
"""

from __future__ import annotations

import logging
from typing import Literal

import anyio

from actors import ids
from actors.backoff import Deadline
from actors.closing import close_position, settle_closed
from actors.context import ActorContext
from actors.orders import send_once
from actors.records import PositionRecord, State, utc_now
from streams.errors import OrderRejected, StopWouldTrigger, VenueUnavailable
from streams.events import Position, closing_side, position_side_of
from streams.venue import StopRequest

log = logging.getLogger("posguard.actor")

StopResult = Literal["live", "would_trigger", "failed"]


def attached_stop_state(position: Position | None, record: PositionRecord) -> bool | None:
    """True/False when a post-fill position snapshot says whether the stop is on it; None
    when there is no such snapshot (nothing can be concluded)."""
    if position is None or position.ts_ms < record.sent_ms or not position.is_open:
        return None
    if position.side != position_side_of(record.side):
        return None
    return position.stop_price is not None


async def confirm_attached_stop(ctx: ActorContext, record: PositionRecord, seen: Position | None) -> bool:
    """Wait (push first, then one REST look) for the venue to show the attached stop."""
    state = attached_stop_state(seen, record)
    deadline = Deadline(ctx.settings.protection.stop_confirm_deadline)
    while state is None and not deadline.passed and ctx.board.is_healthy():
        state = attached_stop_state(ctx.board.position(record.symbol), record)
        if state is None:
            with anyio.move_on_after(min(deadline.remaining, ctx.board.seconds_until_stale())):
                await ctx.board.wait_for_change(record.symbol)
    if state is None:
        state = attached_stop_state(ctx.board.position(record.symbol), record)
    if state is None:
        try:
            ctx.count_rest(record, "fetch_positions")
            positions = await ctx.venue.fetch_positions()
            state = attached_stop_state(next((p for p in positions if p.symbol == record.symbol), None), record)
        except VenueUnavailable as exc:
            log.warning("%s: could not read positions to confirm the attached stop: %s", record.symbol, exc)
    return state is True


async def place_stop(ctx: ActorContext, record: PositionRecord, qty: float) -> StopResult:
    """Place a separate reduce-only stop, retrying with backoff up to the attempt limit."""
    settings = ctx.settings.protection
    delays = settings.stop_backoff.delays(ctx.rng)
    side = closing_side(position_side_of(record.side))
    for _ in range(settings.stop_attempts):
        record.stop_attempts += 1
        coid = ids.stop_id(ctx.account, record.intent_id, record.stop_attempts)
        record.stop_client_order_id = coid
        await ctx.save(record, f"placing stop {coid} at {record.stop_price} for {qty}")
        request = StopRequest(symbol=record.symbol, side=side, qty=qty, stop_price=record.stop_price, client_order_id=coid)
        try:
            order = await send_once(
                ctx, record, coid, lambda: ctx.venue.place_stop(request), Deadline(settings.stop_deadline)
            )
        except StopWouldTrigger as exc:
            record.reason = f"market already through the stop: {exc.reason}"
            return "would_trigger"
        except OrderRejected as exc:
            log.warning("%s: stop %s rejected: %s", record.symbol, coid, exc.reason)
            record.reason = f"stop rejected: {exc.reason}"
            order = None
        if order is not None and order.status == "open":
            return "live"
        if order is not None and order.status == "filled":
            # It triggered already: the stop did its job; the exit shows in executions.
            return "live"
        await anyio.sleep(next(delays))
    record.reason = f"no stop could be placed in {settings.stop_attempts} attempts ({record.reason})"
    return "failed"


async def protect(ctx: ActorContext, record: PositionRecord, qty: float, seen: Position | None, sent_at: float) -> None:
    """Take a record in `open` or `unverified` to `protected`, or close the position.

    ``qty`` is the size to protect; ``seen`` a post-fill position snapshot if one was seen.
    An `unverified` record stays `unverified` (the audit owns it) but gets its stop.
    """
    stop_live = False
    if record.stop_source == "attached":
        stop_live = await confirm_attached_stop(ctx, record, seen)
        if not stop_live:
            log.warning("%s: attached stop not confirmed; placing a separate stop", record.symbol)
            record.stop_source = ""
    if not stop_live:
        result = await place_stop(ctx, record, qty)
        if result == "live":
            record.stop_source = "order"
            stop_live = True
        else:
            await emergency_close(ctx, record, qty)
            return
    record.sent_to_protected_ms = round((anyio.current_time() - sent_at) * 1000, 1)
    record.protected_at = utc_now()
    if record.state is not State.UNVERIFIED:
        record.state = State.PROTECTED
    await ctx.save(record, f"stop live ({record.stop_source})")


async def emergency_close(ctx: ActorContext, record: PositionRecord, qty: float) -> None:
    """No stop could be placed: close the position rather than leave it bare."""
    why = record.reason
    record.state = State.EMERGENCY_CLOSING
    await ctx.save(record, f"emergency close: {why}")
    ctx.alert(record.symbol, f"emergency close: {why}")
    outcome = await close_position(ctx, record, id_key=record.intent_id + ":emergency", qty=qty)
    await settle_closed(ctx, record, outcome, f"emergency close ({why})")
