"""Binance USD-M refusals are told apart by Binance's own code, never by ccxt's class (issue 14).

ccxt picks Binance's futures error table by the request's address (`binance.get_exceptions_by_url`
only knows ``https://fapi.binance.com/`` and the testnet/demo hosts). Behind an emulator or a
proxy its answer for the very codes posguard acts on is a plain ``ExchangeError``, which alone
would read as "outcome unknown". Each code posguard relies on is driven here through real ccxt
against a replay server on 127.0.0.1, first to show what ccxt alone says, then through
`CcxtVenue` to pin what posguard makes of it.

Meanings: https://developers.binance.com/docs/derivatives/usds-margined-futures/error-code
"""

from __future__ import annotations

import json
from typing import Any

import ccxt.async_support as ccxt
import pytest

from posguard.streams.ccxt_adapter.dialects import BINANCE_CODES
from posguard.streams.ccxt_adapter.errors import translate
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NotPlaced,
    NothingToClose,
    NothingToReduce,
    OrderRejected,
    StopSlotTaken,
    StopWouldTrigger,
    VenueAuthFailed,
    VenueError,
    VenueUnavailable,
)
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from tests.binance_recorded import error
from tests.emulator_fixtures import loopback_network_only  # noqa: F401
from tests.test_ccxt_binance import binance

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"
PRODUCTION_ORDER_URL = "https://fapi.binance.com/fapi/v1/order"

REDUCE_ONLY = (-2022, "ReduceOnly Order is rejected.")
ALGO_ONLY = (-4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.")
NOTIONAL = (-4164, "Order's notional must be no smaller than 100 (unless you choose reduce only).")
WOULD_TRIGGER = (-2021, "Order would immediately trigger.")
DUPLICATE = (-4116, "ClientOrderId is duplicated.")
MARGIN = (-2019, "Margin is insufficient.")
PRECISION = (-1111, "Precision is over the maximum defined for this asset.")
QTY_ZERO = (-4003, "Quantity less than zero.")
CLOCK = (-1021, "Timestamp for this request is outside of the recvWindow.")
LISTEN_KEY_GONE = (-1125, "This listenKey does not exist.")
UNKNOWN_ORDER = (-2011, "Unknown order sent.")
NO_SUCH_ORDER = (-2013, "Order does not exist.")
STOP_SLOT_TAKEN = (-4130, "An open stop or take profit order with GTE and closePosition in the direction is existing.")
MAX_STOP_ORDERS = (-4045, "Reach max stop order limit.")
# Not on Binance's error-code page; the message of many field reports of a closePosition stop
# placed while flat on that side.
NOTHING_TO_CLOSE = (-4509, "Time in Force (TIF) GTE can only be used with open positions or open orders."
                           " Please ensure that positions are available.")


@pytest.mark.parametrize(
    ("reply", "at_binance", "elsewhere"),
    [
        (REDUCE_ONLY, ccxt.InvalidOrder, ccxt.ExchangeError),
        (ALGO_ONLY, ccxt.InvalidOrder, ccxt.ExchangeError),
        (NOTIONAL, ccxt.InvalidOrder, ccxt.ExchangeError),
        (WOULD_TRIGGER, ccxt.OrderImmediatelyFillable, ccxt.ExchangeError),
        (DUPLICATE, ccxt.InvalidOrder, ccxt.ExchangeError),
        (MARGIN, ccxt.InsufficientFunds, ccxt.ExchangeError),
        # ccxt 4.5.90 knows no -4509 at all: a plain ExchangeError wherever it comes from,
        # which alone would read as "outcome unknown".
        (NOTHING_TO_CLOSE, ccxt.ExchangeError, ccxt.ExchangeError),
        # ccxt's address-free table knows these, with classes that would mislead on their own:
        # a listen key gone reads as refused credentials (at any address), an unknown order as
        # a rejected one (OrderNotFound is an InvalidOrder).
        (LISTEN_KEY_GONE, ccxt.AuthenticationError, ccxt.AuthenticationError),
        (NO_SUCH_ORDER, ccxt.OrderNotFound, ccxt.OrderNotFound),
    ],
)
async def test_ccxt_alone_decides_by_the_address(
    reply: tuple[int, str], at_binance: type[Exception], elsewhere: type[Exception]
) -> None:
    code, message = reply
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/order", error(code, message))
        with pytest.raises(ccxt.BaseError) as raised:
            await venue.exchange.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.01"})
        assert type(raised.value) is elsewhere, raised.value
        # The same body from Binance's own host: ccxt's futures table applies.
        body = json.dumps({"code": code, "msg": message})
        with pytest.raises(ccxt.BaseError) as production:
            venue.exchange.handle_errors(400, "Bad Request", PRODUCTION_ORDER_URL, "POST", {}, body, json.loads(body), {}, "")
        assert type(production.value) is at_binance, production.value


def close(coid: str = "pgbinance-c1") -> OrderRequest:
    return OrderRequest(symbol=BTC, side="sell", qty=0.01, client_order_id=coid, reduce_only=True)


def entry(coid: str = "pgbinance-e1") -> OrderRequest:
    return OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id=coid)


