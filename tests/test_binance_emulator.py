"""The Binance USD-M emulator: on the wire (raw signed requests, checked against the shapes,
codes and rules of Binance's documentation) and through real ccxt.pro ``binanceusdm`` via
`CcxtVenue`. Every outcome is checked against the emulator's ground truth (``truth()``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import anyio
import pytest
from yarl import URL

from posguard.streams.ccxt_adapter.dialects import ListenKey
from posguard.streams.emulators.binance import EmulatorServer, ScriptedFailure, running_binance_emulator
from posguard.streams.emulators.binance.orders import BinanceReject, algo_order
from posguard.streams.emulators.bybit.client import binance_venue, run_config
from posguard.streams.emulators.engine.truth import is_protected
from posguard.streams.emulators.engine.serving import DEFAULT_API_KEY, DEFAULT_API_SECRET
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToClose,
    RateLimited,
    StopSlotTaken,
    StopWouldTrigger,
)
from posguard.streams.venue.events import Execution, Order, Position, StreamStatus
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from tests.emulator_fixtures import loopback_network_only, recording  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"
REPO = Path(__file__).resolve().parents[1]


class Wire:
    """Raw signed Binance requests, signed as Binance's docs say (HMAC-SHA256 of the query)."""

    def __init__(self, emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.http = http

    async def call(self, method: str, path: str, *, key: str | None = DEFAULT_API_KEY, secret: str = DEFAULT_API_SECRET,
                   timestamp: int | None = None, signed: bool = True, **params: Any) -> tuple[int, Any]:
        fields = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        if signed:
            fields["timestamp"] = str(timestamp if timestamp is not None else int(time.time() * 1000))
            query = urlencode(fields)
            fields["signature"] = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
        headers = {"X-MBX-APIKEY": key} if key is not None else {}
        query = urlencode(fields)
        if method in ("GET", "DELETE"):  # sent as encoded, as ccxt sends it
            request = self.http.request(method, URL(f"{path}?{query}", encoded=True), headers=headers)
        else:
            request = self.http.request(method, path, data=query, headers=headers | {
                "Content-Type": "application/x-www-form-urlencoded"})
        async with request as response:
            text = await response.text()
            return response.status, json.loads(text) if text.startswith(("{", "[")) else text

    async def ok(self, method: str, path: str, **params: Any) -> Any:
        status, body = await self.call(method, path, **params)
        assert status == 200, body
        return body

    async def refused(self, method: str, path: str, **params: Any) -> tuple[int, int]:
        status, body = await self.call(method, path, **params)
        assert status != 200, body
        return status, body["code"]


@asynccontextmanager
async def wire(**kwargs: Any) -> AsyncIterator[tuple[EmulatorServer, Wire]]:
    async with running_binance_emulator(**kwargs) as emu, aiohttp.ClientSession(base_url=emu.rest_url) as http:
        yield emu, Wire(emu, http)


def stop(client_id: str, trigger: float = 57_000, side: str = "SELL", **extra: Any) -> dict[str, Any]:
    return {"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": side, "type": "STOP_MARKET",
            "triggerPrice": trigger, "workingType": "MARK_PRICE", "clientAlgoId": client_id, **extra}


def market(client_id: str, qty: str = "0.01", side: str = "BUY", **extra: Any) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": qty, "newClientOrderId": client_id,
            "newOrderRespType": "RESULT", **extra}


def truth_orders(emu: EmulatorServer, client_id: str) -> list[dict[str, Any]]:
    return [o for o in emu.truth()["orders"] if o["order_link_id"] == client_id]


# -- on the wire ---------------------------------------------------------------------------


async def test_signed_requests_only_and_unknown_paths_answer_an_error() -> None:
    async with wire() as (emu, w):
        assert await w.refused("GET", "/fapi/v1/openOrders", secret="wrong") == (400, -1022)
        assert await w.refused("GET", "/fapi/v1/openOrders", key=None) == (401, -2014)
        assert await w.refused("GET", "/fapi/v1/openOrders", key="someone-else") == (401, -2015)
        stale = int(time.time() * 1000) - 6_000  # default recvWindow 5000 ms
        assert await w.refused("GET", "/fapi/v1/openOrders", timestamp=stale) == (400, -1021)
        assert await w.ok("GET", "/fapi/v1/openOrders", timestamp=stale, recvWindow=10_000) == []
        assert await w.refused("GET", "/fapi/v1/noSuchThing") == (404, -1099)
        # Signed over the query as sent: an id with characters that are percent-encoded.
        await w.ok("POST", "/fapi/v1/order", **market("pg:w/1.a"))
        assert (await w.ok("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="pg:w/1.a"))["clientOrderId"] == "pg:w/1.a"
        assert await w.refused("POST", "/fapi/v1/order", **market("w-1"), secret="wrong") == (400, -1022)
        assert truth_orders(emu, "w-1") == []  # nothing refused took effect
        emu.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="clock_skew"))
        assert await w.refused("POST", "/fapi/v1/order", **market("w-2")) == (400, -1021)
        emu.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="rate_limit"))
        assert await w.refused("POST", "/fapi/v1/order", **market("w-3")) == (429, -1003)
        emu.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="server_error"))
        assert await w.refused("POST", "/fapi/v1/order", **market("w-4")) == (500, -1001)
        emu.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="http_503"))
        assert (await w.call("POST", "/fapi/v1/order", **market("w-5")))[0] == 503
        assert [o["order_link_id"] for o in emu.truth()["orders"]] == ["pg:w/1.a"]
        # Public: no key needed.
        assert (await w.call("GET", "/fapi/v1/time", key=None, signed=False))[0] == 200


