"""What the venue's failures become: posguard's error classes, decided by class alone.

Driven through real ccxt against the emulator's fault knobs, and checked against the
emulator's ground truth: a failure "before effect" left nothing behind, a lost response
left exactly one order and one position, and the lookup finds it.
"""

from __future__ import annotations

import logging

import ccxt.async_support as ccxt
import pytest

from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.ccxt_adapter.dialects import BINANCE_CODES, BYBIT_CODES
from posguard.streams.ccxt_adapter.errors import clock_rejected, redact, translate
from posguard.streams.emulators.bybit import DEFAULT_API_SECRET, ScriptedFailure, running_emulator
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NotPlaced,
    OrderRejected,
    RateLimited,
    VenueAuthFailed,
    VenueUnavailable,
)
from posguard.streams.venue.protocol import OrderRequest
from tests.emulator_fixtures import bybit_venue, loopback_network_only, truth_order  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"
CREATE = "/v5/order/create"


def entry(coid: str, qty: float = 0.01) -> OrderRequest:
    return OrderRequest(symbol=BTC, side="buy", qty=qty, client_order_id=coid, stop_loss=58_000)


@pytest.mark.parametrize(
    ("kind", "error"),
    [("http_503", VenueUnavailable), ("server_error", VenueUnavailable), ("rate_limit", RateLimited)],
)
async def test_failures_before_effect_leave_nothing_behind(kind: str, error: type[Exception]) -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        emu.faults.fail_next.append(ScriptedFailure(path=CREATE, kind=kind))  # type: ignore[arg-type]
        with pytest.raises(error) as raised:
            await venue.create_order(entry("pg-fault-e"))
        assert type(raised.value) is error
        assert emu.requests(f"POST {CREATE}") == 1 and emu.truth()["orders"] == []
        assert await venue.fetch_order(BTC, "pg-fault-e") is None
        # The retry, under the same client order id, goes through.
        await venue.create_order(entry("pg-fault-e"))
        assert emu.truth()["positions"]["BTCUSDT"]["size"] == 0.01


async def test_reads_fail_the_same_way() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        emu.faults.fail_next.append(ScriptedFailure(path="/v5/position/list", kind="http_503"))
        emu.faults.fail_next.append(ScriptedFailure(path="/v5/order/realtime", kind="rate_limit"))
        with pytest.raises(VenueUnavailable):
            await venue.fetch_positions()
        with pytest.raises(RateLimited):
            await venue.fetch_order(BTC, "pg-any")
        assert await venue.fetch_positions() == []


@pytest.mark.parametrize("kind", ["lost_504", "lost_drop"])
async def test_lost_create_response_is_unavailable_and_the_lookup_finds_the_order(kind: str) -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        emu.faults.fail_next.append(ScriptedFailure(path=CREATE, kind=kind))  # type: ignore[arg-type]
        with pytest.raises(VenueUnavailable) as lost:
            await venue.create_order(entry("pg-lost-e"))
        assert not isinstance(lost.value, RateLimited)

        # The venue did place it, once.
        assert truth_order(emu, "pg-lost-e")["status"] == "Filled"
        assert emu.truth()["positions"]["BTCUSDT"] == {"side": "Buy", "size": 0.01, "avg_price": 60_000.0, "stop_loss": 58_000.0}
        found = await venue.fetch_order(BTC, "pg-lost-e")
        assert found is not None and found.status == "filled" and found.filled == 0.01

        # A retry under the same id cannot open a second position.
        with pytest.raises(DuplicateClientOrderId) as duplicate:
            await venue.create_order(entry("pg-lost-e"))
        assert duplicate.value.client_order_id == "pg-lost-e"
        assert len(emu.truth()["orders"]) == 1 and emu.truth()["positions"]["BTCUSDT"]["size"] == 0.01


