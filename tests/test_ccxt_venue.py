"""`CcxtVenue` on Bybit, driven through real ccxt.pro against the local emulator.

Every assertion about what happened is checked against the emulator's ground truth, not
only against what the adapter returned.
"""

from __future__ import annotations

import pytest

from posguard.streams.emulators.bybit import running_emulator
from posguard.streams.venue.errors import NothingToReduce, OrderRejected, StopWouldTrigger, UnknownSymbol
from posguard.streams.venue.protocol import OrderRequest, StopRequest, Venue
from tests.emulator_fixtures import bybit_venue, loopback_network_only, truth_order  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def entry(coid: str, qty: float = 0.01, side: str = "buy", **kw: object) -> OrderRequest:
    return OrderRequest(symbol=BTC, side=side, qty=qty, client_order_id=coid, **kw)  # type: ignore[arg-type]


async def test_markets_are_usdt_linear_perpetuals_loaded_once() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        assert isinstance(venue, Venue)
        rules = await venue.load_markets()
        again = await venue.load_markets()

        assert rules == again
        assert set(rules) == {f"{b}/USDT:USDT" for b in ("BTC", "ETH", "SOL", "XRP", "AVL", "DOGE", "LINK", "BNB")}
        btc = rules[BTC]
        assert (btc.qty_step, btc.min_qty, btc.price_tick, btc.min_notional) == (0.001, 0.001, 0.1, 5.0)
        assert btc.max_qty == 500.0, "the venue's maximum order size (lotSizeFilter.maxOrderQty) is known"
        from posguard.streams.simulated import DEFAULT_MARKETS

        assert {s: r.max_qty for s, r in rules.items()} == {s: r.max_qty for s, (_, r) in DEFAULT_MARKETS.items()}
        # One server-time call (the clock offset) and the linear instruments (trading and
        # pre-launch pages): nothing else, however often markets are asked for.
        assert emu.truth()["requests"] == {"GET /v5/market/time": 1, "GET /v5/market/instruments-info": 2}
        assert abs(venue.now_ms() - __import__("time").time() * 1000) < 2000


async def test_below_minimum_and_unknown_symbols_are_refused_before_sending() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        with pytest.raises(OrderRejected) as below:
            await venue.create_order(entry("pg-min-1", qty=0.0009))
        assert below.value.code == "posguard-min-qty" and "0.001" in below.value.reason
        with pytest.raises(OrderRejected):
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.0004, stop_price=50_000, client_order_id="pg-min-s"))
        with pytest.raises(OrderRejected):
            await venue.create_order(entry("pg-min-2", qty=-1))
        for symbol in ("FOO/USDT:USDT", "BTC/USDC:USDC", "BTCUSDT"):
            with pytest.raises(UnknownSymbol):
                await venue.create_order(OrderRequest(symbol=symbol, side="buy", qty=1, client_order_id="pg-unknown"))

        assert emu.requests("POST /v5/order/create") == 0
        assert emu.truth()["orders"] == [] and emu.truth()["positions"] == {}


async def test_quantity_is_rounded_down_to_the_step_never_up() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        order = await venue.create_order(entry("pg-round", qty=0.0129))
        assert order.qty == 0.012
        assert truth_order(emu, "pg-round")["qty"] == 0.012
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.012


async def test_entry_with_client_order_id_and_attached_stop() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        sent_ms = venue.now_ms()
        ack = await venue.create_order(entry("pg-entry-1-e", stop_loss=58_000.04))

        truth = emu.truth()
        assert truth["positions"]["BTCUSDT"] == {"side": "Buy", "size": 0.01, "avg_price": 60_000.0, "stop_loss": 58_000.0}
        placed = truth_order(emu, "pg-entry-1-e")
        assert placed["status"] == "Filled" and placed["stop_loss"] == 58_000.0 and not placed["reduce_only"]
        assert ack.client_order_id == "pg-entry-1-e" and ack.order_id == placed["order_id"]
        assert ack.status == "open" and ack.filled == 0.0  # Bybit acknowledges with ids only

        found = await venue.fetch_order(BTC, "pg-entry-1-e")
        assert found is not None
        assert (found.status, found.filled, found.avg_price, found.kind) == ("filled", 0.01, 60_000.0, "market")
        [position] = await venue.fetch_positions()
        assert (position.symbol, position.side, position.size, position.entry_price) == (BTC, "long", 0.01, 60_000.0)
        assert position.stop_price == 58_000.0 and position.ts_ms >= sent_ms
        [fill] = await venue.fetch_executions(BTC, sent_ms)
        [true_fill] = truth["executions"]
        assert (fill.exec_id, fill.client_order_id, fill.qty, fill.price) == (true_fill["exec_id"], "pg-entry-1-e", 0.01, 60_000.0)