def stop(coid: str = "pgbinance-s1") -> StopRequest:
    return StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id=coid)


@pytest.mark.parametrize(
    ("reply", "path", "send", "raised"),
    [
        (REDUCE_ONLY, "/fapi/v1/order", "close", NothingToReduce),
        # A stop refused for its route is a refusal like any other: the protection path retries
        # and then closes; "outcome unknown" would leave it looking for a stop that never was.
        (ALGO_ONLY, "/fapi/v1/algoOrder", "stop", OrderRejected),
        (ALGO_ONLY, "/fapi/v1/order", "entry", OrderRejected),
        (NOTIONAL, "/fapi/v1/order", "entry", OrderRejected),
        (WOULD_TRIGGER, "/fapi/v1/algoOrder", "stop", StopWouldTrigger),
        # One closePosition stop per symbol and direction: the slot is taken, nothing placed;
        # the protection path sends the replacement sized instead.
        (STOP_SLOT_TAKEN, "/fapi/v1/algoOrder", "stop", StopSlotTaken),
        # A whole-position stop while there is nothing to close yet: nothing placed, and no
        # evidence that the entry was refused (the armed-stop loop only tries again).
        (NOTHING_TO_CLOSE, "/fapi/v1/algoOrder", "stop", NothingToClose),
        # Too many open conditional orders: a refusal (retried, then the position closed).
        (MAX_STOP_ORDERS, "/fapi/v1/algoOrder", "stop", OrderRejected),
        (DUPLICATE, "/fapi/v1/order", "entry", DuplicateClientOrderId),
        (MARGIN, "/fapi/v1/order", "entry", OrderRejected),
        (PRECISION, "/fapi/v1/order", "entry", OrderRejected),
        (QTY_ZERO, "/fapi/v1/order", "entry", OrderRejected),
        (CLOCK, "/fapi/v1/order", "entry", NotPlaced),
    ],
)
async def test_refusals_are_decided_by_binance_code(
    reply: tuple[int, str], path: str, send: str, raised: type[VenueError]
) -> None:
    code, message = reply
    async with binance() as (replay, venue):
        replay.answer("POST", path, error(code, message))
        requests: dict[str, Any] = {
            "close": lambda: venue.create_order(close()),
            "entry": lambda: venue.create_order(entry()),
            "stop": lambda: venue.place_stop(stop()),
        }
        with pytest.raises(VenueError) as caught:
            await requests[send]()
        assert type(caught.value) is raised, caught.value
        assert f"code {code}" in str(caught.value) or raised is DuplicateClientOrderId
        if isinstance(caught.value, OrderRejected):
            assert caught.value.code == str(code)


async def test_a_refused_timestamp_measures_the_clock_again() -> None:
    async with binance() as (replay, venue):
        replay.answer("POST", "/fapi/v1/order", error(*CLOCK))
        with pytest.raises(VenueUnavailable):
            await venue.create_order(entry())
        assert len(replay.requests("GET", "/fapi/v1/time")) == 2  # load_markets, then the resync


async def test_a_listen_key_gone_is_not_a_credentials_refusal() -> None:
    """-1125: the user-data stream must get a new key and reconnect; the key itself is fine.
    Read as refused credentials it would stop every entry until an operator "fixed" the key."""
    async with binance() as (replay, venue):
        replay.answer("PUT", "/fapi/v1/listenKey", error(*LISTEN_KEY_GONE))
        with pytest.raises(ccxt.BaseError) as raised:
            await venue.exchange.fapiPrivatePutListenKey()
        translated = translate(raised.value, BINANCE_CODES, action="keep the listen key alive")
        assert type(translated) is VenueUnavailable and not isinstance(translated, VenueAuthFailed)
        assert "code -1125" in str(translated)


async def test_unknown_orders_are_lookup_answers() -> None:
    async with binance() as (replay, venue):
        replay.answer("DELETE", "/fapi/v1/order", error(*UNKNOWN_ORDER))
        replay.answer("DELETE", "/fapi/v1/algoOrder", error(*UNKNOWN_ORDER))
        replay.answer("GET", "/fapi/v1/order", error(*NO_SUCH_ORDER))
        replay.answer("GET", "/fapi/v1/algoOrder", error(*NO_SUCH_ORDER))
        assert await venue.cancel_order(BTC, "pgbinance-s9") is None
        assert await venue.fetch_order(BTC, "pgbinance-s9") is None
        assert len(replay.requests("DELETE", "/fapi/v1/algoOrder")) == 1  # both books asked
