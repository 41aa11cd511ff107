"""Take-profit on open, through the simulated venue on trio with the mock clock, real Redis.

Two shapes, as the venues have them: attached to the entry and held by the position (Bybit
``takeProfit``, tpslMode Full: `FakeVenue` by default), and its own reduce-only order placed
once the stop is live (Binance TAKE_PROFIT_MARKET closePosition: ``supports_attached_stop=False``
with whole-position stops). Asserted against the venue's ground truth.
"""

from __future__ import annotations

from typing import Any

import anyio
import coredis
import msgspec
import pytest

from posguard.actors import ids
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.keys import Keys
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.engine import Engine
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

SYMBOL = "BTC/USDT:USDT"  # starts at 60,000; open_intent's stop is 58,800
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
BINANCE_LIKE = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, whole_position_stops=True,
                          reject_duplicate_client_ids=False)


def with_take_profit(intent_id: str, take_profit: float = 62_000.0):  # noqa: ANN201
    return msgspec.structs.replace(open_intent(intent_id), take_profit=take_profit)


async def settled(engine: Engine, state: State, within: float = 30.0) -> PositionRecord:
    """The record once it reaches ``state`` (virtual seconds; the mock clock jumps)."""
    with anyio.move_on_after(within):
        while (await engine.store.load_record(SYMBOL)).state is not state:
            await anyio.sleep(0.05)
    return await engine.store.load_record(SYMBOL)


async def cancelled(venue: FakeVenue, client_order_id: str, within: float = 30.0) -> str:
    """The order's status once it is no longer open (the record is written before its
    leftovers are cancelled: `closing.settle_closed`), or "open" after ``within``."""
    with anyio.move_on_after(within):
        while venue.truth.orders[client_order_id].status == "open":
            await anyio.sleep(0.05)
    return venue.truth.orders[client_order_id].status


async def listed(venue: FakeVenue, client_order_id: str) -> None:
    """Until the venue's open-order list (which lags) shows the order: what the audit reads."""
    with anyio.fail_after(30):
        while client_order_id not in {o.client_order_id for o in await venue.fetch_open_orders(SYMBOL)}:
            await anyio.sleep(0.05)


def watch_never_falsely_closed(engine: Engine, venue: FakeVenue) -> None:
    engine.ctx.observers.append(lambda record, _note: assert_never_falsely_closed(record, venue))


async def test_attached_take_profit_rides_on_the_entry_and_its_fill_settles_the_record(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1701, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        watch_never_falsely_closed(engine, venue)
        reply = await (await engine.submit(with_take_profit("tp-attached"))).wait()
        assert reply.outcome == "protected", reply
        position = venue.truth.position(SYMBOL)
        assert (position.stop_price, position.take_profit) == (58_800.0, 62_000.0), "both held by the position"
        assert venue.truth.open_take_profits(SYMBOL) == [], "attached: no order of its own"
        record = await engine.store.load_record(SYMBOL)
        assert (record.take_profit, record.take_profit_client_order_id) == (62_000.0, "")
        async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
            [last] = await client.xrevrange(Keys(ACCOUNT).journal, count=1)
        assert "take-profit 62000 seen on the position" in last.field_values["note"], last

        venue.set_price(SYMBOL, 62_100.0)
        record = await settled(engine, State.CLOSED_BY_TAKE_PROFIT)

        assert record.state is State.CLOSED_BY_TAKE_PROFIT, record
        assert "take-profit 0.01" in record.reason, record.reason
        assert venue.truth.position(SYMBOL) is None, "ground truth: flat"
        [exit_fill] = [e for e in venue.truth.executions if e.side == "sell"]
        assert exit_fill.by_take_profit and exit_fill.qty == 0.01
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        fields = await client.hgetall(Keys(ACCOUNT).position(SYMBOL))
    assert (fields["state"], fields["take_profit"], fields["take_profit_client_order_id"]) == (
        "closed_by_take_profit", "62000.0", ""), "plain text for redis-cli"


async def test_a_stop_out_with_an_attached_take_profit_is_closed_externally(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1702, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(with_take_profit("tp-stopped"))).wait()).outcome == "protected"
        venue.set_price(SYMBOL, 58_700.0)
        record = await settled(engine, State.CLOSED_EXTERNALLY)
        assert record.state is State.CLOSED_EXTERNALLY, "the stop, not the take-profit"
        assert venue.truth.position(SYMBOL) is None


