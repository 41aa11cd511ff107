"""`CcxtVenue` on Binance USD-M, through real ccxt, against recorded payloads.

REST: a replay server on 127.0.0.1 answers ccxt's real HTTP requests with recorded payloads,
so both what ccxt asks (paths, client order ids, reduce-only, trigger prices) and how the
adapter reads the answers are checked. User data stream: recorded events go through the
hooked exchange's own ``handle_message``, as they would arrive from the socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig
from posguard.streams.ccxt_adapter.mapping import CcxtDict, to_execution, to_order, to_position
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToReduce,
    OrderRejected,
    RateLimited,
    StopSlotTaken,
    StopWouldTrigger,
    VenueUnavailable,
)
from posguard.streams.venue.events import Topic
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from tests import binance_recorded as rec
from tests.binance_recorded import BinanceReplay, error
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


@asynccontextmanager
async def binance() -> AsyncIterator[tuple[BinanceReplay, CcxtVenue]]:
    replay = BinanceReplay()
    await replay.start()
    config = CcxtVenueConfig(
        exchange="binanceusdm", environment="live", rest_url=f"http://{replay.base}", ws_url=f"ws://{replay.base}",
        loopback_only=True, throttle=False, request_timeout=5.0,
    )
    venue = CcxtVenue(config, ApiCredentials(rec.API_KEY, rec.API_SECRET))
    try:
        await venue.load_markets()
        yield replay, venue
    finally:
        await venue.aclose()
        await replay.stop()


async def test_markets_are_usdt_perpetuals_with_the_market_order_minimum() -> None:
    async with binance() as (replay, venue):
        rules = await venue.load_markets()
        assert set(rules) == {BTC, ETH}  # not the USDC perpetual, not the quarterly
        assert (rules[BTC].qty_step, rules[BTC].min_qty, rules[BTC].price_tick, rules[BTC].min_notional) == (0.001, 0.001, 0.1, 100.0)
        assert rules[ETH].min_qty == 0.002  # MARKET_LOT_SIZE is stricter than LOT_SIZE
        assert rules[BTC].max_qty == 120.0  # MARKET_LOT_SIZE's maxQty, smaller than LOT_SIZE's 1000
        assert [(m, p) for m, p, _, _ in replay.seen] == [("GET", "/fapi/v1/exchangeInfo"), ("GET", "/fapi/v1/time")]


async def test_entry_is_a_market_order_with_the_client_order_id_and_no_attached_stop() -> None:
    async with binance() as (replay, venue):
        assert not venue.supports_attached_stop
        with pytest.raises(OrderRejected) as refused:
            await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="pgbinance-e", stop_loss=57_000))
        assert refused.value.code == "posguard-no-attached-stop"
        with pytest.raises(OrderRejected):
            await venue.create_order(OrderRequest(symbol=ETH, side="buy", qty=0.001, client_order_id="pg-small"))
        assert replay.requests("POST", "/fapi/v1/order") == []

        replay.answer("POST", "/fapi/v1/order", rec.ORDER_NEW)
        order = await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="pgbinance-e"))
        [sent] = replay.requests("POST", "/fapi/v1/order")
        assert (sent["symbol"], sent["side"], sent["type"], sent["quantity"]) == ("BTCUSDT", "BUY", "MARKET", "0.01")
        assert sent["newClientOrderId"] == "pgbinance-e" and "reduceOnly" not in sent and "signature" in sent
        [headers] = [h for m, p, _, h in replay.seen if p == "/fapi/v1/order"]
        assert headers["X-MBX-APIKEY"] == rec.API_KEY
        assert (order.order_id, order.client_order_id, order.status, order.filled, order.kind) == (
            "4078112847", "pgbinance-e", "open", 0.0, "market"
        )


async def test_stop_goes_to_the_algo_order_api_with_close_position() -> None:
    """What ccxt 4.5.90 sends for posguard's stop, pinned field for field: STOP_MARKET through
    ``POST /fapi/v1/algoOrder`` with closePosition=true and neither quantity nor reduceOnly
    (Binance's New Algo Order page: neither may be sent with closePosition=true)."""
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/algoOrder", rec.ALGO_CLOSE_POSITION)
        stop = await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000.04, client_order_id="pgbinance-s1"))
        [sent] = replay.requests("POST", "/fapi/v1/algoOrder")
        assert replay.requests("POST", "/fapi/v1/order") == []
        assert {k: v for k, v in sent.items() if k not in ("timestamp", "signature", "recvWindow")} == {
            "symbol": "BTCUSDT", "side": "SELL", "algoType": "CONDITIONAL", "type": "STOP_MARKET",
            "clientAlgoId": "pgbinance-s1", "triggerPrice": "57000", "workingType": "MARK_PRICE",
            "closePosition": "true", "newOrderRespType": "RESULT",
        }
        assert (stop.kind, stop.status, stop.stop_price, stop.order_id, stop.closes_position) == (
            "stop", "open", 57_000.0, "2146760", True
        )


