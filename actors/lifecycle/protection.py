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

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.lifecycle.closing import close_key, close_position, settle_closed
from posguard.actors.orders import send_once
from posguard.actors.records import CLOSING_STATES, PositionRecord, State, utc_now
from posguard.streams.backoff import Deadline
from posguard.streams.venue.errors import OrderRejected, StopWouldTrigger, VenueUnavailable
from posguard.streams.venue.events import Position, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import StopRequest

__all__ = [
    "PositionView",
    "ProtectOutcome",
    "StopResult",
    "confirm_attached_stop",
    "emergency_close",
    "exits_since_entry",
    "orphan_stop_price",
    "place_stop",
    "protect",
    "read_position",
    "record_for_venue_position",
]

log = logging.getLogger("posguard.actor")

StopResult = Literal["live", "would_trigger", "failed"]
PositionView = Literal["stop_on", "stop_off", "flat", "unknown"]
ProtectOutcome = Literal["protected", "closed_externally", "closed"]

def read_position(position: Position | None, record: PositionRecord) -> PositionView:
    """What a venue position snapshot says about our filled entry and its stop.

    Only a snapshot taken after the entry was sent says anything; "flat" is the venue's own
    word that the position is gone, which sends us to the executions for the proof.
    """
    if position is None or position.ts_ms < record.sent_ms:
        return "unknown"
    if not position.is_open:
        return "flat"
    if position.side != position_side_of(record.side):
        return "unknown"
    return "stop_on" if position.stop_price is not None else "stop_off"


async def confirm_attached_stop(ctx: ActorContext, record: PositionRecord, seen: Position | None) -> PositionView:
    """Wait (push first, then one REST look) for the venue to show the position and its stop."""
    view = read_position(seen, record)
    if view == "unknown":
        view = read_position(ctx.board.position(record.symbol), record)
    deadline = Deadline(ctx.settings.protection.stop_confirm_deadline)
    while view == "unknown" and not deadline.passed and ctx.board.is_healthy():
        with anyio.move_on_after(min(deadline.remaining, ctx.board.seconds_until_stale())):
            await ctx.board.wait_for_change(record.symbol)
        view = read_position(ctx.board.position(record.symbol), record)
    if view == "unknown":
        try:
            ctx.count_rest(record, "fetch_positions")
            positions = await ctx.venue.fetch_positions()
            view = read_position(next((p for p in positions if p.symbol == record.symbol), None), record)
        except VenueUnavailable as exc:
            log.warning("%s: could not read positions to confirm the attached stop: %s", record.symbol, exc)
    return view


async def exits_since_entry(ctx: ActorContext, record: PositionRecord, *, ask_rest: bool) -> float:
    """Quantity closed by fills that are not our entry (a stop, a liquidation), since it was sent."""
    side = closing_side(position_side_of(record.side))
    executions = ctx.board.executions(record.symbol, record.sent_ms)
    if ask_rest:
        try:
            ctx.count_rest(record, "fetch_executions")
            executions = executions + await ctx.venue.fetch_executions(record.symbol, record.sent_ms)
        except VenueUnavailable as exc:
            log.warning("%s: could not read executions: %s", record.symbol, exc)
    unique = {e.exec_id: e for e in executions}
    return sum(e.qty for e in unique.values() if e.side == side and e.client_order_id != record.client_order_id)


def orphan_stop_price(ctx: ActorContext, position: Position) -> float:
    """The stop for a position posguard did not open (an orphan, a quarantined symbol's):
    `ProtectionSettings.orphan_stop_distance` from its entry price, on the venue's tick."""
    distance = ctx.settings.protection.orphan_stop_distance
    raw_stop = position.entry_price * (1 - distance if position.side == "long" else 1 + distance)
    rules = ctx.rules.get(position.symbol)
    return rules.round_price(raw_stop) if rules is not None else raw_stop


def record_for_venue_position(ctx: ActorContext, position: Position, *, intent_id: str, stop_price: float,
                              reason: str, filled_at: str = "") -> PositionRecord:
    """A record for a position the venue holds that posguard did not open through an intent
    (an orphan adopted by the audit, a quarantined symbol's guard): what the venue shows."""
    return PositionRecord(
        symbol=position.symbol,
        intent_id=intent_id,
        state=State.OPEN,
        side="buy" if position.side == "long" else "sell",
        qty=position.size,
        filled_qty=position.size,
        entry_price=position.entry_price,
        stop_price=stop_price,
        client_order_id=ids.entry_id(ctx.account, intent_id),
        reason=reason,
        sent_ms=position.ts_ms,
        filled_at=filled_at,
    )


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


async def protect(
    ctx: ActorContext, record: PositionRecord, qty: float, seen: Position | None, sent_at: float
) -> ProtectOutcome:
    """Take a record in `open` or `unverified` to `protected`, or see it closed.

    ``qty`` is the size to protect; ``seen`` a post-fill position snapshot if one was seen.
    An `unverified` record stays `unverified` (the audit owns it) but gets its stop.
    Returns how it ended; a "closed_externally" outcome is left for the caller to record.
    """
    if record.stop_source == "attached":
        view = await confirm_attached_stop(ctx, record, seen)
    else:
        view = read_position(seen or ctx.board.position(record.symbol), record)
    if view == "flat" or (view != "stop_on" and ctx.board.executions(record.symbol, record.sent_ms)):
        # The venue says it is gone, or fills arrived since: look for the proof (I1).
        if await exits_since_entry(ctx, record, ask_rest=view == "flat") >= qty - QTY_TOLERANCE:
            return "closed_externally"
    if view != "stop_on":
        if record.stop_source == "attached":
            log.warning("%s: attached stop %s; placing a separate stop", record.symbol,
                        "missing" if view == "stop_off" else "not confirmed")
        record.stop_source = ""
        result = await place_stop(ctx, record, qty)
        if result != "live":
            return await emergency_close(ctx, record, qty)
        record.stop_source = "order"
    record.sent_to_protected_ms = round((anyio.current_time() - sent_at) * 1000, 1)
    record.protected_at = utc_now()
    if record.state is State.OPEN:
        record.transition(State.PROTECTED)
    await ctx.save(record, f"stop live ({record.stop_source})")
    return "protected"


async def emergency_close(ctx: ActorContext, record: PositionRecord, qty: float) -> ProtectOutcome:
    """No stop could be placed: close the position rather than leave it bare."""
    why = record.reason
    if record.state not in CLOSING_STATES:
        record.transition(State.EMERGENCY_CLOSING)
    await ctx.save(record, f"emergency close: {why}")
    await ctx.alert(record.symbol, f"emergency close: {why}")
    outcome = await close_position(ctx, record, id_key=close_key(record), qty=qty)
    await settle_closed(ctx, record, outcome, f"emergency close ({why})")
    return "closed"