@pytest.mark.parametrize("whole", [True, False], ids=["close-position", "sized"])
async def test_separate_take_profit_is_placed_only_after_the_stop_is_live(
    clock: IOAwareMockClock, redis_url: str, whole: bool
) -> None:
    """``close-position``: Binance's closePosition pair (the venue itself drops the stop once
    flat); ``sized``: a venue that leaves the stop armed, so the cancel is posguard's."""
    knobs = msgspec.structs.replace(BINANCE_LIKE, whole_position_stops=whole)
    async with FakeVenue(seed=1703, knobs=knobs, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        placed: list[tuple[bool, bool]] = []  # (a take-profit?, a stop live on the venue then?)
        place = venue.place_stop

        async def observed(request: StopRequest) -> Order:
            placed.append((request.take_profit, bool(venue.truth.open_stops(SYMBOL))))
            return await place(request)

        venue.place_stop = observed  # type: ignore[method-assign]
        assert (await (await engine.submit(with_take_profit("tp-order"))).wait()).outcome == "protected"
        with anyio.fail_after(10):
            while not venue.truth.open_take_profits(SYMBOL):
                await anyio.sleep(0.05)

        assert placed == [(False, False), (True, True)], "the stop first, the take-profit once it is live"
        [take_profit] = venue.truth.open_take_profits(SYMBOL)
        [stop] = venue.truth.open_stops(SYMBOL)
        assert (take_profit.side, take_profit.stop_price, take_profit.closes_position) == ("sell", 62_000.0, whole)
        assert take_profit.client_order_id == ids.take_profit_id(ACCOUNT, "tp-order", 1)
        record = await settled(engine, State.PROTECTED)
        assert record.take_profit_client_order_id == take_profit.client_order_id, "its id is in the record"
        assert venue.truth.is_protected(SYMBOL)

        venue.set_price(SYMBOL, 62_050.0)
        record = await settled(engine, State.CLOSED_BY_TAKE_PROFIT)

        assert record.state is State.CLOSED_BY_TAKE_PROFIT, record
        assert venue.truth.position(SYMBOL) is None
        assert await cancelled(venue, stop.client_order_id) == "cancelled", "the stop's leftover is cancelled"
        [exit_fill] = [e for e in venue.truth.executions if e.side == "sell"]
        assert exit_fill.client_order_id == take_profit.client_order_id and not exit_fill.by_take_profit
        assert venue.truth.open_stops(SYMBOL) == [] and venue.truth.open_take_profits(SYMBOL) == []


async def test_a_stop_fill_cancels_the_take_profit_left_over(clock: IOAwareMockClock, redis_url: str) -> None:
    # Binance's own closePosition orders expire with the position; here they do not, so the
    # cancel is posguard's (a report of a TP left armed after the stop filled, on Binance:
    # github.com/Binance-docs/Binance_Futures_python/issues/100).
    knobs = msgspec.structs.replace(BINANCE_LIKE, whole_position_stops=False)
    async with FakeVenue(seed=1704, knobs=knobs, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(with_take_profit("tp-left"))).wait()).outcome == "protected"
        with anyio.fail_after(10):
            while not venue.truth.open_take_profits(SYMBOL):
                await anyio.sleep(0.05)
        [take_profit] = venue.truth.open_take_profits(SYMBOL)

        venue.set_price(SYMBOL, 58_700.0)
        record = await settled(engine, State.CLOSED_EXTERNALLY)

        assert record.state is State.CLOSED_EXTERNALLY
        assert venue.truth.position(SYMBOL) is None
        assert await cancelled(venue, take_profit.client_order_id) == "cancelled", "no take-profit left armed"


