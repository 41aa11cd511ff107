"""Binance's stop refusals through posguard's protection path (issue 14).

Run on the simulated venue (trio, mock clock, real Redis), its ``place_stop`` answering what
the Binance adapter raises: the refusal is built by `translate` from the body Binance sends,
through `BINANCE_CODES`, the same path `CcxtVenue` takes (pinned against real ccxt and the
replay server in tests/test_binance_error_codes.py). Asserted against the venue's ground truth.

* ``-4120`` (a stop sent to the old endpoint) is a refusal: retried, and if every attempt is
  refused the position is closed reduce-only, never "unprotected and forgotten".
* ``-4130`` (a closePosition stop is already armed on that side): the replacement placed
  before the old stop is cancelled goes out sized, and the old one is cancelled after it.
"""

from __future__ import annotations

import json

import anyio
import ccxt.async_support as ccxt

from posguard.actors.findings import Finding
from posguard.actors.lifecycle import repairs
from posguard.actors.lifecycle.liquidation_guard import recheck_liquidation
from posguard.actors.records import Protection, State
from posguard.streams.ccxt_adapter.dialects import BINANCE_CODES
from posguard.streams.ccxt_adapter.errors import translate
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import VenueError, VenueUnavailable
from posguard.streams.venue.events import Order, Position
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
NO_AUDITS = AuditSettings(interval=3600.0)