async def test_fetch_order_by_client_order_id_open_closed_or_unknown() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        # "Unknown" only after both books say so.
        assert await venue.fetch_order(BTC, "pg-never-sent") is None
        assert (emu.requests("GET /v5/order/realtime"), emu.requests("GET /v5/order/history")) == (1, 1)
        await venue.create_order(entry("pg-lookup-e"))
        found = await venue.fetch_order(BTC, "pg-lookup-e")
        assert found is not None and found.status == "filled"
        assert emu.requests("GET /v5/order/history") == 1  # the realtime list had it
        # After a Bybit restart the realtime list forgets closed orders; history still has them.
        emu.engine.recent_closed_limit = 0
        found = await venue.fetch_order(BTC, "pg-lookup-e")
        assert found is not None and found.status == "filled" and found.filled == 0.01
        assert emu.requests("GET /v5/order/history") == 2


async def test_place_stop_list_it_and_cancel_it() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        await venue.create_order(entry("pg-stop-e"))
        stop = await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000.03, client_order_id="pg-stop-s1"))

        armed = truth_order(emu, "pg-stop-s1")
        assert armed["status"] == "Untriggered" and armed["reduce_only"]
        assert (armed["trigger_price"], armed["trigger_direction"], armed["side"]) == (57_000.0, 2, "Sell")
        assert (stop.kind, stop.status, stop.stop_price, stop.reduce_only) == ("stop", "open", 57_000.0, True)
        [listed] = await venue.fetch_open_orders()
        assert (listed.client_order_id, listed.kind, listed.status, listed.stop_price) == ("pg-stop-s1", "stop", "open", 57_000.0)
        assert await venue.fetch_open_orders(BTC) == [listed] and await venue.fetch_open_orders(ETH) == []

        cancelled = await venue.cancel_order(BTC, "pg-stop-s1")
        assert cancelled is not None and cancelled.status == "cancelled"
        assert truth_order(emu, "pg-stop-s1")["status"] == "Deactivated"
        assert await venue.fetch_open_orders() == []
        assert await venue.cancel_order(BTC, "pg-stop-s1") is None
        assert await venue.cancel_order(BTC, "pg-never-placed") is None


async def test_stop_triggers_when_the_price_crosses_it() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        await venue.create_order(entry("pg-trig-e", qty=0.02))
        await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.02, stop_price=59_000, client_order_id="pg-trig-s1"))
        emu.engine.set_price("BTCUSDT", 59_500)
        assert truth_order(emu, "pg-trig-s1")["status"] == "Untriggered"
        emu.engine.set_price("BTCUSDT", 58_800)

        assert emu.truth()["positions"] == {}
        assert truth_order(emu, "pg-trig-s1")["status"] == "Filled"
        stop = await venue.fetch_order(BTC, "pg-trig-s1")
        assert stop is not None and (stop.status, stop.filled, stop.avg_price) == ("filled", 0.02, 58_800.0)
        assert await venue.fetch_positions() == []
        ten_days_ago = venue.now_ms() - 10 * 86_400_000  # Bybit lists 7 days per query: two windows
        fills = await venue.fetch_executions(BTC, ten_days_ago)
        assert [(f.client_order_id, f.side, f.qty, f.price) for f in fills] == [
            ("pg-trig-e", "buy", 0.02, 60_000.0), ("pg-trig-s1", "sell", 0.02, 58_800.0)
        ]


