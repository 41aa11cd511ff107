"""Closing a position with reduce-only market orders, until the venue shows it closed.

Used for requested closes and for emergency closes (when no stop could be placed). Each
attempt has its own client order id, and every attempt is reduce-only, so a retry after a
lost response can never open or enlarge a position: at worst the venue refuses it with
`NothingToReduce`, which is the venue's own word that nothing is left.

Also the other ways a position's record ends: a close intent driven to the end, and a
position proven closed by the venue itself (a stop or a liquidation, I1).
"""

from __future__ import annotations

import logging
from typing import Literal

import anyio

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.intents import CloseIntent
from posguard.actors.lifecycle.replies import IntentConflict, Owned
from posguard.actors.orders import cancel_leftover_stops, look_up, send_once
from posguard.actors.records import CLOSING_STATES, IN_FLIGHT_STATES, PositionRecord, State
from posguard.streams.backoff import Deadline, sleep_within
from posguard.streams.venue.errors import NothingToReduce, OrderRejected, VenueUnavailable
from posguard.streams.venue.events import Order, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import OrderRequest

__all__ = [
    "CloseOutcome",
    "EMERGENCY_SUFFIX",
    "close_key",
    "close_on_request",
    "close_position",
    "drive_close",
    "settle_closed",
    "settle_closed_externally",
]

log = logging.getLogger("posguard.actor")

CloseOutcome = Literal["closed", "nothing_to_reduce"]
EMERGENCY_SUFFIX = ":emergency"


async def close_on_request(ctx: ActorContext, symbol: str, intent: CloseIntent, owned: Owned) -> PositionRecord:
    """A close intent: only a live, settled entry can be closed; the close is written ahead."""
    record = await ctx.store.load_record(symbol)
    if record is None or not record.state.is_live:
        state = record.state if record is not None else "none"
        raise IntentConflict(f"{symbol} has no live position to close (record state: {state})")
    if record.state in IN_FLIGHT_STATES:
        raise IntentConflict(f"{symbol}: the entry is still being verified; close it once it settles")
    if record.state in CLOSING_STATES:
        raise IntentConflict(f"{symbol}: a close is already under way ({record.state}, {record.close_intent_id})")
    record.transition(State.CLOSING)
    record.close_intent_id = intent.intent_id
    await ctx.save(record, "close requested")
    owned()
    return await drive_close(ctx, record)


async def drive_close(ctx: ActorContext, record: PositionRecord) -> PositionRecord:
    """From a closing state to closed: reduce-only orders, then the stops left armed are
    cancelled. Also how a close cut short by a restart is finished."""
    qty = record.filled_qty if record.filled_qty > 0 else record.qty
    key = close_key(record)
    outcome = await close_position(ctx, record, id_key=key, qty=qty)
    await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
    await settle_closed(ctx, record, outcome, "emergency close" if key != record.close_intent_id else "closed on request")
    return record


def close_key(record: PositionRecord) -> str:
    """What seeds a close's client order ids: the close intent's id, or, for an emergency close
    (no stop could be placed), the entry's intent id marked as such."""
    return record.close_intent_id or record.intent_id + EMERGENCY_SUFFIX


async def close_position(ctx: ActorContext, record: PositionRecord, *, id_key: str, qty: float) -> CloseOutcome:
    """Reduce the position by ``qty`` until the venue shows it done. Never gives up.

    ``id_key`` (an intent id) seeds the close orders' client order ids. After
    `ProtectionSettings.close_alert_after` failed attempts the record goes `unverified`
    and an alert is raised; the attempts go on with backoff.
    """
    settings = ctx.settings.protection
    delays = settings.close_backoff.delays(ctx.rng)
    side = closing_side(position_side_of(record.side))
    remaining = qty
    failures = 0
    attempt = 0
    while True:
        coid = ids.close_id(ctx.account, id_key, attempt)
        record.close_client_order_id = coid
        await ctx.save(record, f"sending reduce-only close {coid} for {remaining}")
        request = OrderRequest(symbol=record.symbol, side=side, qty=remaining, client_order_id=coid, reduce_only=True)
        deadline = Deadline(settings.stop_deadline)
        try:
            order = await send_once(ctx, record, coid, lambda: ctx.venue.create_order(request), deadline)
            if order is not None and not order.is_final:
                order = await _until_final(ctx, record, coid, deadline)
        except NothingToReduce:
            return "nothing_to_reduce"
        except OrderRejected as exc:
            log.error("%s: close %s rejected: %s", record.symbol, coid, exc.reason)
            order = None
        if order is not None and order.filled > QTY_TOLERANCE:
            remaining -= order.filled
            if remaining <= QTY_TOLERANCE:
                return "closed"
            attempt += 1
            continue
        failures += 1
        attempt += 1
        if failures == settings.close_alert_after and record.state is not State.CLOSE_FAILING:
            record.transition(State.CLOSE_FAILING, f"could not close after {failures} attempts; still trying")
            await ctx.save(record)
            await ctx.alert(record.symbol, f"position may be open and unprotected: {record.reason}")
        await anyio.sleep(next(delays))


async def _until_final(ctx: ActorContext, record: PositionRecord, coid: str, deadline: Deadline) -> Order | None:
    """A market order is final within moments; wait for the venue to say so."""
    delays = ctx.settings.verification.backoff.delays(ctx.rng)
    while True:
        order = await look_up(ctx, record, coid, deadline)
        if not isinstance(order, Order) or order.is_final:
            return order if isinstance(order, Order) else None
        if not await sleep_within(next(delays), deadline):
            return order


async def settle_closed(ctx: ActorContext, record: PositionRecord, outcome: CloseOutcome, why: str) -> None:
    """Record the end of a position after a close, with the evidence that ended it.

    ``closed``: our close filled. ``nothing_to_reduce``: the venue refused our reduce-only
    order because it holds nothing: flat, by the venue's own check. Whether something else
    closed it first (a stop, a liquidation) is read from the executions, for the record.
    """
    if outcome == "closed":
        record.transition(State.CLOSED, why)
    else:
        exits = await _exits_since(ctx, record)
        ended = State.CLOSED_EXTERNALLY if exits >= record.filled_qty - QTY_TOLERANCE > 0 else State.CLOSED
        record.transition(ended, f"{why}: venue holds no position (exits seen: {exits})")
    await ctx.save(record)
    ctx.board.forget(record.client_order_id, record.stop_client_order_id, record.close_client_order_id)


async def settle_closed_externally(ctx: ActorContext, record: PositionRecord, reason: str) -> None:
    """Proven filled and closed by the venue: record it and cancel any stop left armed."""
    record.transition(State.CLOSED_EXTERNALLY, reason)
    await ctx.save(record)
    await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
    ctx.board.forget(record.client_order_id, record.stop_client_order_id)


async def _exits_since(ctx: ActorContext, record: PositionRecord) -> float:
    side = closing_side(position_side_of(record.side))
    try:
        ctx.count_rest(record, "fetch_executions")
        executions = await ctx.venue.fetch_executions(record.symbol, record.sent_ms)
    except VenueUnavailable:
        executions = ctx.board.executions(record.symbol, record.sent_ms)
    return sum(e.qty for e in executions if e.side == side and e.client_order_id != record.client_order_id)
