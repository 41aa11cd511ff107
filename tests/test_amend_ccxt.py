"""Amend intents through real ccxt.pro against both emulators (asyncio, real time, real Redis):
in place on Bybit (``POST /v5/position/trading-stop``, tpslMode Full), a new closePosition /
sized stop first and the old one cancelled after on Binance. Checked against the emulator's
ground truth, sampled all through the change: the position is never without a live stop."""

from __future__ import annotations

import anyio
import pytest

from posguard.actors.intents import AmendIntent, OpenIntent
from posguard.streams.emulators.engine.truth import is_protected
from tests.emulator_fixtures import EMULATORS, loopback_network_only  # noqa: F401
from tests.test_ccxt_end_to_end import BTC, system
from tests.test_take_profit_ccxt import until

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]
both_venues = pytest.mark.parametrize("venue", ["bybit", "binance"])

STOP, MOVED, TAKE_PROFIT, NEW_TAKE_PROFIT = 58_800.0, 59_400.0, 62_000.0, 63_000.0  # BTCUSDT starts at 60,000


def untriggered(truth: dict, trigger: float) -> list[dict]:  # type: ignore[type-arg]
    return [o for o in truth["orders"] if o["trigger_price"] == trigger and o["status"] == "Untriggered"]


async def amend_watched(emu, engine, intent: AmendIntent):  # noqa: ANN001, ANN201
    """Send the amend and sample the ground truth until it is answered: every sample covered."""
    bare: list[dict] = []  # type: ignore[type-arg]
    async with anyio.create_task_group() as tg:
        async def sample() -> None:
            while True:
                truth = emu.truth()
                if not is_protected(truth, "BTCUSDT"):
                    bare.append(truth)
                await anyio.sleep(0)
        tg.start_soon(sample)
        reply = await (await engine.submit(intent)).wait()
        tg.cancel_scope.cancel()
    assert bare == [], f"the position was bare during the amend: {bare[0]}"
    return reply


@both_venues
async def test_moving_the_stop_and_the_take_profit(redis_url: str, venue: str) -> None:
    async with system(redis_url, on=venue) as (emu, _venue, engine, _watch):
        opened = OpenIntent(intent_id=f"e2e-am-{venue}", symbol=BTC, side="buy", qty=0.01, stop_price=STOP,
                            take_profit=TAKE_PROFIT)
        assert (await (await engine.submit(opened)).wait()).outcome == "protected"
        attached = EMULATORS[venue].attached_stop
        if not attached:
            await until(lambda: len(emu.truth()["orders"]) == 3)  # entry, stop, take-profit
        before = await engine.store.load_record(BTC)

        reply = await amend_watched(emu, engine, AmendIntent(intent_id=f"e2e-am-stop-{venue}", symbol=BTC,
                                                             stop_price=MOVED))

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        record = await engine.store.load_record(BTC)
        assert record.stop_price == MOVED and record.amend_intent_id == ""
        truth = emu.truth()
        if attached:
            assert truth["positions"]["BTCUSDT"]["stop_loss"] == MOVED, "changed in place"
            assert truth["positions"]["BTCUSDT"]["take_profit"] == TAKE_PROFIT, "the take-profit kept"
            assert len(truth["orders"]) == 1, "nothing placed: only the entry"
        else:
            [moved] = untriggered(truth, MOVED)
            assert moved["order_link_id"] == record.stop_client_order_id != before.stop_client_order_id
            assert untriggered(truth, STOP) == [], "the old stop cancelled, after"
        assert is_protected(truth, "BTCUSDT")

        reply = await amend_watched(emu, engine, AmendIntent(intent_id=f"e2e-am-tp-{venue}", symbol=BTC,
                                                             take_profit=NEW_TAKE_PROFIT))

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        truth = emu.truth()
        if attached:
            assert truth["positions"]["BTCUSDT"]["take_profit"] == NEW_TAKE_PROFIT
            assert truth["positions"]["BTCUSDT"]["stop_loss"] == MOVED
        else:
            assert len(untriggered(truth, NEW_TAKE_PROFIT)) == 1 and untriggered(truth, TAKE_PROFIT) == []

        reply = await amend_watched(emu, engine, AmendIntent(intent_id=f"e2e-am-notp-{venue}", symbol=BTC,
                                                             remove_take_profit=True))

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        truth = emu.truth()
        if attached:
            assert "take_profit" not in truth["positions"]["BTCUSDT"]
        else:
            assert untriggered(truth, NEW_TAKE_PROFIT) == []
        assert (await engine.store.load_record(BTC)).take_profit == 0.0
        assert is_protected(truth, "BTCUSDT")


@both_venues
async def test_a_stop_the_venue_refuses_keeps_the_old_one(redis_url: str, venue: str) -> None:
    async with system(redis_url, on=venue) as (emu, _venue, engine, _watch):
        opened = OpenIntent(intent_id=f"e2e-am-r-{venue}", symbol=BTC, side="buy", qty=0.01, stop_price=STOP)
        assert (await (await engine.submit(opened)).wait()).outcome == "protected"
        before = await engine.store.load_record(BTC)
        check = engine.ctx.amend_check

        async def market_moves_after_the_check(intent, record):  # noqa: ANN001, ANN202
            checked = await check(intent, record)
            emu.engine.set_price("BTCUSDT", 59_300.0)
            return checked

        engine.ctx.amend_check = market_moves_after_the_check
        reply = await amend_watched(emu, engine, AmendIntent(intent_id=f"e2e-am-late-{venue}", symbol=BTC,
                                                             stop_price=MOVED))

        assert reply.status == "rejected" and "refused by the venue" in reply.reason, reply
        record = await engine.store.load_record(BTC)
        assert (record.stop_price, record.stop_client_order_id) == (STOP, before.stop_client_order_id)
        truth = emu.truth()
        if EMULATORS[venue].attached_stop:
            assert truth["positions"]["BTCUSDT"]["stop_loss"] == STOP
        else:
            assert [o["order_link_id"] for o in untriggered(truth, STOP)] == [before.stop_client_order_id]
        assert is_protected(truth, "BTCUSDT")
