"""Issue 13, defect 7: every way protection can end is handled by whoever asked for it.

`protect` can find the position already closed by the venue (a stop-out, a liquidation), place
a stop, or close the position because no stop could be placed. Each caller (a fresh entry, a
resumed record, an unverified entry, an adopted orphan) must record what happened: a record
left `open` or `unverified` on a flat venue position is a phantom until some later audit.
Trio, mock clock, fake venue, real Redis; asserted against the venue's ground truth.
"""

from __future__ import annotations

import anyio

from posguard.actors import ids
from posguard.actors.findings import Finding
from posguard.actors.lifecycle import recovery, repairs
from posguard.actors.lifecycle.entry import settle_entry
from posguard.actors.records import PositionRecord, State
from posguard.actors.verification import Unverified
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.engine import Engine
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
NO_AUDITS = AuditSettings(interval=3600.0)
"""Only the start-up audit runs: what a test sees is the step's own doing, not a later audit's."""


async def venue_flat_pushed(engine: Engine) -> None:
    """Wait until the board has heard the venue say the position is flat."""
    with anyio.fail_after(30):
        while (position := engine.board.position(SYMBOL)) is None or position.is_open:
            await engine.board.wait_for_change(SYMBOL)


async def opened_then_stopped_out(engine: Engine, venue: FakeVenue, intent_id: str) -> PositionRecord:
    """A position opened under ``intent_id`` with an attached stop, then stopped out by the
    venue, all while posguard was not looking; returns the record as it was written before."""
    intent = open_intent(intent_id, symbol=SYMBOL)
    coid = ids.entry_id(ACCOUNT, intent_id)
    record = PositionRecord(
        symbol=SYMBOL, intent_id=intent_id, state=State.OPEN, side="buy", qty=intent.qty,
        filled_qty=intent.qty, stop_price=intent.stop_price, client_order_id=coid, sent_ms=venue.now_ms() - 1,
    )
    order = await venue.create_order(OrderRequest(
        symbol=SYMBOL, side="buy", qty=intent.qty, client_order_id=coid, stop_loss=intent.stop_price,
    ))
    record.order_id, record.entry_price = order.order_id, order.avg_price or 0.0
    venue.set_price(SYMBOL, intent.stop_price * 0.99)  # through the attached stop: it fills
    assert venue.truth.position(SYMBOL) is None
    await venue_flat_pushed(engine)
    return record


async def test_a_resumed_open_record_whose_position_the_venue_closed_settles_closed_externally(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=130, knobs=FAST_PUSH) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        record = await opened_then_stopped_out(engine, venue, "resumed-open")
        await engine.store.save_record(record, "open before the crash")
        await recovery.resume(engine.ctx, SYMBOL)
        after = await engine.store.load_record(SYMBOL)
        assert after.state is State.CLOSED_EXTERNALLY, f"left {after.state} on a flat venue position"


async def test_an_unverified_entry_whose_position_the_venue_closed_settles_closed_externally(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=131, knobs=FAST_PUSH) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        record = await opened_then_stopped_out(engine, venue, "unverified")
        record.state = State.VERIFYING
        await engine.store.save_record(record, "verifying")
        await settle_entry(engine.ctx, record, Unverified(reason="no evidence by the deadline"), anyio.current_time())
        after = await engine.store.load_record(SYMBOL)
        assert after.state is State.CLOSED_EXTERNALLY, f"left {after.state} on a flat venue position"


async def test_an_orphan_closed_by_the_venue_while_being_adopted_settles_closed_externally(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=132, knobs=FAST_PUSH) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=1.0, client_order_id="manual-1"))
        snapshot = venue.truth.position(SYMBOL)
        assert snapshot is not None
        venue.liquidate(SYMBOL)  # after the audit's snapshot, before its repair
        await venue_flat_pushed(engine)
        finding = Finding(symbol=SYMBOL, kind="orphan", position=snapshot, seen="venue holds long 1.0; no record")
        outcome = await repairs.repair(engine.ctx, finding)
        after = await engine.store.load_record(SYMBOL)
        assert after.state is State.CLOSED_EXTERNALLY, f"adopted as {after.state} ({outcome}) but the venue is flat"


async def test_no_backoff_sleep_between_the_last_failed_stop_and_the_emergency_close(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(stop_reject_rate=1.0, push_delay={t: Lag.fixed(0.05) for t in TOPICS})
    async with FakeVenue(seed=133, knobs=knobs, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        calls: list[tuple[str, float]] = []
        place_stop, create_order = venue.place_stop, venue.create_order

        async def timed_place_stop(request: StopRequest) -> Order:
            calls.append(("stop", anyio.current_time()))
            return await place_stop(request)

        async def timed_create_order(request: OrderRequest) -> Order:
            calls.append(("close" if request.reduce_only else "entry", anyio.current_time()))
            return await create_order(request)

        venue.place_stop, venue.create_order = timed_place_stop, timed_create_order  # type: ignore[method-assign]
        reply = await (await engine.submit(open_intent("no-stop", symbol=SYMBOL))).wait()
        assert reply.outcome == "closed" and venue.truth.position(SYMBOL) is None
        kinds = [kind for kind, _ in calls]
        assert kinds.count("stop") == engine.settings.protection.stop_attempts
        last_stop = max(t for kind, t in calls if kind == "stop")
        first_close = min(t for kind, t in calls if kind == "close")
        # Virtual time: what separates them is REST round trips and Redis writes, never a backoff.
        shortest_backoff = engine.settings.protection.stop_backoff.initial * 0.5
        assert first_close - last_stop < shortest_backoff, (
            f"the position sat bare {first_close - last_stop:.2f} s after the last failed stop"
        )


async def test_a_stop_that_filled_at_once_is_an_exit_not_protection(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=134, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        place_stop = venue.place_stop
        states: list[State] = []
        engine.ctx.observers.append(lambda record, _note: states.append(record.state))

        async def stop_that_fills_before_its_answer(request: StopRequest) -> Order:
            await place_stop(request)
            venue.set_price(SYMBOL, request.stop_price * 0.99)  # the market runs through it at once
            raise VenueUnavailable("place_stop: response lost (timeout)")

        venue.place_stop = stop_that_fills_before_its_answer  # type: ignore[method-assign]
        reply = await (await engine.submit(open_intent("filled-stop", symbol=SYMBOL))).wait()
        assert venue.truth.position(SYMBOL) is None, "the stop closed the position"
        assert reply.outcome == "closed_externally", f"answered {reply.outcome} for a position the stop closed"
        assert State.PROTECTED not in states, "a filled stop was recorded as protection"