async def test_a_sized_stop_is_reduce_only_with_its_quantity() -> None:
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/algoOrder", rec.ALGO_NEW)
        stop = await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000,
                                                  client_order_id="pgbinance-s1", whole_position=False))
        [sent] = replay.requests("POST", "/fapi/v1/algoOrder")
        assert (sent["algoType"], sent["type"], sent["side"], sent["triggerPrice"]) == ("CONDITIONAL", "STOP_MARKET", "SELL", "57000")
        assert (sent["reduceOnly"], sent["quantity"], sent["clientAlgoId"], sent["workingType"]) == ("true", "0.01", "pgbinance-s1", "MARK_PRICE")
        assert "closePosition" not in sent
        assert (stop.kind, stop.status, stop.reduce_only, stop.qty, stop.closes_position) == ("stop", "open", True, 0.01, False)


async def test_a_second_close_position_stop_is_refused_as_the_slot_taken() -> None:
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/algoOrder", error(
            -4130, "An open stop or take profit order with GTE and closePosition in the direction is existing."))
        with pytest.raises(StopSlotTaken) as refused:
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="pgbinance-s2"))
        assert refused.value.code == "-4130" and isinstance(refused.value, OrderRejected)


async def test_lookup_asks_the_order_book_then_the_algo_book_before_saying_unknown() -> None:
    async with binance() as (replay, venue):
        unknown = error(-2013, "Order does not exist.")
        replay.answer("GET", "/fapi/v1/order", unknown, rec.ORDER_FILLED, unknown)
        replay.answer("GET", "/fapi/v1/algoOrder", rec.ALGO_TRIGGERED, error(-20124, "Invalid algo id or it has been completed."))

        stop = await venue.fetch_order(BTC, "pgbinance-s1")
        assert stop is not None and (stop.kind, stop.status, stop.stop_price) == ("stop", "filled", 57_000.0)
        entry = await venue.fetch_order(BTC, "pgbinance-e")
        assert entry is not None and (entry.status, entry.filled, entry.avg_price) == ("filled", 0.01, 60_012.3)
        assert await venue.fetch_order(BTC, "pg-nowhere") is None
        asked = replay.requests("GET", "/fapi/v1/order")
        assert [q["origClientOrderId"] for q in asked] == ["pgbinance-s1", "pgbinance-e", "pg-nowhere"]
        assert [q["clientAlgoId"] for q in replay.requests("GET", "/fapi/v1/algoOrder")] == ["pgbinance-s1", "pg-nowhere"]


async def test_a_market_order_cut_short_is_cancelled_with_its_partial_fill() -> None:
    async with binance() as (replay, venue):
        replay.answer("GET", "/fapi/v1/order", rec.ORDER_PARTIAL_EXPIRED)
        order = await venue.fetch_order(BTC, "pgbinance-e")
        assert order is not None and (order.status, order.filled, order.is_final) == ("cancelled", 0.004, True)


async def test_one_symbols_positions_are_asked_with_its_symbol() -> None:
    """ccxt filters Binance's whole list itself; posguard passes ``symbol`` to positionRisk
    (Position-Information-V3 takes it): one row, never the account's list."""
    async with binance() as (replay, venue):
        replay.answer("GET", "/fapi/v3/positionRisk", [r for r in rec.POSITION_RISK_V3 if r["symbol"] == "BTCUSDT"])
        [btc] = await venue.fetch_positions(BTC)
        assert (btc.symbol, btc.side, btc.size) == (BTC, "long", 0.01)
        assert [q.get("symbol") for q in replay.requests("GET", "/fapi/v3/positionRisk")] == ["BTCUSDT"]
        assert [p for _, p, _, _ in replay.seen if "leverage" in p.lower()] == []


