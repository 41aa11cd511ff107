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
from posguard.actors.lifecycle.armed_stop import ArmedStop, needs_armed_stop
from posguard.actors.orders import cancel_leftover_stops, look_up, send_once
from posguard.actors.proof import Gone, known, prove_gone, reduced_by
from posguard.actors.records import PositionRecord, State, open_size
from posguard.streams.backoff import Deadline, sleep_within
from posguard.streams.venue.errors import NothingToReduce, OrderRejected, VenueError
from posguard.streams.venue.events import Order, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import OrderRequest

__all__ = [
    "close_key",
    "close_position",
    "drive_close",
    "reduce_position",
    "settle_closed",
    "settle_closed_externally",
]

log = logging.getLogger("posguard.actor")



async def drive_close(ctx: ActorContext, record: PositionRecord) -> PositionRecord:
    """From a closing state to closed: reduce-only orders until the venue is proven flat.
    Also how a close cut short by a restart is finished."""
    key = close_key(record)
    gone = await close_position(ctx, record, id_key=key, qty=open_size(record))
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
    left = max(qty, open_size(record))
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


async def reduce_position(ctx: ActorContext, record: PositionRecord, *, id_key: str, target: float) -> Gone | float:
    """A partial close: reduce-only market orders until their fills (`proof.reduced_by`)
    come to ``target``; returns what they filled, or the proof that the position is gone
    (the venue had less to reduce than asked: a stop or a liquidation came first).

    Each attempt's client order id is written ahead (I5). After a restart (the record's
    `close_client_order_id` is one of this close's) every earlier attempt is looked up by its
    id and the last one is looked up before anything is sent again (`send_once`'s
    ``maybe_sent``), so that a fill before the crash is counted, never sent twice: a second
    reduce-only order would close more than was asked. What is left of the ask below the
    venue's minimum is not sent. After `ProtectionSettings.close_alert_after` failed attempts
    it stops with what it did: the position kept its stop all along, so it is a reason and an
    alert, not a close of the whole position."""
    settings = ctx.settings.protection
    delays = settings.close_backoff.delays(ctx.rng)
    side = closing_side(position_side_of(record.side))
    rules = ctx.rules.get(record.symbol)
    first = ids.close_id(ctx.account, id_key, 0)
    closes: list[Order] = []
    attempt, maybe_sent = 0, False
    last = ids.parse(record.close_client_order_id)
    if last is not None and ids.same_intent(record.close_client_order_id, first, role="close"):
        attempt, maybe_sent = last.attempt, True  # a restart cut this close short
        closes = await _earlier_attempts(ctx, record, id_key, last.attempt)
    failures = 0
    while True:
        executions = ctx.board.executions(record.symbol, record.sent_ms)
        done = reduced_by(record, first, executions, closes)
        want = target - done
        size = rules.round_qty(want) if rules is not None else want
        if want <= QTY_TOLERANCE or (rules is not None and size < rules.min_qty):
            return done
        coid = ids.close_id(ctx.account, id_key, attempt)
        record.close_client_order_id = coid
        await ctx.save(record, f"sending reduce-only close {coid} for {size} (partial close: {done:g} of {target:g} done)")
        request = OrderRequest(symbol=record.symbol, side=side, qty=size, client_order_id=coid, reduce_only=True)
        deadline = Deadline(settings.stop_deadline)
        try:
            order = await send_once(ctx, record, coid, lambda r=request: ctx.venue.create_order(r), deadline,
                                    maybe_sent=maybe_sent)
            if order is not None and not order.is_final:
                order = await _until_final(ctx, record, coid, deadline)
        except NothingToReduce:
            gone = await prove_gone(ctx, record, ask_rest=True, closes=closes, refused_ms=ctx.venue.now_ms())
            if gone is not None:
                return gone
            order = None
        except OrderRejected as exc:
            log.error("%s: partial close %s rejected: %s", record.symbol, coid, exc.reason)
            order = None
        maybe_sent = False
        attempt += 1
        if order is not None and order.filled > QTY_TOLERANCE:
            closes.append(order)
            continue
        failures += 1
        if failures >= settings.close_alert_after:
            await ctx.alert(record.symbol, f"partial close {id_key}: could not close more after {failures} attempts"
                                           f" ({done:g} of {target:g} closed); the position keeps its stop")
            return done
        await anyio.sleep(next(delays))


async def _earlier_attempts(ctx: ActorContext, record: PositionRecord, id_key: str, before: int) -> list[Order]:
    """A close's attempts before ``before``, as the venue knows them (a restart lost them):
    looked up by id, since the venue's trade list may not name them (Binance)."""
    found = []
    for attempt in range(before):
        try:
            order = await ctx.fetch_order(record, ids.close_id(ctx.account, id_key, attempt))
        except VenueError as exc:
            log.warning("%s: could not look up close attempt %d: %s", record.symbol, attempt, exc)
            continue
        if order is not None and order.filled > QTY_TOLERANCE:
            found.append(order)
    return found


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