async def test_exchange_info_and_the_answers_have_the_documented_shapes() -> None:
    async with wire() as (emu, w):
        info = await w.ok("GET", "/fapi/v1/exchangeInfo", key=None, signed=False)
        [btc] = [s for s in info["symbols"] if s["symbol"] == "BTCUSDT"]
        filters = {f["filterType"]: f for f in btc["filters"]}
        assert (btc["contractType"], btc["marginAsset"], btc["status"]) == ("PERPETUAL", "USDT", "TRADING")
        assert filters["MARKET_LOT_SIZE"]["stepSize"] == "0.001" and filters["PRICE_FILTER"]["tickSize"] == "0.10"
        assert filters["MIN_NOTIONAL"]["notional"] == "5"
        assert "MAX_NUM_ALGO_ORDERS" not in filters  # removed 2025-12-29: the limit is account-wide

        ack = await w.ok("POST", "/fapi/v1/order", **(market("w-ack") | {"newOrderRespType": "ACK"}))
        assert (ack["status"], ack["executedQty"]) == ("NEW", "0")  # ACK: accepted, before the result
        order = await w.ok("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="w-ack")
        assert (order["status"], order["executedQty"], order["avgPrice"], order["type"]) == ("FILLED", "0.01", "60000", "MARKET")
        assert isinstance(order["orderId"], int) and order["clientOrderId"] == "w-ack"

        [trade] = await w.ok("GET", "/fapi/v1/userTrades", symbol="BTCUSDT")
        assert "clientOrderId" not in trade  # Binance's trade list carries no client order id
        assert (trade["orderId"], trade["qty"], trade["side"], trade["buyer"]) == (order["orderId"], "0.01", "BUY", True)
        [position] = await w.ok("GET", "/fapi/v3/positionRisk", symbol="BTCUSDT")
        assert (position["positionAmt"], position["positionSide"], position["entryPrice"]) == ("0.01", "BOTH", "60000")
        assert await w.ok("GET", "/fapi/v1/positionSide/dual") == {"dualSidePosition": False}
        [config] = await w.ok("GET", "/fapi/v1/symbolConfig", symbol="BTCUSDT")
        assert config["marginType"] == "CROSSED" and isinstance(config["leverage"], int)


async def test_all_orders_and_all_algo_orders_list_closed_ones_by_creation_time_within_seven_days() -> None:
    async with wire() as (emu, w):
        before = int(time.time() * 1000) - 1
        await w.ok("POST", "/fapi/v1/order", **market("w-a1"))
        await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-a-s", closePosition=True))
        await w.ok("DELETE", "/fapi/v1/algoOrder", clientAlgoId="w-a-s")
        await w.ok("POST", "/fapi/v1/order", **market("w-a2", side="SELL", reduceOnly=True))
        listed = await w.ok("GET", "/fapi/v1/allOrders", symbol="BTCUSDT", startTime=before)
        assert [(o["clientOrderId"], o["status"]) for o in listed] == [("w-a1", "FILLED"), ("w-a2", "FILLED")]
        [algo] = await w.ok("GET", "/fapi/v1/allAlgoOrders", symbol="BTCUSDT", startTime=before)
        assert (algo["clientAlgoId"], algo["algoStatus"]) == ("w-a-s", "CANCELED")
        assert await w.ok("GET", "/fapi/v1/allOrders", symbol="BTCUSDT", startTime=int(time.time() * 1000) + 60_000) == []
        too_long = {"startTime": before - 8 * 86_400_000, "endTime": before}
        assert await w.refused("GET", "/fapi/v1/allOrders", symbol="BTCUSDT", **too_long) == (400, -1127)
        assert await w.refused("GET", "/fapi/v1/allAlgoOrders", symbol="BTCUSDT", **too_long) == (400, -1127)
        assert emu.unknown_requests() == {}


async def test_a_stop_on_the_old_endpoint_is_refused_4120_and_the_algo_endpoint_takes_it() -> None:
    async with wire() as (emu, w):
        await w.ok("POST", "/fapi/v1/order", **market("w-e"))
        old = market("w-s-old", type="STOP_MARKET", stopPrice="57000", reduceOnly=True)
        assert await w.refused("POST", "/fapi/v1/order", **old) == (400, -4120)
        assert truth_orders(emu, "w-s-old") == []

        algo = await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-s", quantity="0.01", reduceOnly=True))
        assert (algo["algoStatus"], algo["orderType"], algo["workingType"], algo["reduceOnly"]) == (
            "NEW", "STOP_MARKET", "MARK_PRICE", True)
        [armed] = await w.ok("GET", "/fapi/v1/openAlgoOrders", symbol="BTCUSDT")
        assert armed["clientAlgoId"] == "w-s" and armed["triggerPrice"] == "57000"
        assert await w.ok("GET", "/fapi/v1/openOrders", symbol="BTCUSDT") == []  # not in the plain book
        assert is_protected(emu.truth(), "BTCUSDT")
        await w.ok("POST", "/fapi/v1/order", **market("w-x", side="SELL", reduceOnly=True))
        # Flat, but with an open order: v3 still lists the symbol, at 0.
        [flat] = await w.ok("GET", "/fapi/v3/positionRisk")
        assert (flat["symbol"], flat["positionAmt"]) == ("BTCUSDT", "0.000")
        await w.ok("DELETE", "/fapi/v1/algoOrder", clientAlgoId="w-s")
        assert await w.ok("GET", "/fapi/v3/positionRisk") == []


async def test_close_position_rules_from_the_docs() -> None:
    async with wire() as (emu, w):
        await w.ok("POST", "/fapi/v1/order", **market("w-e"))
        # quantity and reduceOnly cannot be sent with closePosition=true.
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-q", closePosition=True, quantity="0.01")) == (400, -4137)
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-r", closePosition=True, reduceOnly=True)) == (400, -1106)
        # A SELL stop above the price would trigger at once.
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-up", trigger=61_000, closePosition=True)) == (400, -2021)
        first = await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-c1", closePosition=True))
        assert first["closePosition"] is True and first["algoStatus"] == "NEW"
        # One closePosition stop per direction...
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-c2", trigger=56_000, closePosition=True)) == (400, -4130)
        # ...and type: a closePosition take-profit sits beside the stop (Binance's own whole-position
        # TP/SL pair; both armed together in github.com/Binance-docs/Binance_Futures_python/issues/100),
        # a second one is refused like a second stop.
        take_profit = stop("w-c3", trigger=63_000, closePosition=True) | {"type": "TAKE_PROFIT_MARKET"}
        assert (await w.ok("POST", "/fapi/v1/algoOrder", **take_profit))["orderType"] == "TAKE_PROFIT_MARKET"
        second = stop("w-c4", trigger=64_000, closePosition=True) | {"type": "TAKE_PROFIT_MARKET"}
        assert await w.refused("POST", "/fapi/v1/algoOrder", **second) == (400, -4130)
        await w.ok("DELETE", "/fapi/v1/algoOrder", clientAlgoId="w-c3")
        # An open clientAlgoId cannot be used again.
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-c1", trigger=55_000, quantity="0.01")) == (400, -20132)
        assert [o["close_position"] for o in truth_orders(emu, "w-c1")] == [True]
        assert is_protected(emu.truth(), "BTCUSDT")


async def test_a_take_profit_alone_does_not_protect_and_fills_the_whole_position() -> None:
    """A SELL TAKE_PROFIT_MARKET waits for the price to rise to it (New Algo Order: the trigger
    direction is implied by side and type); it guards nothing, so the ground truth does not
    count it as a stop."""
    async with wire() as (emu, w):
        await w.ok("POST", "/fapi/v1/order", **market("w-e"))
        take_profit = stop("w-tp", trigger=62_000, closePosition=True) | {"type": "TAKE_PROFIT_MARKET"}
        assert await w.refused("POST", "/fapi/v1/algoOrder", **(take_profit | {"triggerPrice": 59_000})) == (400, -2021)
        await w.ok("POST", "/fapi/v1/algoOrder", **take_profit)
        assert not is_protected(emu.truth(), "BTCUSDT"), "a take-profit is not a stop"
        emu.engine.set_price("BTCUSDT", 61_000)
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.01
        emu.engine.set_price("BTCUSDT", 62_000)
        assert emu.truth()["positions"] == {}
        [tp_order] = truth_orders(emu, "w-tp")
        assert (tp_order["status"], tp_order["cum_exec_qty"]) == ("Filled", 0.01)


def test_at_most_200_open_conditional_orders_across_all_symbols() -> None:
    """Change log 2025-12-29: "The condtional order limits is 200 across all symbols"."""
    emu = EmulatorServer()
    for n in range(199):
        algo_order(emu.engine, {k: str(v) for k, v in stop(f"many-{n}", trigger=50_000 + n, quantity="0.001").items()})
    eth = {k: str(v) for k, v in stop("eth-1", quantity="0.01").items()} | {"symbol": "ETHUSDT", "triggerPrice": "2900"}
    algo_order(emu.engine, eth)  # the 200th, on another symbol
    for symbol, trigger in (("BTCUSDT", "57000"), ("ETHUSDT", "2800")):
        with pytest.raises(BinanceReject) as refused:
            algo_order(emu.engine, {k: str(v) for k, v in stop("one-more", quantity="0.01").items()}
                       | {"symbol": symbol, "triggerPrice": trigger})
        assert (refused.value.code, refused.value.message) == (-4045, "Reach max stop order limit.")
    [first] = [o for o in emu.engine.orders.values() if o.link_id == "many-0"]
    emu.engine.cancel_order(first, "BTCUSDT")
    algo_order(emu.engine, {k: str(v) for k, v in stop("one-more", quantity="0.001").items()})  # room again


async def test_an_order_reads_does_not_exist_during_the_order_list_lag_then_is_found() -> None:
    async with wire() as (emu, w):
        emu.faults.order_list_lag = 0.5
        started = time.monotonic()
        await w.ok("POST", "/fapi/v1/order", **market("w-lag"))
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.01  # it filled at once
        assert await w.refused("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="w-lag") == (400, -2013)
        await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-lag-s", closePosition=True))
        assert await w.refused("GET", "/fapi/v1/algoOrder", clientAlgoId="w-lag-s") == (400, -2013)
        assert await w.ok("GET", "/fapi/v1/openAlgoOrders", symbol="BTCUSDT") == []
        with anyio.fail_after(5):
            while (await w.call("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="w-lag"))[0] != 200:
                await anyio.sleep(0.05)
        assert time.monotonic() - started >= 0.5
        assert (await w.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="w-lag-s"))["algoStatus"] == "NEW"


async def test_a_close_position_stop_closes_the_whole_grown_position_at_trigger() -> None:
    async with wire() as (emu, w):
        await w.ok("POST", "/fapi/v1/order", **market("w-e1"))
        await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-cp", closePosition=True))
        await w.ok("POST", "/fapi/v1/order", **market("w-e2", qty="0.02"))  # the position grows after the stop
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.03
        emu.engine.set_price("BTCUSDT", 56_900)

        truth = emu.truth()
        assert truth["positions"] == {}
        [close] = [e for e in truth["executions"] if e["order_link_id"] == "w-cp"]
        assert (close["side"], close["qty"], close["price"]) == ("Sell", 0.03, 56_900)
        algo = await w.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="w-cp")
        assert (algo["algoStatus"], algo["quantity"]) == ("FINISHED", "0.03")
        actual = await w.ok("GET", "/fapi/v1/order", symbol="BTCUSDT", orderId=algo["actualOrderId"])
        assert (actual["status"], actual["origType"], actual["executedQty"]) == ("FILLED", "STOP_MARKET", "0.03")


async def test_a_close_position_stop_expires_when_the_position_is_closed_by_a_market_order() -> None:
    async with wire() as (emu, w):
        await w.ok("POST", "/fapi/v1/order", **market("w-e"))
        await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-cp", closePosition=True))
        await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-ro", trigger=56_000, quantity="0.01", reduceOnly=True))
        await w.ok("POST", "/fapi/v1/order", **market("w-x", side="SELL", reduceOnly=True))
        assert emu.truth()["positions"] == {}

        assert (await w.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="w-cp"))["algoStatus"] == "EXPIRED"
        # A reduce-only stop with a quantity is not cancelled by Binance: it stays armed.
        assert (await w.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="w-ro"))["algoStatus"] == "NEW"
        emu.engine.set_price("BTCUSDT", 55_000)  # it triggers with nothing to reduce: no new position
        assert emu.truth()["positions"] == {}
        assert (await w.ok("GET", "/fapi/v1/algoOrder", clientAlgoId="w-ro"))["algoStatus"] == "EXPIRED"