async def test_insufficient_balance_and_minimum_notional_are_rejections() -> None:
    async with running_emulator(balance=50.0) as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        with pytest.raises(OrderRejected) as poor:
            await venue.create_order(entry("pg-poor-e", qty=0.1))
        assert poor.value.code == "110007"
        with pytest.raises(OrderRejected) as tiny:
            await venue.create_order(OrderRequest(symbol="DOGE/USDT:USDT", side="buy", qty=1, client_order_id="pg-tiny-e"))
        assert tiny.value.code == "110094"
        assert emu.truth()["orders"] == [] and emu.truth()["positions"] == {}


async def test_rejected_credentials_name_the_problem_and_never_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-do-not-print-9f2c"
    wrong_key = "wrong-key-5d1e"
    caplog.set_level(logging.DEBUG)
    async with running_emulator() as emu, bybit_venue(emu, credentials=ApiCredentials(wrong_key, secret)) as venue:
        await venue.load_markets()  # public: fine
        with pytest.raises(VenueAuthFailed) as refused:
            await venue.create_order(entry("pg-auth-e"))
        assert isinstance(refused.value, VenueUnavailable)
        assert "API credentials" in str(refused.value) and "10003" in str(refused.value)
        with pytest.raises(VenueAuthFailed):
            await venue.fetch_positions()
        assert emu.truth()["orders"] == []
    assert "X-BAPI-SIGN': '***'" in caplog.text  # ccxt's own debug lines are redacted too
    for text in [str(refused.value), repr(refused.value), caplog.text]:
        assert secret not in text and wrong_key not in text and DEFAULT_API_SECRET not in text


def test_translation_by_venue_code_wins_over_ccxt_class() -> None:
    def bybit(exc: Exception) -> Exception:
        return translate(exc, BYBIT_CODES, action="create_order", client_order_id="pg-x")

    duplicate = bybit(ccxt.InvalidOrder('bybit {"retCode":110072,"retMsg":"OrderLinkedID is duplicate"}'))
    assert isinstance(duplicate, DuplicateClientOrderId) and duplicate.client_order_id == "pg-x"
    worded = bybit(ccxt.BadRequest('bybit {"retCode":10001,"retMsg":"Duplicate orderLinkId"}'))
    assert isinstance(worded, DuplicateClientOrderId)
    assert type(bybit(ccxt.ExchangeError('bybit {"retCode":10016,"retMsg":"Server error."}'))) is VenueUnavailable
    assert type(bybit(ccxt.ExchangeError('bybit {"retCode":99999,"retMsg":"new"}'))) is VenueUnavailable
    assert type(bybit(ccxt.RequestTimeout("bybit POST https://x/v5/order/create"))) is VenueUnavailable
    assert type(bybit(ccxt.DDoSProtection("bybit 418"))) is RateLimited
    assert type(bybit(ccxt.InsufficientFunds('bybit {"retCode":110007,"retMsg":"ab not enough"}'))) is OrderRejected
    assert type(bybit(ccxt.BadSymbol("bybit does not have market symbol X"))) is OrderRejected
    assert clock_rejected(ccxt.BadRequest('bybit {"retCode":10002,"retMsg":"invalid request"}'), BYBIT_CODES)
    assert type(bybit(ccxt.BadRequest('bybit {"retCode":10002,"retMsg":"invalid request"}'))) is NotPlaced

    binance_duplicate = translate(
        ccxt.InvalidOrder('binanceusdm {"code":-2010,"msg":"Duplicate clientOrderId"}'),
        BINANCE_CODES, action="create_order", client_order_id="pg-y",
    )
    assert isinstance(binance_duplicate, DuplicateClientOrderId) and binance_duplicate.client_order_id == "pg-y"


def test_redaction_removes_keys_secrets_signatures_and_listen_keys() -> None:
    text = (
        "GET https://h/fapi/v1/order?symbol=X&timestamp=1&signature=abc123 key=K1234567 secret=S4567890"
        " listenKey=LK9 {'X-BAPI-SIGN': 'deadbeef'}"
    )
    cleaned = redact(text, ["K1234567", "S4567890", "k", ""])
    for leaked in ("abc123", "K1234567", "S4567890", "LK9", "deadbeef"):
        assert leaked not in cleaned
    assert "symbol=X" in cleaned and "key=" in cleaned  # a one-letter "secret" garbles nothing
