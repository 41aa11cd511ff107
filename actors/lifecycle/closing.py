"""Closing a position with reduce-only market orders, until the venue is proven flat.

Used for requested closes and for emergency closes (when no stop could be placed). Each
attempt has its own client order id, and every attempt is reduce-only, so a retry after a
lost response can never open or enlarge a position: at worst the venue refuses it with
`NothingToReduce`, which is the venue's own word that nothing is left.

A close closes the venue's whole position, not the record's idea of it: each order is sized
from the freshest evidence, and the record says closed only on proof (`posguard.actors.proof`):
exits summing to the size held, or a flat position seen after our close's fill. Also the one
writer of every other proven end (a stop or a liquidation, I1): `settle_closed`.
"""

from __future__ import annotations

import logging

import anyio

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.intents import CloseIntent
from posguard.actors.lifecycle.armed_stop import ArmedStop, needs_armed_stop
from posguard.actors.lifecycle.replies import IntentConflict, Owned
from posguard.actors.orders import cancel_leftover_stops, look_up, send_once
from posguard.actors.proof import Gone, known, prove_gone
from posguard.actors.records import CLOSING_STATES, IN_FLIGHT_STATES, PositionRecord, State
from posguard.streams.backoff import Deadline, sleep_within
from posguard.streams.venue.errors import NothingToReduce, OrderRejected, VenueError
from posguard.streams.venue.events import Order, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import OrderRequest

__all__ = [
    "close_key",
    "close_on_request",
    "close_position",
    "drive_close",
    "settle_closed",
    "settle_closed_externally",
]

log = logging.getLogger("posguard.actor")



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
    """From a closing state to closed: reduce-only orders until the venue is proven flat.
    Also how a close cut short by a restart is finished."""
    key = close_key(record)
    gone = await close_position(ctx, record, id_key=key, qty=record.filled_qty or record.qty)
    await settle_closed(ctx, record, gone, "emergency close" if key != record.close_intent_id else "closed on request")
    return record


def close_key(record: PositionRecord) -> str:
    """What seeds a close's client order ids: the close intent's id, or, for an emergency close
    (no stop could be placed), the entry's intent id marked as such."""
    return record.close_intent_id or ids.internal_intent_id("emergency", record.intent_id)


async def close_position(ctx: ActorContext, record: PositionRecord, *, id_key: str, qty: float) -> Gone:
    """Close the venue's whole position: reduce-only orders until `prove_gone` proves it flat.
    Never gives up.

    ``qty`` is the size the caller knows of; each order is sized from the freshest evidence
    (`_size_to_close`), never just from it, because the record may know less than the venue
    holds (a fill still arriving, a list that lagged). ``id_key`` (an intent id) seeds the
    orders' client order ids. After `ProtectionSettings.close_alert_after` failed attempts the
    record goes `close_failing` and an alert is raised; the attempts go on with backoff.

    A position no stop is known to hold (`needs_armed_stop`: an emergency close) gets a
    whole-position stop armed beside the close as soon as one attempt fails (`ArmedStop`): the
    close goes on, and the caller's `settle_closed` cancels that stop.
    """
    if not needs_armed_stop(ctx, record):
        return await _close_until_gone(ctx, record, id_key, qty, None)
    guard = ArmedStop(ctx, record, why="a close of a position no stop holds has not gone through")
    async with anyio.create_task_group() as tg:
        tg.start_soon(guard.run)
        try:
            return await _close_until_gone(ctx, record, id_key, qty, guard)
        finally:
            guard.stop()


async def _close_until_gone(ctx: ActorContext, record: PositionRecord, id_key: str, qty: float,
                            guard: ArmedStop | None) -> Gone:
    settings = ctx.settings.protection
    delays = settings.close_backoff.delays(ctx.rng)
    side = closing_side(position_side_of(record.side))
    closes: list[Order] = []
    left = max(qty, record.filled_qty)
    failures = 0
    attempt = 0
    while True:
        size = _size_to_close(ctx, record, left, closes)
        coid = ids.close_id(ctx.account, id_key, attempt)
        attempt += 1
        record.close_client_order_id = coid
        await ctx.save(record, f"sending reduce-only close {coid} for {size}")
        request = OrderRequest(symbol=record.symbol, side=side, qty=size, client_order_id=coid, reduce_only=True)
        deadline = Deadline(settings.stop_deadline)

        async def send(request: OrderRequest = request) -> Order:
            try:
                return await ctx.venue.create_order(request)
            except NothingToReduce:
                raise  # the venue's word that nothing is left: no stop needed for it
            except VenueError:
                if guard is not None:
                    guard.arm()  # refused, or its outcome unknown: the position may stay bare
                raise

        try:
            order = await send_once(ctx, record, coid, send, deadline)
            if order is not None and not order.is_final:
                order = await _until_final(ctx, record, coid, deadline)
        except NothingToReduce:
            gone = await prove_gone(ctx, record, ask_rest=True, closes=closes, refused_ms=ctx.venue.now_ms())
            if gone is not None:
                return gone
            log.warning("%s: nothing to reduce, but the entry is still filling; closing again", record.symbol)
            order = None
        except OrderRejected as exc:
            log.error("%s: close %s rejected: %s", record.symbol, coid, exc.reason)
            order = None
        if order is not None and order.filled > QTY_TOLERANCE:
            closes.append(order)
            gone, left = await _proof_after_fill(ctx, record, closes)
            if gone is not None:
                return gone
            log.warning("%s: close %s filled %s, but the venue is not proven flat (%s left by the executions);"
                        " closing what is left", record.symbol, coid, order.filled, left)
            continue
        failures += 1
        if guard is not None:
            guard.arm()
        if failures == settings.close_alert_after and record.state is not State.CLOSE_FAILING:
            record.transition(State.CLOSE_FAILING, f"could not close after {failures} attempts; still trying")
            await ctx.save(record)
            await ctx.alert(record.symbol, f"position may be open and unprotected: {record.reason}")
        await anyio.sleep(next(delays))