async def test_a_close_position_stop_with_nothing_to_close_is_refused_4509() -> None:
    """Real Binance refuses a closePosition stop while there is no position (nor open order)
    on the side it would close: -4509, HTTP 400 (many field reports). The emulator used to
    accept it and expire it at trigger (seen failing: 200 where -4509 is due)."""
    async with wire() as (emu, w):
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-none", closePosition=True)) == (400, -4509)
        assert truth_orders(emu, "w-none") == []
        await w.ok("POST", "/fapi/v1/order", **market("w-short", side="SELL"))  # a short: a SELL stop closes nothing
        assert await w.refused("POST", "/fapi/v1/algoOrder", **stop("w-none", closePosition=True)) == (400, -4509)


async def test_a_lost_response_took_effect() -> None:
    async with wire() as (emu, w):
        emu.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="lost_504"))
        status, _ = await w.call("POST", "/fapi/v1/order", **market("w-lost"))
        assert status == 504
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.01 and len(truth_orders(emu, "w-lost")) == 1


# -- the user-data stream on the wire ------------------------------------------------------


async def test_listen_key_lapses_without_keepalive_with_listen_key_expired_then_minus_1125() -> None:
    async with wire() as (emu, w):
        emu.faults.listen_key_lifetime = 0.3
        key = (await w.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
        assert (await w.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"] == key  # the active one again
        async with w.http.ws_connect(f"/private/ws?listenKey={key}") as ws:
            with anyio.fail_after(5):
                message = await ws.receive_json()
            assert message["e"] == "listenKeyExpired" and message["listenKey"] == key
            assert await w.refused("PUT", "/fapi/v1/listenKey", signed=False, listenKey=key) == (400, -1125)
            await w.ok("POST", "/fapi/v1/order", **market("w-silent"))
            with pytest.raises(TimeoutError), anyio.fail_after(0.3):
                await ws.receive_json()  # silent, the socket left open
            assert not ws.closed
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with w.http.ws_connect(f"/ws/{key}"):
                pass


async def test_keepalive_extends_the_key_and_the_connection_limit_closes_the_socket() -> None:
    async with wire() as (emu, w):
        emu.faults.listen_key_lifetime = 0.4
        emu.faults.ws_connection_lifetime = 0.6
        key = (await w.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
        async with w.http.ws_connect(f"/ws/{key}") as ws:
            started = time.monotonic()
            with anyio.fail_after(5):
                while time.monotonic() - started < 0.6:
                    assert (await w.ok("PUT", "/fapi/v1/listenKey", signed=False, listenKey=key))["listenKey"] == key
                    await anyio.sleep(0.1)
                message = await ws.receive()
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert time.monotonic() - started >= 0.6
        assert emu.hub.keys.active(key), "kept alive by the PUTs"


async def test_events_follow_the_documented_shapes() -> None:
    async with wire() as (emu, w):
        key = (await w.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
        async with w.http.ws_connect(f"/private/ws?listenKey={key}") as ws:
            await w.ok("POST", "/fapi/v1/order", **market("w-ev"))
            await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-ev-s", closePosition=True))
            emu.engine.set_price("BTCUSDT", 56_000)
            seen: list[dict[str, Any]] = []
            with anyio.fail_after(5):
                while not any(e["e"] == "ALGO_UPDATE" and e["o"]["X"] == "FINISHED" for e in seen):
                    seen.append(await ws.receive_json())
        kinds = [(e["e"], e["o"]["x"] if e["e"] == "ORDER_TRADE_UPDATE" else e["o"]["X"] if e["e"] == "ALGO_UPDATE" else "")
                 for e in seen]
        assert kinds == [
            ("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "TRADE"), ("TRADE_LITE", ""), ("ACCOUNT_UPDATE", ""),
            ("ALGO_UPDATE", "NEW"),
            ("ALGO_UPDATE", "TRIGGERING"), ("ALGO_UPDATE", "TRIGGERED"), ("ORDER_TRADE_UPDATE", "NEW"),
            ("ORDER_TRADE_UPDATE", "TRADE"),
            ("TRADE_LITE", ""), ("ALGO_UPDATE", "FINISHED"),
        ]
        fill = next(e for e in seen if e["e"] == "ORDER_TRADE_UPDATE" and e["o"]["x"] == "TRADE")
        assert (fill["o"]["c"], fill["o"]["X"], fill["o"]["l"], fill["o"]["S"]) == ("w-ev", "FILLED", "0.01", "BUY")
        account = next(e for e in seen if e["e"] == "ACCOUNT_UPDATE")
        assert account["a"]["m"] == "ORDER" and account["a"]["P"][0]["pa"] == "0.01"
        finished = next(e for e in seen if e["e"] == "ALGO_UPDATE" and e["o"]["X"] == "FINISHED")
        assert (finished["o"]["caid"], finished["o"]["cp"], finished["o"]["ai"] != "") == ("w-ev-s", True, True)


async def test_push_drop_and_delay_apply_per_event_topic() -> None:
    async with wire() as (emu, w):
        emu.faults.push_drop = {"order": 1.0, "execution": 1.0}  # ORDER_TRADE_UPDATE and TRADE_LITE lost
        emu.faults.push_delay = {"algo": 0.3}
        key = (await w.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
        async with w.http.ws_connect(f"/private/ws?listenKey={key}") as ws:
            await w.ok("POST", "/fapi/v1/order", **market("w-drop"))
            placed = time.monotonic()
            await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-delay", closePosition=True))
            with anyio.fail_after(5):
                account = await ws.receive_json()
                algo = await ws.receive_json()
            assert account["e"] == "ACCOUNT_UPDATE"  # the fill's own events were dropped
            assert algo["e"] == "ALGO_UPDATE" and time.monotonic() - placed >= 0.3
        # REST still tells the truth.
        assert (await w.ok("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="w-drop"))["status"] == "FILLED"


# -- through real ccxt ---------------------------------------------------------------------


async def test_ccxt_entry_fills_and_its_id_reused_after_the_fill_opens_a_second_position() -> None:
    """Binance's rule: newClientOrderId is unique among open orders only. The reason posguard
    never resends a Binance entry on "unknown" alone."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        first = await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-e"))
        assert (first.status, first.filled, first.avg_price) == ("filled", 0.01, 60_000.0)
        again = await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-e"))
        assert again.status == "filled" and again.order_id != first.order_id
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.02
        assert len(truth_orders(emu, "cx-e")) == 2


async def test_ccxt_signs_ids_with_characters_it_percent_encodes() -> None:
    """Binance allows ``.:/`` in client ids; ccxt signs the query string as it sends it (``%3A``),
    so the emulator must check the signature over the raw query, not the decoded one (seen
    failing with the decoded one: -1022 for a valid request)."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="pg:e/1.a"))
        found = await venue.fetch_order(BTC, "pg:e/1.a")
        assert found is not None and (found.client_order_id, found.status) == ("pg:e/1.a", "filled")
        assert [o["order_link_id"] for o in emu.truth()["orders"]] == ["pg:e/1.a"]


async def test_ccxt_an_open_stop_id_is_refused_and_the_stop_protects() -> None:
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-e"))
        placed = await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="cx-s"))
        assert (placed.status, placed.kind, placed.stop_price) == ("open", "stop", 57_000.0)
        assert is_protected(emu.truth(), "BTCUSDT")
        with pytest.raises(DuplicateClientOrderId):
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=56_000, client_order_id="cx-s"))
        with pytest.raises(StopWouldTrigger):
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=61_000, client_order_id="cx-s2"))
        found = await venue.fetch_order(BTC, "cx-s")
        assert found is not None and found.status == "open"
        [listed] = [o for o in await venue.fetch_open_orders(BTC) if o.client_order_id == "cx-s"]
        assert listed.stop_price == 57_000.0
        cancelled = await venue.cancel_order(BTC, "cx-s")
        assert cancelled is None or cancelled.status in ("cancelled", "canceled")
        assert [o["status"] for o in truth_orders(emu, "cx-s")] == ["Deactivated"]
        assert not is_protected(emu.truth(), "BTCUSDT")
        # Closed now: its id may be used again, as Binance allows.
        await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="cx-s"))
        assert is_protected(emu.truth(), "BTCUSDT")


