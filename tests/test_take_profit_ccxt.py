"""Take-profit on open through real ccxt.pro against both emulators (asyncio, real time, real
Redis): attached to the entry on Bybit (``takeProfit``, tpslMode Full), a TAKE_PROFIT_MARKET
closePosition algo order placed after the stop on Binance. Checked against the emulator's
ground truth; the I1 watch of tests/test_ccxt_end_to_end.py runs at every transition."""

from __future__ import annotations

import anyio
import pytest

from posguard.actors.intents import OpenIntent
from posguard.actors.records import State
from posguard.streams.emulators.engine.truth import is_protected
from tests.emulator_fixtures import EMULATORS, loopback_network_only  # noqa: F401
from tests.test_ccxt_end_to_end import BTC, system

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]
both_venues = pytest.mark.parametrize("venue", ["bybit", "binance"])

STOP, TAKE_PROFIT = 58_800.0, 62_000.0  # BTCUSDT starts at 60,000


def open_with_take_profit(intent_id: str) -> OpenIntent:
    return OpenIntent(intent_id=intent_id, symbol=BTC, side="buy", qty=0.01, stop_price=STOP, take_profit=TAKE_PROFIT)


def conditional(truth: dict, trigger: float) -> dict:  # type: ignore[type-arg]
    [order] = [o for o in truth["orders"] if o["trigger_price"] == trigger]
    return order


async def until(check, timeout: float = 10.0) -> None:  # noqa: ANN001
    """Wait (real time, on the emulator's own pace) until ``check()`` holds."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


@both_venues
async def test_a_take_profit_fill_settles_the_record_and_leaves_nothing_armed(redis_url: str, venue: str) -> None:
    async with system(redis_url, on=venue) as (emu, _venue, engine, watch):
        reply = await (await engine.submit(open_with_take_profit(f"e2e-tp-{venue}"))).wait()
        assert reply.outcome == "protected", reply
        record = await engine.store.load_record(BTC)
        assert record is not None and record.take_profit == TAKE_PROFIT
        if EMULATORS[venue].attached_stop:
            # Bybit: both ride on the entry, and the position holds them.
            assert emu.truth()["positions"]["BTCUSDT"]["take_profit"] == TAKE_PROFIT
            assert emu.truth()["positions"]["BTCUSDT"]["stop_loss"] == STOP
            assert record.take_profit_client_order_id == ""
            [entry] = emu.truth()["orders"]
            assert entry["order_link_id"] == record.client_order_id
        else:
            # Binance: the entry, then the stop, then (once the stop is live) the take-profit.
            await until(lambda: len(emu.truth()["orders"]) == 3)
            entry, stop, take_profit = emu.truth()["orders"]
            assert (stop["trigger_price"], take_profit["trigger_price"]) == (STOP, TAKE_PROFIT)
            assert take_profit["close_position"] and take_profit["status"] == "Untriggered"
            record = await engine.store.load_record(BTC)
            assert take_profit["order_link_id"] == record.take_profit_client_order_id != ""
        assert is_protected(emu.truth(), "BTCUSDT")

        emu.engine.set_price("BTCUSDT", 62_100)  # through the take-profit: the venue closes it
        await watch.reaches(State.CLOSED_BY_TAKE_PROFIT)

        record = await engine.store.load_record(BTC)
        assert record is not None and record.state is State.CLOSED_BY_TAKE_PROFIT, record
        assert emu.truth()["positions"] == {}, "ground truth: flat"
        if not EMULATORS[venue].attached_stop:
            await until(lambda: conditional(emu.truth(), STOP)["status"] != "Untriggered")
            assert conditional(emu.truth(), STOP)["status"] == "Deactivated", "the stop's leftover is gone"
        exits = [e for e in emu.truth()["executions"] if e["side"] == "Sell"]
        assert sum(e["qty"] for e in exits) == 0.01


@both_venues
async def test_a_stop_fill_leaves_no_take_profit_armed(redis_url: str, venue: str) -> None:
    async with system(redis_url, on=venue) as (emu, _venue, engine, watch):
        assert (await (await engine.submit(open_with_take_profit(f"e2e-tp-stop-{venue}"))).wait()).outcome == "protected"
        if not EMULATORS[venue].attached_stop:
            await until(lambda: len(emu.truth()["orders"]) == 3)

        emu.engine.set_price("BTCUSDT", 58_000)  # through the stop
        await watch.reaches(State.CLOSED_EXTERNALLY)

        assert emu.truth()["positions"] == {}
        if not EMULATORS[venue].attached_stop:
            await until(lambda: conditional(emu.truth(), TAKE_PROFIT)["status"] != "Untriggered")
            assert conditional(emu.truth(), TAKE_PROFIT)["status"] == "Deactivated", "no take-profit left armed"
        emu.engine.set_price("BTCUSDT", 62_100)  # and nothing triggers later
        assert emu.truth()["positions"] == {}


async def test_a_take_profit_on_the_wrong_side_is_refused_with_nothing_sent(redis_url: str) -> None:
    async with system(redis_url) as (emu, _venue, engine, _watch):
        intent = OpenIntent(intent_id="e2e-tp-wrong", symbol=BTC, side="buy", qty=0.01, stop_price=STOP,
                            take_profit=59_500.0)  # above the stop, below the price
        reply = await (await engine.submit(intent)).wait()
        assert reply.status == "rejected" and reply.reason.startswith("take_profit:"), reply
        assert emu.truth()["orders"] == [] and emu.truth()["positions"] == {}