async def test_the_audit_leaves_a_live_take_profit_alone_and_cancels_a_stray_one(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1705, knobs=BINANCE_LIKE, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(with_take_profit("tp-audited"))).wait()).outcome == "protected"
        with anyio.fail_after(10):
            while not venue.truth.open_take_profits(SYMBOL):
                await anyio.sleep(0.05)
        [own] = venue.truth.open_take_profits(SYMBOL)
        await listed(venue, own.client_order_id)

        report = await engine.auditor.run()

        assert report.findings == [], "its own record's take-profit is neither unknown nor stray"
        assert venue.truth.orders[own.client_order_id].status == "open"

        stray = ids.take_profit_id(ACCOUNT, "an-intent-long-gone", 1)  # a crash between settle and cancel
        await venue.place_stop(StopRequest(symbol=SYMBOL, side="sell", qty=0.01, stop_price=63_000.0,
                                           client_order_id=stray, whole_position=False, take_profit=True))
        await listed(venue, stray)

        report = await engine.auditor.run()

        assert [(f.kind, f.stop_client_order_id) for f in report.findings] == [("stale_stop", stray)]
        assert "take-profit" in report.findings[0].seen
        assert venue.truth.orders[stray].status == "cancelled"
        assert venue.truth.orders[own.client_order_id].status == "open", "the record's own is kept"
        assert venue.truth.is_protected(SYMBOL)


class CrashBeforeTakeProfit:
    """A store whose write ahead of the take-profit fails once, like a crash between the stop
    going live and the take-profit's id reaching Redis."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.crashed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save_record(self, record: PositionRecord, note: str = "", **kwargs: Any) -> None:
        if note.startswith("placing take-profit") and not self.crashed:
            self.crashed += 1
            raise RuntimeError("injected crash before the take-profit's write ahead")
        await self._inner.save_record(record, note, **kwargs)


async def test_a_crash_between_the_stop_and_the_take_profit_places_it_on_restart(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1706, knobs=BINANCE_LIKE, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        store = CrashBeforeTakeProfit(engine.store)
        engine.ctx.store = store  # type: ignore[assignment]
        await wait_streams_healthy(engine)
        await engine.submit(with_take_profit("tp-crash"))
        with anyio.fail_after(60):
            while not venue.truth.open_take_profits(SYMBOL):
                await anyio.sleep(0.05)

        assert store.crashed == 1, "the actor crashed once, before the take-profit was sent"
        [take_profit] = venue.truth.open_take_profits(SYMBOL)
        assert len(venue.truth.open_stops(SYMBOL)) == 1, "the stop was placed once"
        record = await settled(engine, State.PROTECTED)
        assert record.take_profit_client_order_id == take_profit.client_order_id
        assert venue.truth.is_protected(SYMBOL)


def test_posguard_open_sends_the_take_profit_as_a_strategy_would() -> None:
    from posguard.client import fields_of
    from posguard.supervisor.cli import build_parser, intent_of
    from posguard.supervisor.intake import parse_intent

    def intent_fields(args: Any) -> dict[str, str]:
        return fields_of(intent_of(args))

    args = build_parser().parse_args(["open", SYMBOL, "buy", "0.01", "--stop-price", "58800", "--take-profit", "62000",
                                      "--intent-id", "cli-tp"])
    fields = intent_fields(args)
    assert (fields["take_profit"], "take_profit_distance" in fields) == ("62000.0", False)
    assert parse_intent(fields).take_profit == 62_000.0
    args = build_parser().parse_args(["open", SYMBOL, "sell", "0.01", "--stop-distance", "0.02",
                                      "--take-profit-distance", "0.04"])
    assert parse_intent(intent_fields(args)).take_profit_distance == 0.04
    with pytest.raises(SystemExit):  # both: argparse refuses, nothing is sent
        build_parser().parse_args(["open", SYMBOL, "buy", "0.01", "--stop-price", "1", "--take-profit", "2",
                                   "--take-profit-distance", "0.1"])


async def test_an_attached_take_profit_the_position_does_not_show_is_an_alert(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1707, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        alerts: list[str] = []
        engine.ctx.alerts.append(lambda _symbol, message: alerts.append(message))
        create = venue.create_order

        async def drops_the_take_profit(request: OrderRequest) -> Order:
            return await create(msgspec.structs.replace(request, take_profit=None))

        venue.create_order = drops_the_take_profit  # type: ignore[method-assign]
        assert (await (await engine.submit(with_take_profit("tp-dropped"))).wait()).outcome == "protected"

        assert venue.truth.position(SYMBOL).take_profit is None
        assert any("does not show it" in a for a in alerts), alerts
        assert venue.truth.is_protected(SYMBOL), "the stop still guards it"