async def test_ccxt_a_whole_position_stop_is_refused_while_flat_and_accepted_once_the_position_exists() -> None:
    """-4509 through real ccxt (which knows no such code: a plain ExchangeError) is
    `NothingToClose`, decided by the code; the same stop goes on once the entry has filled."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        armed = StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="cx-w1")
        with pytest.raises(NothingToClose) as refused:
            await venue.place_stop(armed)
        assert refused.value.code == "-4509" and truth_orders(emu, "cx-w1") == []
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-e"))
        placed = await venue.place_stop(armed)
        assert (placed.status, placed.closes_position) == ("open", True)
        assert [o["close_position"] for o in truth_orders(emu, "cx-w1")] == [True]
        assert is_protected(emu.truth(), "BTCUSDT")
        with pytest.raises(StopSlotTaken):  # one per side (-4130)
            await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=56_000, client_order_id="cx-w2"))


async def test_ccxt_reads_unknown_during_the_lag_then_the_filled_order() -> None:
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        emu.faults.order_list_lag = 0.5
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-lag"))
        assert await venue.fetch_order(BTC, "cx-lag") is None  # "Order does not exist." in both books
        with anyio.fail_after(5):
            while (found := await venue.fetch_order(BTC, "cx-lag")) is None:
                await anyio.sleep(0.05)
        assert (found.status, found.filled) == ("filled", 0.01)
        [execution] = await venue.fetch_executions(BTC, venue.now_ms() - 60_000)
        assert (execution.order_id, execution.qty) == (found.order_id, 0.01)
        [position] = await venue.fetch_positions()
        assert (position.symbol, position.side, position.size) == (BTC, "long", 0.01)


async def test_ccxt_asks_position_risk_for_one_symbol() -> None:
    """``GET /fapi/v3/positionRisk?symbol=``: that symbol's row only (Position-Information-V3)."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-one-b"))
        await venue.create_order(OrderRequest(symbol="ETH/USDT:USDT", side="sell", qty=0.1, client_order_id="cx-one-e"))
        [btc] = await venue.fetch_positions(BTC)
        assert (btc.symbol, btc.side, btc.size) == (BTC, "long", 0.01)
        assert await venue.fetch_positions("SOL/USDT:USDT") == []
        assert {p.symbol for p in await venue.fetch_positions()} == {BTC, "ETH/USDT:USDT"}
        assert emu.position_lists() == {"BTCUSDT": 1, "SOLUSDT": 1, "": 1}