async def test_positions_open_orders_and_executions() -> None:
    async with binance() as (replay, venue):
        replay.answer("GET", "/fapi/v3/positionRisk", rec.POSITION_RISK_V3)
        replay.answer("GET", "/fapi/v1/openOrders", [rec.ORDER_NEW])
        replay.answer("GET", "/fapi/v1/openAlgoOrders", [rec.ALGO_NEW])
        replay.answer("POST", "/fapi/v1/order", rec.ORDER_NEW)
        replay.answer("GET", "/fapi/v1/userTrades", rec.USER_TRADES)

        positions = {p.symbol: p for p in await venue.fetch_positions()}
        assert set(positions) == {BTC, ETH}
        assert (positions[BTC].side, positions[BTC].size, positions[BTC].entry_price) == ("long", 0.01, 60_012.3)
        assert (positions[ETH].side, positions[ETH].size, positions[ETH].stop_price) == ("short", 0.5, None)
        assert positions[BTC].ts_ms == 1764000000125
        # Binance: a mark price, "0" for no liquidation price (cross margin, well covered), no seq.
        assert (positions[BTC].mark_price, positions[BTC].liq_price, positions[BTC].seq) == (60_100.0, None, 0)

        orders = await venue.fetch_open_orders()
        assert sorted((o.client_order_id, o.kind) for o in orders) == [("pgbinance-e", "market"), ("pgbinance-s1", "stop")]

        # userTrades carries only Binance's order id; the adapter knows which of ours it was.
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="pgbinance-e"))
        fills = await venue.fetch_executions(BTC, 1764000000000)
        assert [(f.client_order_id, f.side, f.qty, f.price) for f in fills] == [
            ("pgbinance-e", "buy", 0.01, 60_012.3), ("", "sell", 0.01, 57_000.0)
        ]
        [asked] = replay.requests("GET", "/fapi/v1/userTrades")
        assert (asked["symbol"], asked["startTime"]) == ("BTCUSDT", "1764000000000")
        assert "/fapi/v1/leverageBracket" not in {p for _, p, _, _ in replay.seen}


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        (error(-4116, "ClientOrderId is duplicated."), DuplicateClientOrderId),
        (error(-2022, "ReduceOnly Order is rejected."), NothingToReduce),
        (error(-2019, "Margin is insufficient."), OrderRejected),
        (error(-4164, "Order's notional must be no smaller than 100 (unless you choose reduce only)."), OrderRejected),
        (error(-1003, "Too many requests; current limit is 2400 requests per minute.", status=429), RateLimited),
        (error(-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown.", status=408), VenueUnavailable),
        ((503, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}), VenueUnavailable),
    ],
)
async def test_binance_errors_become_posguard_errors(answer: tuple[int, Any], raised: type[Exception]) -> None:
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/order", answer)
        with pytest.raises(raised) as caught:
            await venue.create_order(OrderRequest(symbol=BTC, side="sell", qty=0.01, client_order_id="pgbinance-c0", reduce_only=True))
        assert type(caught.value) is raised
        assert rec.API_KEY not in str(caught.value) and rec.API_SECRET not in str(caught.value)
        [sent] = replay.requests("POST", "/fapi/v1/order")
        assert sent["reduceOnly"] == "true"


async def test_a_stop_through_the_market_would_trigger() -> None:
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/algoOrder", error(-2021, "Order would immediately trigger."))
        with pytest.raises(StopWouldTrigger):
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=61_000, client_order_id="pgbinance-s2"))


class Heard:
    """A `PrivateListener` that keeps what the hooked exchange hands over."""

    def __init__(self) -> None:
        self.ready: list[Topic] = []
        self.orders: list[CcxtDict] = []
        self.trades: list[tuple[CcxtDict, str]] = []
        self.positions: list[CcxtDict] = []
        self.expired = 0

    def on_ready(self, topic: Topic, client: Any) -> None:
        self.ready.append(topic)

    def on_order(self, order: CcxtDict) -> None:
        self.orders.append(order)

    def on_trade(self, trade: CcxtDict, client_order_id: str) -> None:
        self.trades.append((trade, client_order_id))

    def on_position(self, position: CcxtDict) -> None:
        self.positions.append(position)

    def on_listen_key_expired(self) -> None:
        self.expired += 1


