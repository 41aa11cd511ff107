"""The msgspec frame decoder against ccxt, the reference: the same frames decoded both ways.

Each frame is handed to the hooked exchange's WebSocket client the way its socket reader does
(``Client.handle_text_or_binary_message``): once with the decoder switched off (ccxt's JSON
parse, its handler, posguard's hook and `mapping`: the path before the decoder existed), once
with it on; the events must be equal field by field, and the frame must have been taken by the
decoder (not quietly handed to ccxt). Frames: Bybit V5 in the emulator's shape (built after
https://bybit-exchange.github.io/docs/v5/websocket/private/order, ``.../execution``,
``.../position``) in every state posguard meets, with Bybit's own examples of those pages;
Binance's recorded user-data events (``tests/binance_recorded.py``) and the emulator's.

Poison frames (malformed JSON, unknown topics, fields of the wrong type, error envelopes,
items ccxt cannot map) must neither stop the stream nor produce an event ccxt would not:
they go to ccxt, which handles them as it always did.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from posguard.streams.ccxt_adapter.mapping import CcxtDict, is_usdt_linear_perpetual, to_execution, to_order, to_position
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.binance import payloads as binance_payloads
from posguard.streams.emulators.bybit.payloads import execution_payload, order_payload, position_payload
from posguard.streams.emulators.engine.matching import EmuExecution, EmuOrder, EmuPosition
from posguard.streams.simulated import synthetic_markets
from posguard.streams.venue.events import Order, Topic, VenueEvent
from tests import binance_recorded as rec
from tests.bench.bench_ingest import instrument, offline_bybit
from tests.test_ccxt_binance import binance
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

NOW = 1_764_000_999_999


class Recorder:
    """A `PrivateListener` mapping what it hears exactly as `PrivateStream` does, and keeping
    the events of the markets posguard trades (`PrivateStream._emit`'s filter)."""

    def __init__(self, traded: frozenset[str] = frozenset()) -> None:
        self.events: list[VenueEvent] = []
        self.traded = traded

    def on_ready(self, topic: Topic, client: Any) -> None:
        pass

    def on_order(self, order: CcxtDict) -> None:
        self.on_event(to_order(order, now_ms=NOW))

    def on_trade(self, trade: CcxtDict, client_order_id: str) -> None:
        self.on_event(to_execution(trade, client_order_id=client_order_id, now_ms=NOW))

    def on_position(self, position: CcxtDict) -> None:
        self.on_event(to_position(position, now_ms=NOW))

    def on_listen_key_expired(self) -> None:
        pass

    def on_event(self, event: VenueEvent) -> None:
        if not self.traded or getattr(event, "symbol", None) in self.traded:
            self.events.append(event)

    def now_ms(self) -> int:
        return NOW


def both_ways(exchange: Any, client: Any, frame: str) -> tuple[list[VenueEvent], list[VenueEvent], bool]:
    """(ccxt's events, the decoder's events, whether the decoder took the frame)."""
    recorder = Recorder(traded=frozenset(m["symbol"] for m in exchange.markets.values() if is_usdt_linear_perpetual(m)))
    exchange.posguard_listener = recorder
    decoder = type(exchange).posguard_decoder
    exchange.posguard_decoder = None
    try:
        client.handle_text_or_binary_message(frame)
    finally:
        exchange.posguard_decoder = decoder
    reference, recorder.events = recorder.events, []
    taken = exchange.posguard_fast_frames
    client.handle_text_or_binary_message(frame)
    exchange.posguard_listener = None
    return reference, recorder.events, exchange.posguard_fast_frames > taken


def same(reference: list[VenueEvent], fast: list[VenueEvent], frame: str = "") -> None:
    """Field by field; a price ccxt computes by decimal division (cost / filled) may differ in
    the last binary digit only."""
    assert [type(e) for e in fast] == [type(e) for e in reference], frame
    for ours, theirs in zip(fast, reference, strict=True):
        for name in theirs.__struct_fields__:
            mine, ref = getattr(ours, name), getattr(theirs, name)
            if isinstance(ref, float) and isinstance(mine, float):
                assert mine == pytest.approx(ref, rel=1e-12, abs=0), (name, ours, theirs)
            else:
                assert mine == ref, (name, ours, theirs)


# -- Bybit ----------------------------------------------------------------------------------


def bybit_frame(topic: str, *items: dict[str, Any]) -> str:
    return json.dumps({"id": "f1", "topic": topic, "creationTime": NOW, "data": list(items)})


def bybit_orders(inst: Any) -> list[dict[str, Any]]:
    """An entry and a stop in every status posguard meets, buy and sell."""
    frames = []
    for side in ("Buy", "Sell"):
        for status, cum in (("New", 0.0), ("PartiallyFilled", 0.4), ("Filled", 1.0), ("Cancelled", 0.0),
                            ("PartiallyFilledCanceled", 0.4), ("Rejected", 0.0)):
            entry = EmuOrder(order_id="o-1", link_id="pg-e1", symbol=inst.symbol, side=side, qty=1.0,
                             reduce_only=False, close_on_trigger=False, created_ms=NOW - 9, updated_ms=NOW - 5,
                             status=status, cum_qty=cum, cum_value=cum * 10.123, stop_loss=9.8 if side == "Buy" else 0.0,
                             last_price_on_created=10.0)
            frames.append(order_payload(entry, inst))
        for status in ("Untriggered", "Triggered", "Deactivated", "Filled"):
            stop = EmuOrder(order_id="o-2", link_id="pg-s1", symbol=inst.symbol, side=side, qty=1.0, reduce_only=True,
                            close_on_trigger=True, created_ms=NOW - 9, updated_ms=NOW - 1, status=status,
                            cum_qty=1.0 if status == "Filled" else 0.0, cum_value=9.8 if status == "Filled" else 0.0,
                            trigger_price=9.8, trigger_direction=2 if side == "Sell" else 1, stop_order_type="Stop",
                            last_price_on_created=10.0)
            frames.append(order_payload(stop, inst))
    return frames


def bybit_docs_examples() -> list[tuple[str, dict[str, Any]]]:
    """The examples of Bybit's V5 pages (order, execution, position), symbol set to ours."""
    order = {
        "symbol": "S0000USDT", "orderId": "5cf98598-39a7-459e-97bf-76ca765ee020", "side": "Sell", "orderType": "Market",
        "cancelType": "UNKNOWN", "price": "72.5", "qty": "1", "orderIv": "", "timeInForce": "IOC",
        "orderStatus": "Filled", "orderLinkId": "", "lastPriceOnCreated": "", "reduceOnly": False, "leavesQty": "",
        "leavesValue": "", "cumExecQty": "1", "cumExecValue": "75", "avgPrice": "75", "blockTradeId": "",
        "positionIdx": 0, "cumExecFee": "0.358635", "closedPnl": "0", "createdTime": "1672364262444",
        "updatedTime": "1672364262457", "rejectReason": "EC_NoError", "stopOrderType": "", "tpslMode": "",
        "triggerPrice": "", "takeProfit": "", "stopLoss": "", "tpTriggerBy": "", "slTriggerBy": "",
        "tpLimitPrice": "", "slLimitPrice": "", "triggerDirection": 0, "triggerBy": "", "closeOnTrigger": False,
        "category": "linear", "placeType": "", "smpType": "None", "smpGroup": 0, "smpOrderId": "",
        "feeCurrency": "", "cumFeeDetail": {"USDT": "0.358635"},
    }
    execution = {
        "category": "linear", "symbol": "S0000USDT", "closedSize": "0.5", "execFee": "26.3725275", "execId":
        "0ab1bdf7-4219-438b-b30a-32ec863018f7", "execPrice": "95900.1", "execQty": "0.5", "execType": "Trade",
        "execValue": "47950.05", "feeRate": "0.00055", "tradeIv": "", "markIv": "", "blockTradeId": "",
        "markPrice": "95901.48", "indexPrice": "", "underlyingPrice": "", "leavesQty": "0", "orderId":
        "9aac161b-8ed6-450d-9cab-c5cc67c21784", "orderLinkId": "", "orderPrice": "94942.5", "orderQty": "0.5",
        "orderType": "Market", "stopOrderType": "UNKNOWN", "side": "Sell", "execTime": "1746270400353",
        "isLeverage": "0", "isMaker": False, "seq": 4688002127, "marketUnit": "", "execPnl": "0.05",
        "createType": "CreateByUser", "extraFees": [], "feeCurrency": "USDT",
    }
    position = {
        "positionIdx": 0, "tradeMode": 0, "riskId": 1, "riskLimitValue": "2000000", "symbol": "S0000USDT",
        "side": "Buy", "size": "0.001", "entryPrice": "72847.2", "sessionAvgPrice": "", "leverage": "10",
        "positionValue": "72.8472", "positionBalance": "0", "markPrice": "72822.5", "positionIM": "7.28472",
        "positionIMByMp": "7.28225", "positionMM": "0.36423", "positionMMByMp": "0.36411",
        "takeProfit": "0", "stopLoss": "0", "trailingStop": "0", "unrealisedPnl": "-0.0247",
        "curRealisedPnl": "-0.0400664", "cumRealisedPnl": "-0.0400664", "createdTime": "1676538056258",
        "updatedTime": "1697673600012", "tpslMode": "Full", "liqPrice": "", "bustPrice": "", "category": "linear",
        "positionStatus": "Normal", "adlRankIndicator": 2, "autoAddMargin": 0, "leverageSysUpdatedTime": "",
        "mmrSysUpdatedTime": "", "seq": 8172241024, "isReduceOnly": False,
    }
    return [("order", order), ("execution", execution), ("position", position)]


@asynccontextmanager
async def bybit() -> AsyncIterator[tuple[CcxtVenue, Any, Any, list[Any]]]:
    instruments = [instrument(s) for s in synthetic_markets(3)]
    venue, exchange = offline_bybit(instruments)
    try:
        await venue.load_markets()
        client = exchange.client(exchange.implode_hostname(exchange.urls["api"]["ws"]["private"]["contract"]))
        yield venue, exchange, client, instruments
    finally:
        await venue.aclose()


def bybit_frames(instruments: list[Any]) -> list[str]:
    inst, other = instruments[0], instruments[1]
    frames = [bybit_frame("order", item) for item in bybit_orders(inst)]
    frames.append(bybit_frame("order", *bybit_orders(other)[:3]))  # several items in one frame
    entry = EmuOrder(order_id="o-1", link_id="pg-e1", symbol=inst.symbol, side="Buy", qty=1.0, reduce_only=False,
                     close_on_trigger=False, created_ms=NOW - 9, updated_ms=NOW - 5, status="Filled", cum_qty=1.0,
                     cum_value=10.0)
    for exec_type in ("Trade", "AdlTrade", "BustTrade", "Funding", "Settle"):
        fill = EmuExecution(exec_id=f"x-{exec_type}", order=entry, side="Buy", price=10.0, qty=1.0,
                            exec_type=exec_type, time_ms=NOW - 4, closed_size=0.0, leaves_qty=0.0, seq=77)
        frames.append(bybit_frame("execution", execution_payload(fill, inst, {inst.symbol: 10.0})))
    for position in (EmuPosition(symbol=inst.symbol, side="Buy", size=1.0, avg_price=10.0, stop_loss=9.8, seq=5,
                                 created_ms=NOW - 100, updated_ms=NOW - 3),
                     EmuPosition(symbol=inst.symbol, side="Sell", size=2.5, avg_price=10.5, seq=6, updated_ms=NOW - 2),
                     EmuPosition(symbol=inst.symbol, seq=0, realised_pnl=-0.2, updated_ms=NOW - 1),
                     EmuPosition(symbol=inst.symbol)):
        frames.append(bybit_frame("position", position_payload(position, inst, 10.2)))
    hedged = position_payload(EmuPosition(symbol=inst.symbol, side="Sell", size=1.0, avg_price=10.0, seq=9), inst, 10.0)
    frames.append(bybit_frame("position", hedged | {"positionIdx": 2}))
    frames.append(bybit_frame("position", hedged | {"updatedTime": "0", "createdTime": "1676538056258"}))
    frames.append(bybit_frame("position", hedged | {"symbol": "BTCUSD", "category": "inverse"}))  # not ours
    frames.append(bybit_frame("order", bybit_orders(inst)[0] | {"category": "spot", "symbol": "BTCUSDT"}))
    # shapes ccxt reads as spot (no tpslMode; no category nor createType; category spot) on a
    # market id of ours: ccxt answers the one market it has loaded for the id, and so must we
    without_mode = {k: v for k, v in bybit_orders(inst)[2].items() if k != "tpslMode"}
    frames.append(bybit_frame("order", without_mode))
    bare_fill = execution_payload(EmuExecution(exec_id="x-bare", order=entry, side="Buy", price=10.0, qty=1.0,
                                               exec_type="Trade", time_ms=NOW - 4, closed_size=0.0, leaves_qty=0.0,
                                               seq=78), inst, {inst.symbol: 10.0})
    frames.append(bybit_frame("execution", {k: v for k, v in bare_fill.items() if k not in ("category", "createType")}))
    frames.append(bybit_frame("execution", bare_fill | {"category": "spot"}))
    frames += [bybit_frame(topic, item | {"symbol": inst.symbol}) for topic, item in bybit_docs_examples()]
    return frames


async def test_bybit_frames_decode_as_ccxt_reads_them() -> None:
    async with bybit() as (_, exchange, client, instruments):
        frames = bybit_frames(instruments)
        heard = 0
        for frame in frames:
            reference, fast, taken = both_ways(exchange, client, frame)
            assert taken, frame
            same(reference, fast, frame)
            heard += len(reference)
        assert heard >= len(frames) - 4  # the funding/settle executions and the spot order map to nothing


async def test_bybit_bench_frames_decode_as_ccxt_reads_them() -> None:
    """The benchmark's frames (a whole trade cycle per symbol) both ways."""
    from tests.bench.bench_ingest import build_frames, cycle_templates

    async with bybit() as (_, exchange, client, instruments):
        for _, frame in build_frames([cycle_templates(i) for i in instruments], 48, "t", 3):
            reference, fast, taken = both_ways(exchange, client, frame)
            assert taken and len(reference) == 1
            same(reference, fast, frame)


# -- Binance ----------------------------------------------------------------------------------


@asynccontextmanager
async def binance_client() -> AsyncIterator[tuple[Any, Any]]:
    """The hooked exchange of `tests.test_ccxt_binance.binance` and its user-data client."""
    async with binance() as (replay, venue):
        exchange = venue.exchange
        client = exchange.client(f"ws://{replay.base}/private/ws?listenKey=recorded-listen-key")
        client.subscriptions["linear"] = True
        exchange.set_balance_cache(client, "linear")
        exchange.set_positions_cache(client, "linear")
        yield exchange, client


def binance_frames() -> list[dict[str, Any]]:
    inst = instrument("BTC/USDT:USDT")
    events: list[dict[str, Any]] = [rec.ORDER_TRADE_UPDATE_FILL, rec.ALGO_UPDATE_NEW, rec.ALGO_UPDATE_CLOSE_POSITION,
                                    rec.ACCOUNT_UPDATE]
    entry = EmuOrder(order_id="4078112847", link_id="pgbinance-e", symbol="BTCUSDT", side="Sell", qty=0.01,
                     reduce_only=False, close_on_trigger=False, created_ms=NOW - 9, updated_ms=NOW - 5)
    events.append(binance_payloads.order_trade_update(entry, inst, now_ms=NOW))
    entry.status, entry.cum_qty, entry.cum_value = "Filled", 0.01, 600.123
    fill = EmuExecution(exec_id="698760", order=entry, side="Sell", price=60012.3, qty=0.01, exec_type="Trade",
                        time_ms=NOW - 4, closed_size=0.0, leaves_qty=0.0, seq=1, fee=0.3)
    events.append(binance_payloads.order_trade_update(entry, inst, now_ms=NOW, execution=fill))
    entry.status = "Cancelled"
    events.append(binance_payloads.order_trade_update(entry, inst, now_ms=NOW, exec_type="CANCELED"))
    stop = EmuOrder(order_id="2146762", link_id="pgbinance-s3", symbol="BTCUSDT", side="Buy", qty=0.01, reduce_only=True,
                    close_on_trigger=True, created_ms=NOW - 9, updated_ms=NOW - 3, trigger_price=63_000.0,
                    order_type="STOP_MARKET", status="Untriggered")
    for status in (None, "TRIGGERING"):
        events.append(binance_payloads.algo_update(stop, inst, now_ms=NOW, status=status))
    stop.status, stop.cum_qty, stop.cum_value, stop.fill_order_id = "Filled", 0.01, 630.0, "4078119999"
    events.append(binance_payloads.algo_update(stop, inst, now_ms=NOW))
    for position in (EmuPosition(symbol="BTCUSDT", side="Sell", size=0.01, avg_price=60012.3, updated_ms=NOW - 2),
                     EmuPosition(symbol="BTCUSDT", side="Buy", size=0.02, avg_price=60000.0, updated_ms=NOW - 2),
                     EmuPosition(symbol="BTCUSDT", updated_ms=NOW - 1)):
        events.append(binance_payloads.account_update(position, inst, balance=10_000.0, now_ms=NOW))
    hedged = copy.deepcopy(rec.ACCOUNT_UPDATE)
    hedged["a"]["P"][0]["ps"] = "LONG"
    events.append(hedged)
    no_outer_time = copy.deepcopy(rec.ALGO_UPDATE_NEW)
    events.append(no_outer_time | {"T": 1764000000777})
    return events


async def test_binance_frames_decode_as_ccxt_reads_them() -> None:
    async with binance_client() as (exchange, client):
        for event in binance_frames():
            reference, fast, taken = both_ways(exchange, client, json.dumps(event))
            assert taken, event
            assert reference, event
            same(reference, fast, json.dumps(event))


# -- poison ---------------------------------------------------------------------------------


def bybit_poison(inst: Any) -> list[str]:
    good = bybit_orders(inst)[2]
    return [
        "{not json", "", "[]", "null", '"text"', "{}",
        json.dumps({"topic": "wallet", "data": [{"coin": []}]}),  # a topic posguard does not read
        json.dumps({"topic": "order.linear", "data": [good]}),  # a topic ccxt matches by prefix
        json.dumps({"topic": "order", "data": "not a list"}),
        json.dumps({"topic": "order", "data": [good | {"qty": [1]}]}),  # a field of the wrong type
        json.dumps({"topic": "order", "data": [good | {"reduceOnly": "false"}]}),
        json.dumps({"topic": "order", "data": [good | {"orderStatus": "Exploded"}]}),  # ccxt maps nothing
        json.dumps({"topic": "order", "data": [good | {"side": ""}]}),
        json.dumps({"topic": "order", "data": [good | {"qty": "abc"}]}),
        json.dumps({"topic": "order", "data": [good, 7]}),  # one bad item: the whole frame is ccxt's
        json.dumps({"topic": "order", "success": False, "ret_msg": "boom", "data": [good]}),
        json.dumps({"topic": "position", "data": [{"symbol": inst.symbol, "size": "1", "side": "", "seq": 1}]}),
        json.dumps({"topic": "execution", "data": [{"symbol": inst.symbol, "category": "linear", "execQty": "1"}]}),
        json.dumps({"op": "subscribe", "success": True, "conn_id": "c1", "req_id": "9"}),
        json.dumps({"op": "pong", "ret_msg": "pong"}),
    ]


async def test_poison_bybit_frames_neither_stop_the_stream_nor_make_an_event_ccxt_would_not() -> None:
    async with bybit() as (_, exchange, client, instruments):
        inst = instruments[0]
        poison = bybit_poison(inst)
        rng = random.Random(5)
        for _ in range(300):  # and random corruption of good frames
            frame = rng.choice(bybit_frames(instruments))
            cut = rng.randrange(len(frame))
            poison.append(frame[:cut] + rng.choice(['"', "}", "]", ",", "x", "1", "{", " "]) + frame[cut + 1:])
        for frame in poison:
            try:
                reference, fast, _ = both_ways(exchange, client, frame)
            except Exception:  # noqa: BLE001 - ccxt's own path raising is ccxt's behaviour, as before
                reference = fast = None
                recorder = Recorder()
                exchange.posguard_listener = recorder
                with pytest.raises(Exception):  # noqa: B017, PT011 - the same frame, the same ccxt failure
                    client.handle_text_or_binary_message(frame)
                exchange.posguard_listener = None
                continue
            same(reference, fast, frame)
        # the stream goes on: a good frame after all that is decoded and heard
        reference, fast, taken = both_ways(exchange, client, bybit_frame("order", bybit_orders(inst)[2]))
        assert taken and len(fast) == 1 and isinstance(fast[0], Order)


async def test_poison_binance_frames_go_to_ccxt() -> None:
    async with binance_client() as (exchange, client):
        good = rec.ORDER_TRADE_UPDATE_FILL
        poison: list[Callable[[], Any]] = [
            lambda: "{", lambda: {"e": "TRADE_LITE", "s": "BTCUSDT"}, lambda: {"e": "MARGIN_CALL"},
            lambda: good | {"o": good["o"] | {"q": 0.01}},  # a number where Binance writes text
            lambda: good | {"o": good["o"] | {"X": "WEIRD"}},
            lambda: good | {"o": good["o"] | {"S": None}},
            lambda: good | {"status": "400"},  # ccxt reads it as an error
            lambda: {"stream": "x", "data": good},  # a combined-stream wrapper: ccxt unwraps it
            lambda: good | {"o": [good["o"]]},  # the options shape
            lambda: rec.ACCOUNT_UPDATE | {"a": {"P": [{"s": "BTCUSDT", "pa": "x"}]}},
        ]
        for make in poison:
            payload = make()
            frame = payload if isinstance(payload, str) else json.dumps(payload)
            try:
                reference, fast, taken = both_ways(exchange, client, frame)
            except Exception:  # noqa: BLE001 - ccxt's own path raising, as before
                continue
            assert not taken or reference == fast
            same(reference, fast, frame)
        reference, fast, taken = both_ways(exchange, client, json.dumps(good))
        assert taken and [type(e).__name__ for e in fast] == ["Execution", "Order"]


async def test_a_decoder_that_fails_costs_no_frame() -> None:
    """A bug in the decoder (it raises) hands the frame to ccxt: the same events, no lost frame."""
    async with bybit() as (_, exchange, client, instruments):
        frame = bybit_frame("order", bybit_orders(instruments[0])[2])
        reference, _, _ = both_ways(exchange, client, frame)

        def broken(data: Any, market_of: Any, now_ms: int) -> Any:
            raise RuntimeError("a decoder bug")

        exchange.posguard_decoder = broken
        recorder = Recorder(traded=frozenset(reference[0].symbol for _ in [0]))
        exchange.posguard_listener = recorder
        client.handle_text_or_binary_message(frame)
        exchange.posguard_listener = None
        del exchange.posguard_decoder
        assert recorder.events == reference and len(reference) == 1