OLD_ENDPOINT = (-4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.")
SLOT_TAKEN = (-4130, "An open stop or take profit order with GTE and closePosition in the direction is existing.")


def binance_refusal(code: int, message: str, coid: str) -> VenueError:
    """What `CcxtVenue.place_stop` raises when Binance answers ``code`` (ccxt puts the body
    after the exchange id; away from Binance's hosts it is a plain ExchangeError)."""
    raised = ccxt.ExchangeError("binanceusdm " + json.dumps({"code": code, "msg": message}))
    return translate(raised, BINANCE_CODES, action="place_stop", client_order_id=coid)


def refuse_stops(venue: FakeVenue, times: int | None) -> list[StopRequest]:
    """``venue.place_stop`` answers -4120 to the first ``times`` stops (None: to every one)."""
    place_stop, sent = venue.place_stop, []

    async def old_endpoint(request: StopRequest) -> Order:
        sent.append(request)
        if times is None or len(sent) <= times:
            raise binance_refusal(*OLD_ENDPOINT, request.client_order_id)
        return await place_stop(request)

    venue.place_stop = old_endpoint  # type: ignore[method-assign]
    return sent


async def test_every_stop_refused_4120_ends_in_an_emergency_close(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1401, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        sent = refuse_stops(venue, None)
        reply = await (await engine.submit(open_intent("old-endpoint", symbol=SYMBOL))).wait()
        assert reply.outcome == "closed", reply
        assert venue.truth.position(SYMBOL) is None, "the position was left open with no stop"
        assert len(sent) == engine.settings.protection.stop_attempts  # retried, then closed
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.CLOSED and "-4120" in record.reason


async def test_a_stop_refused_4120_once_is_protected_by_the_retry(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1402, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        sent = refuse_stops(venue, 1)
        reply = await (await engine.submit(open_intent("old-endpoint-once", symbol=SYMBOL))).wait()
        assert reply.outcome == "protected", reply
        assert len(sent) == 2
        [live] = venue.truth.open_stops(SYMBOL)
        assert live.client_order_id == sent[1].client_order_id and venue.truth.is_protected(SYMBOL)


async def test_a_tightened_stop_goes_out_sized_while_the_close_position_stop_is_armed(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The liquidation recheck replaces the stop new-first; Binance allows one closePosition
    stop per side, so the new whole-position stop is refused -4130 while the old is armed.
    The replacement goes out at once as a sized reduce-only stop, then the old is cancelled:
    the position is never without a stop in between."""
    async with FakeVenue(seed=1403, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("tighten", symbol=SYMBOL))).wait()
        assert reply.outcome == "protected"
        record = await engine.store.load_record(SYMBOL)
        [old] = venue.truth.open_stops(SYMBOL)
        place_stop, cancel_order, calls = venue.place_stop, venue.cancel_order, []

        async def one_whole_stop_per_side(request: StopRequest) -> Order:
            calls.append(("place", request.whole_position, len(venue.truth.open_stops(SYMBOL))))
            if request.whole_position and venue.truth.open_stops(SYMBOL):
                raise binance_refusal(*SLOT_TAKEN, request.client_order_id)
            return await place_stop(request)

        async def cancel(symbol: str, client_order_id: str) -> Order | None:
            calls.append(("cancel", client_order_id == old.client_order_id, len(venue.truth.open_stops(SYMBOL))))
            return await cancel_order(symbol, client_order_id)

        venue.place_stop, venue.cancel_order = one_whole_stop_per_side, cancel  # type: ignore[method-assign]
        truth = venue.truth.position(SYMBOL)
        assert truth is not None
        liq = record.stop_price + (truth.entry_price - record.stop_price) / 4  # inside the stop: it would never fire
        seen = Position(symbol=SYMBOL, side="long", size=truth.size, entry_price=truth.entry_price, stop_price=None,
                        mark_price=truth.entry_price, liq_price=liq, ts_ms=venue.now_ms())
        await recheck_liquidation(engine.ctx, record, seen)

        assert calls == [("place", True, 1), ("place", False, 1), ("cancel", True, 2)], calls
        [new] = venue.truth.open_stops(SYMBOL)
        assert new.client_order_id != old.client_order_id and abs(new.qty - truth.size) < 1e-9
        assert new.stop_price is not None and new.stop_price > liq
        after = await engine.store.load_record(SYMBOL)
        assert (after.state, after.protection, after.stop_client_order_id) == (
            State.PROTECTED, Protection.STOP_ORDER, new.client_order_id)


async def test_an_emergency_close_that_cannot_go_through_arms_a_stop_once_stops_are_taken_again(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Found by the standby crash test (issue 14): every stop refused, so the position is
    closed instead; then every close fails too (the order service down, its answers lost).
    The close alone kept the position bare until the closes went through (21 s there), though
    the stop service was back: while a close of a bare position has not gone through, a
    whole-position stop is armed beside it."""
    async with FakeVenue(seed=1404, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        place_stop = venue.place_stop
        sent = refuse_stops(venue, None)
        create_order, closes = venue.create_order, []

        async def order_service_down(request: OrderRequest) -> Order:
            if request.reduce_only:
                closes.append(request)
                raise VenueUnavailable("503 Service Unavailable")
            return await create_order(request)

        venue.create_order = order_service_down  # type: ignore[method-assign]
        ticket = await engine.submit(open_intent("bare-close", symbol=SYMBOL))
        with anyio.fail_after(60):
            while not closes:
                await anyio.sleep(0.05)
        assert venue.truth.position(SYMBOL) is not None and not venue.truth.is_protected(SYMBOL)
        assert len(sent) >= engine.settings.protection.stop_attempts, "closed only once every stop was refused"
        venue.place_stop = place_stop  # the stop service is back; the order service is not
        with anyio.fail_after(10):
            while not venue.truth.is_protected(SYMBOL):
                assert venue.truth.position(SYMBOL) is not None, "closed with the order service down?"
                await anyio.sleep(0.1)
        [armed] = venue.truth.open_stops(SYMBOL)
        during = await engine.store.load_record(SYMBOL)
        assert during.state in (State.EMERGENCY_CLOSING, State.CLOSE_FAILING), during.state
        assert (during.protection, during.stop_client_order_id) == (Protection.STOP_ORDER, armed.client_order_id)

        venue.create_order = create_order  # the close goes through: the stop armed for it is cancelled
        reply = await ticket.wait()
        assert reply.outcome == "closed", reply
        assert venue.truth.position(SYMBOL) is None and venue.truth.open_stops(SYMBOL) == []
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.CLOSED, record.state


async def test_an_audit_that_cannot_see_the_armed_close_position_stop_does_not_add_a_second(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Found by the standby crash test (seed 2): the audit's lists lagged, so a protected
    position looked unprotected and its record's stop was "unknown" when asked by id. The
    repair's new whole-position stop was refused -4130 (one is armed on that side: the venue's
    own word that the position is covered), and was sent again sized: two live stops. -4130
    answers the repair: nothing is added."""
    async with FakeVenue(seed=1405, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("lagging-audit", symbol=SYMBOL))).wait()
        assert reply.outcome == "protected"
        [armed] = venue.truth.open_stops(SYMBOL)
        place_stop, sent = venue.place_stop, []

        async def one_whole_stop_per_side(request: StopRequest) -> Order:
            sent.append(request)
            if request.whole_position and venue.truth.open_stops(SYMBOL):
                raise binance_refusal(*SLOT_TAKEN, request.client_order_id)
            return await place_stop(request)

        async def lagging_lookup(symbol: str, client_order_id: str, *, conditional: bool | None = None) -> Order | None:
            return None  # Binance's "does not exist" for an order it holds

        venue.place_stop, venue.fetch_order = one_whole_stop_per_side, lagging_lookup  # type: ignore[method-assign]
        position = venue.truth.position(SYMBOL)
        assert position is not None
        finding = Finding(symbol=SYMBOL, kind="unprotected", position=position,
                          seen=f"venue position {position.size} covered by stops for 0")
        outcome = await repairs.repair(engine.ctx, finding)
        assert [s.client_order_id for s in venue.truth.open_stops(SYMBOL)] == [armed.client_order_id], (outcome, sent)
        assert venue.truth.is_protected(SYMBOL)
        record = await engine.store.load_record(SYMBOL)
        assert (record.state, record.protection) == (State.PROTECTED, Protection.STOP_ORDER), record