async def test_user_data_stream_events_map_through_the_hooks() -> None:
    async with binance() as (replay, venue):
        exchange = venue.exchange  # the hooked ccxt.pro instance, fed as its socket would feed it
        heard = Heard()
        exchange.posguard_listener = heard
        client = exchange.client(f"ws://{replay.base}/private/ws?listenKey=recorded-listen-key")
        client.subscriptions["linear"] = True
        exchange.set_balance_cache(client, "linear")  # what watch_orders() sets up before listening
        exchange.set_positions_cache(client, "linear")
        exchange.on_connected(client)
        assert sorted(heard.ready) == ["executions", "orders", "positions"]

        for event in (rec.ORDER_TRADE_UPDATE_FILL, rec.ALGO_UPDATE_NEW, rec.ACCOUNT_UPDATE):
            exchange.handle_message(client, event)

        now = venue.now_ms()
        fill_order, stop = (to_order(o, now_ms=now) for o in heard.orders)
        assert (fill_order.client_order_id, fill_order.status, fill_order.filled, fill_order.avg_price) == (
            "pgbinance-e", "filled", 0.01, 60_012.3
        )
        assert (stop.client_order_id, stop.kind, stop.status, stop.stop_price, stop.reduce_only) == (
            "pgbinance-s1", "stop", "open", 57_000.0, True
        )
        [(trade, coid)] = heard.trades
        fill = to_execution(trade, client_order_id=coid, now_ms=now)
        assert (fill.exec_id, fill.order_id, fill.client_order_id, fill.qty, fill.price, fill.ts_ms) == (
            "698759", "4078112847", "pgbinance-e", 0.01, 60_012.3, 1764000000120
        )
        btc, eth = (to_position(p, now_ms=now) for p in heard.positions)
        assert (btc.symbol, btc.side, btc.size, btc.entry_price, btc.ts_ms) == (BTC, "long", 0.01, 60_012.3, 1764000000122)
        assert (eth.symbol, eth.side, eth.size) == (ETH, "flat", 0.0)


@pytest.mark.parametrize(
    ("algo_status", "status"),
    [
        # Binance's algo statuses (Query Algo Order, ALGO_UPDATE ``X``), read through ccxt's
        # parse_order_status, in posguard's terms.
        ("NEW", "open"),  # armed
        ("TRIGGERING", "open"),  # triggered, its market order being sent: still in force
        ("TRIGGERED", "filled"),  # fired: its fill belongs to the order it spawned
        ("FINISHED", "filled"),  # fired and done
        ("CANCELED", "cancelled"),
        ("EXPIRED", "cancelled"),  # a closePosition stop: Binance cancelled it, the position closed otherwise
        ("REJECTED", "rejected"),
    ],
)
async def test_algo_statuses_in_posguard_terms(algo_status: str, status: str) -> None:
    async with binance() as (replay, venue):
        replay.answer("GET", "/fapi/v1/order", error(-2013, "Order does not exist."))
        replay.answer("GET", "/fapi/v1/algoOrder", rec.ALGO_CLOSE_POSITION | {"algoStatus": algo_status})
        stop = await venue.fetch_order(BTC, "pgbinance-s1")
        assert stop is not None
        assert (stop.kind, stop.status, stop.client_order_id, stop.closes_position) == ("stop", status, "pgbinance-s1", True)
        [asked] = replay.requests("GET", "/fapi/v1/algoOrder")
        assert (asked["clientAlgoId"], asked.get("symbol")) == ("pgbinance-s1", "BTCUSDT")


async def test_a_stop_is_cancelled_by_its_client_algo_id_through_the_algo_endpoint() -> None:
    async with binance() as (replay, venue):
        replay.answer("DELETE", "/fapi/v1/order", error(-2011, "Unknown order sent."))
        # Cancel Algo Order's answer: ids and a result only.
        replay.answer("DELETE", "/fapi/v1/algoOrder", {"algoId": 2146760, "clientAlgoId": "pgbinance-s1", "code": "200", "msg": "success"})
        replay.answer("GET", "/fapi/v1/order", error(-2013, "Order does not exist."))
        replay.answer("GET", "/fapi/v1/algoOrder", rec.ALGO_CLOSE_POSITION | {"algoStatus": "CANCELED"})
        cancelled = await venue.cancel_order(BTC, "pgbinance-s1")
        assert cancelled is not None and (cancelled.status, cancelled.kind) == ("cancelled", "stop")
        [plain] = replay.requests("DELETE", "/fapi/v1/order")
        [algo] = replay.requests("DELETE", "/fapi/v1/algoOrder")
        assert plain["origClientOrderId"] == "pgbinance-s1"
        assert (algo["clientAlgoId"], algo["symbol"]) == ("pgbinance-s1", "BTCUSDT") and "algoId" not in algo


async def test_open_orders_include_the_close_position_stops_of_the_algo_book() -> None:
    async with binance() as (replay, venue):
        replay.answer("GET", "/fapi/v1/openOrders", [])
        replay.answer("GET", "/fapi/v1/openAlgoOrders", [rec.ALGO_CLOSE_POSITION])
        [stop] = await venue.fetch_open_orders(BTC)
        assert (stop.client_order_id, stop.kind, stop.status, stop.qty, stop.closes_position) == (
            "pgbinance-s1", "stop", "open", 0.0, True)
        [asked] = replay.requests("GET", "/fapi/v1/openAlgoOrders")
        assert asked["symbol"] == "BTCUSDT"