async def test_ccxt_rate_limit_and_outage_are_venue_errors() -> None:
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        await venue.load_markets()
        emu.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="rate_limit"))
        with pytest.raises(RateLimited):
            await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-429"))
        assert emu.truth()["orders"] == []


async def test_ccxt_stream_carries_orders_fills_and_positions() -> None:
    async with running_binance_emulator() as emu, binance_venue(emu) as venue, recording(venue) as recorder:
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-ws"))
        fill = await recorder.wait_for(Execution, lambda e: e.client_order_id == "cx-ws")
        assert (fill.qty, fill.price, fill.side) == (0.01, 60_000.0, "buy")
        await recorder.wait_for(Order, lambda o: o.client_order_id == "cx-ws" and o.status == "filled")
        await recorder.wait_for(Position, lambda p: p.symbol == BTC and p.size == 0.01)
        await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="cx-ws-s"))
        emu.engine.set_price("BTCUSDT", 56_500)
        await recorder.wait_for(Execution, lambda e: e.client_order_id == "cx-ws-s" and e.qty == 0.01)
        await recorder.wait_for(Position, lambda p: p.symbol == BTC and p.size == 0)
        assert emu.truth()["positions"] == {}


async def test_posguards_listen_key_keepalive_through_ccxt_extends_the_key_then_sees_it_gone() -> None:
    """ccxt's ``PUT /fapi/v1/listenKey`` carries no parameter (Binance: "Parameters: None"): the
    emulator must extend the account's key, not answer -1125 for a missing one."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        await venue.load_markets()
        key = (await venue.exchange.fapiPrivatePostListenKey())["listenKey"]
        emu.faults.listen_key_lifetime = 0.4
        keepalive = ListenKey(venue.exchange)
        assert await keepalive.extend() is True
        assert emu.requests("PUT /fapi/v1/listenKey") == 1 and emu.hub.keys.active(key)
        with anyio.fail_after(5):
            while emu.hub.keys.active(key):
                await anyio.sleep(0.05)
        assert await keepalive.extend() is False  # -1125: the stream needs a new key


def test_run_config_names_the_binance_venue_kind() -> None:
    text = run_config(EmulatorServer(), "redis://127.0.0.1:1", "acct")
    assert 'kind = "binanceusdm"' in text


async def test_the_shared_control_api_drives_the_binance_emulator() -> None:
    async with wire() as (emu, w):
        key = (await w.ok("POST", "/fapi/v1/listenKey", signed=False))["listenKey"]
        await w.ok("POST", "/fapi/v1/order", **market("w-ctl"))
        await w.ok("POST", "/fapi/v1/algoOrder", **stop("w-ctl-s", closePosition=True))
        async with w.http.ws_connect(f"/ws/{key}") as ws:
            async with w.http.post("/_control/faults", json={"push_drop": {"order": 1.0}}) as response:
                assert response.status == 200
            assert emu.faults.push_drop == {"order": 1.0}
            async with w.http.post("/_control/disconnect", json={}) as response:
                assert (await response.json())["dropped"] == 1
            with anyio.fail_after(5):
                assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        async with w.http.post("/_control/price", json={"symbol": "BTCUSDT", "price": 56_000}) as response:
            assert response.status == 200
        async with w.http.get("/_control/truth") as response:
            truth = await response.json()
        assert truth["positions"] == {} and truth["prices"]["BTCUSDT"] == 56_000
        assert truth["requests"]["POST /fapi/v1/algoOrder"] == 1 and truth["ws_connects"] == 1
        [stop_order] = [o for o in truth["orders"] if o["order_link_id"] == "w-ctl-s"]
        assert stop_order["close_position"] is True and stop_order["status"] == "Filled"


async def test_posguard_run_trades_against_the_binance_emulator_from_run_config(redis_url: str, tmp_path: Path) -> None:
    """What the crash test needs: `run_config` and the emulator make `posguard run` a Binance bot."""
    async with running_binance_emulator() as emu:
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, "binance-run"))
        env = dict(os.environ, POSGUARD_API_KEY=DEFAULT_API_KEY, POSGUARD_API_SECRET=DEFAULT_API_SECRET)
        process = await anyio.open_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "run"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            opened = await anyio.run_process(
                [sys.executable, "-m", "posguard", "--config", str(config), "open", BTC, "buy", "0.01",
                 "--stop-price", "58800", "--timeout", "60"],
                cwd=REPO, env=env, check=False)
            assert opened.returncode == 0, opened.stdout.decode() + opened.stderr.decode()
            truth = emu.truth()
            assert truth["positions"]["BTCUSDT"]["size"] == 0.01 and is_protected(truth, "BTCUSDT")
            assert emu.requests("POST /fapi/v1/order") == 1 and emu.requests("POST /fapi/v1/algoOrder") == 1
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()


async def test_ccxt_stream_comes_back_on_a_new_key_after_listen_key_expired() -> None:
    """The key lapses (its hour ran out without a keepalive): ``listenKeyExpired`` arrives,
    the stream goes down, reconnects on a new key, and pushes flow again."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        async with recording(venue) as recorder:
            mark = len(recorder.events)
            key = emu.hub.keys.current()
            assert key is not None
            emu.hub.keys.expire(key)
            await recorder.wait_for(StreamStatus, lambda s: not s.connected, since=mark, timeout=10)
            await recorder.wait_for(StreamStatus, lambda s: s.connected and s.reason == "reconnected", since=mark, timeout=10)
            assert emu.hub.keys.current() not in (None, key)
            assert emu.hub.keys.created >= 2, "a new listen key"
            since = len(recorder.events)
            await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-after"))
            await recorder.wait_for(Execution, lambda e: e.client_order_id == "cx-after", since=since)