def _size_to_close(ctx: ActorContext, record: PositionRecord, left: float, closes: list[Order]) -> float:
    """What the next reduce-only order asks for, from the freshest evidence: a position pushed
    after our last close fill, else what the executions leave open (``left``). A reduce-only
    order is cut to the position, so asking too much is harmless; asking too little is what
    left positions open (issue 13, defect 1). Within the venue's minimum and maximum."""
    pushed = ctx.board.position(record.symbol)
    since = max((c.ts_ms for c in closes), default=record.sent_ms)
    size = left
    if pushed is not None and pushed.is_open and pushed.side == position_side_of(record.side) and pushed.ts_ms >= since:
        size = pushed.size if closes else max(pushed.size, left)
    rules = ctx.rules.get(record.symbol)
    if rules is None:
        return max(size, QTY_TOLERANCE)
    return min(max(rules.round_qty(size), rules.min_qty), rules.largest_qty)


async def _proof_after_fill(ctx: ActorContext, record: PositionRecord, closes: list[Order]) -> tuple[Gone | None, float]:
    """After a close order filled: the venue's position pushed after the fill, waited for up
    to `ProtectionSettings.stop_confirm_deadline` (flat proves it; open says what is left);
    without it, the venue's execution list and entry order, whose exits must sum to what the
    entry filled (pushed fills alone may miss some). Unproven: what is still open."""
    deadline = Deadline(ctx.settings.protection.stop_confirm_deadline)
    while ctx.board.is_healthy() and not deadline.passed:
        pushed = ctx.board.position(record.symbol)
        if pushed is not None and pushed.ts_ms >= closes[-1].ts_ms:
            gone = (await known(ctx, record, ask_rest=False)).proves(record, closes=closes)
            if gone is not None:
                return gone, 0.0
            break
        with anyio.move_on_after(min(deadline.remaining, ctx.board.seconds_until_stale())):
            await ctx.board.wait_for_change(record.symbol)
    seen = await known(ctx, record, ask_rest=True)
    return seen.proves(record, closes=closes), seen.left(record, closes)


async def _until_final(ctx: ActorContext, record: PositionRecord, coid: str, deadline: Deadline) -> Order | None:
    """A market order is final within moments; wait for the venue to say so."""
    delays = ctx.settings.verification.backoff.delays(ctx.rng)
    while True:
        order = await look_up(ctx, record, coid, deadline)
        if not isinstance(order, Order) or order.is_final:
            return order if isinstance(order, Order) else None
        if not await sleep_within(next(delays), deadline):
            return order


async def settle_closed(ctx: ActorContext, record: PositionRecord, gone: Gone, why: str) -> None:
    """The one writer of a record's end once its position is proven gone (`prove_gone`): our
    close, the venue's stop or liquidation, whichever the proof shows. The stops left armed
    are cancelled after the write (a crash between leaves them to the audit's stale stops)."""
    record.flat_ms = max(record.flat_ms, gone.flat_ms)
    record.transition(gone.state, f"{why}: {gone.describe()}")
    await ctx.save(record)
    await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
    ctx.board.forget(record.client_order_id, record.stop_client_order_id, record.close_client_order_id,
                     record.take_profit_client_order_id)


async def settle_closed_externally(ctx: ActorContext, record: PositionRecord, why: str) -> bool:
    """A stop or a liquidation was seen closing the position: the record ends only if
    `prove_gone` proves it (the venue's execution list asked too). False: not proven, the
    record stays live and the audit looks again."""
    gone = await prove_gone(ctx, record, ask_rest=True)
    if gone is None:
        log.warning("%s: %s, but the exits do not prove the position gone; left to the audit", record.symbol, why)
        return False
    await settle_closed(ctx, record, gone, why)
    return True