async def test_positions_open_orders_and_executions_map_every_side() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        t0 = venue.now_ms()
        await venue.create_order(OrderRequest(symbol=ETH, side="sell", qty=0.5, client_order_id="pg-eth-e", stop_loss=3_100))
        await venue.create_order(entry("pg-btc-e", qty=0.01))
        await venue.create_order(OrderRequest(symbol=ETH, side="buy", qty=0.2, client_order_id="pg-eth-c0", reduce_only=True))
        emu.engine.set_price("BTCUSDT", 61_000)
        await venue.create_order(entry("pg-btc-e2", qty=0.01))

        truth = emu.truth()["positions"]
        positions = {p.symbol: p for p in await venue.fetch_positions()}
        assert positions[ETH].side == "short" and positions[ETH].size == pytest.approx(truth["ETHUSDT"]["size"]) == 0.3
        assert positions[ETH].stop_price == 3_100.0
        assert positions[BTC].side == "long" and positions[BTC].size == 0.02
        assert positions[BTC].entry_price == pytest.approx(truth["BTCUSDT"]["avg_price"]) == pytest.approx(60_500.0)
        assert positions[BTC].stop_price is None

        eth = await venue.fetch_executions(ETH, t0)
        assert [(e.client_order_id, e.side, e.qty) for e in eth] == [("pg-eth-e", "sell", 0.5), ("pg-eth-c0", "buy", 0.2)]
        assert [e.ts_ms for e in eth] == sorted(e.ts_ms for e in eth)
        assert await venue.fetch_executions(ETH, venue.now_ms() + 60_000) == []

        closing = await venue.fetch_order(ETH, "pg-eth-c0")
        assert closing is not None and closing.reduce_only and closing.status == "filled"
        await venue.create_order(OrderRequest(symbol=ETH, side="buy", qty=1.0, client_order_id="pg-eth-c1", reduce_only=True))
        # A reduce-only quantity above the position is cut to it, never flips it.
        assert "ETHUSDT" not in emu.truth()["positions"]
        assert truth_order(emu, "pg-eth-c1")["qty"] == pytest.approx(0.3)
        assert {p.symbol for p in await venue.fetch_positions()} == {BTC}


async def test_one_symbols_positions_are_asked_of_bybit_for_that_symbol_alone() -> None:
    """An actor's fallback asks ``GET /v5/position/list?symbol=``: one row, never the account's list."""
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        await venue.create_order(entry("pg-one-btc", qty=0.01))
        await venue.create_order(OrderRequest(symbol=ETH, side="sell", qty=0.5, client_order_id="pg-one-eth"))

        [btc] = await venue.fetch_positions(BTC)
        assert (btc.symbol, btc.side, btc.size, btc.entry_price) == (BTC, "long", 0.01, 60_000.0)
        assert await venue.fetch_positions("SOL/USDT:USDT") == []  # never traded: Bybit's flat row
        assert {p.symbol for p in await venue.fetch_positions()} == {BTC, ETH}
        assert emu.position_lists() == {"BTCUSDT": 1, "SOLUSDT": 1, "": 1}
        with pytest.raises(UnknownSymbol):
            await venue.fetch_positions("FOO/USDT:USDT")
        assert emu.requests("GET /v5/position/list") == 3, "an unknown symbol is refused before asking"


async def test_refusals_that_change_what_the_actor_does() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        with pytest.raises(NothingToReduce) as nothing:
            await venue.create_order(entry("pg-ro-c0", side="sell", reduce_only=True))
        assert nothing.value.code == "110017"
        await venue.create_order(entry("pg-sl-e"))
        with pytest.raises(StopWouldTrigger) as through:
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=61_000, client_order_id="pg-sl-s1"))
        assert through.value.code == "110093"
        with pytest.raises(OrderRejected) as wrong_side:
            await venue.create_order(entry("pg-sl-e2", stop_loss=61_000))
        assert wrong_side.value.code == "10001" and not isinstance(wrong_side.value, StopWouldTrigger)
        statuses = {o["order_link_id"]: o["status"] for o in emu.truth()["orders"]}
        assert statuses == {"pg-sl-e": "Filled"}


async def test_a_liquidation_is_listed_among_the_executions() -> None:
    # ccxt's fetch_my_trades would ask for execType=Trade only and hide it.
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        since = venue.now_ms()
        await venue.create_order(entry("pg-liq-e"))
        emu.engine.set_price("BTCUSDT", 54_000)
        emu.engine.liquidate("BTCUSDT")

        assert emu.truth()["positions"] == {}
        assert [e["exec_type"] for e in emu.truth()["executions"]] == ["Trade", "BustTrade"]
        fills = await venue.fetch_executions(BTC, since)
        assert [(f.client_order_id, f.side, f.qty, f.price) for f in fills] == [
            ("pg-liq-e", "buy", 0.01, 60_000.0), ("", "sell", 0.01, 54_000.0)
        ]


async def test_last_price_comes_from_the_ticker() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        assert await venue.fetch_price("ETH/USDT:USDT") == 3_000.0
        emu.engine.set_price("ETHUSDT", 3_100.5)
        assert await venue.fetch_price("ETH/USDT:USDT") == 3_100.5
        with pytest.raises(UnknownSymbol):
            await venue.fetch_price("NOPE/USDT:USDT")