async def test_ccxt_stream_reconnects_when_the_server_ends_a_connection_at_its_age_limit() -> None:
    """Binance closes a user-data connection at 24 hours (here 1 s): the stream comes back and
    pushes flow again on the same key."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        emu.faults.ws_connection_lifetime = 1.0
        async with recording(venue) as recorder:
            emu.faults.ws_connection_lifetime = 86_400.0  # for the connections that replace these
            mark = len(recorder.events)
            await recorder.wait_for(StreamStatus, lambda s: not s.connected, since=mark, timeout=10)
            await recorder.wait_for(StreamStatus, lambda s: s.connected and s.reason == "reconnected", since=mark, timeout=10)
            assert emu.hub.connects >= 2
            since = len(recorder.events)
            await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="cx-aged"))
            await recorder.wait_for(Execution, lambda e: e.client_order_id == "cx-aged", since=since)


async def test_ccxt_a_lookup_by_one_of_our_ids_asks_only_the_book_that_holds_it() -> None:
    """Binance keeps conditional orders in the algo service, entries and closes in the order
    book. A lookup of an entry asked both, so with the algo service down (503) an entry the
    order book holds could not be read: a close of an already-flat position could not prove
    it and kept trying (the crash test, Binance seed 3). Our ids say which book (`ids`): an
    entry's lookup asks the order book only, a stop's the algo book only; an id not ours, both."""
    async with running_binance_emulator() as emu, binance_venue(emu) as venue:
        await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="pgbk1-e"))
        await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="pgbk1-s1"))
        emu.engine.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/algoOrder", kind="http_503", count=10_000))
        entry = await venue.fetch_order(BTC, "pgbk1-e", conditional=False)
        assert entry is not None and entry.status == "filled"
        emu.engine.faults = type(emu.engine.faults)()
        emu.engine.faults.fail_next.append(ScriptedFailure(path="/fapi/v1/order", kind="http_503", count=10_000))
        stop_order = await venue.fetch_order(BTC, "pgbk1-s1", conditional=True)
        assert stop_order is not None and stop_order.status == "open"
