"""Partial closes through real ccxt.pro against both emulators (asyncio, real time, real
Redis): reduce-only market orders for the part, the position still covered by its stop at
each write (Bybit's attached stop, Binance's closePosition stop: both cover any size and stay
as they are), then the rest closed. Checked against the emulator's ground truth; the I1 watch
of tests/test_ccxt_end_to_end.py runs at every transition."""

from __future__ import annotations

import pytest

from posguard.actors.intents import CloseIntent
from posguard.actors.records import PositionRecord, State, open_size
from posguard.streams.emulators.engine.truth import is_protected
from tests.emulator_fixtures import loopback_network_only  # noqa: F401
from tests.support import open_intent
from tests.test_ccxt_end_to_end import BTC, system

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]


def held(truth: dict) -> float:  # type: ignore[type-arg]
    position = truth["positions"].get("BTCUSDT")
    return round(position["size"], 9) if position is not None else 0.0


@pytest.mark.parametrize("venue", ["bybit", "binance"])
async def test_a_partial_close_then_the_rest_through_ccxt(redis_url: str, venue: str) -> None:
    async with system(redis_url, on=venue) as (emu, _venue, engine, watch):
        bare: list[str] = []

        def covered(record: PositionRecord, note: str) -> None:
            if not is_protected(emu.truth(), "BTCUSDT"):
                bare.append(f"{record.state} ({note}): {emu.truth()['positions']}")

        assert (await (await engine.submit(open_intent(f"e2e-pc-{venue}"))).wait()).outcome == "protected"
        engine.ctx.observers.append(covered)
        stops_before = [o for o in emu.truth()["orders"] if o["status"] == "Untriggered"]

        reply = await (await engine.submit(CloseIntent(intent_id=f"e2e-pc-{venue}-1", symbol=BTC, qty=0.004))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        assert "0.006 open" in reply.reason, reply.reason
        assert held(emu.truth()) == 0.006, "the venue's position reduced by exactly the part"
        assert is_protected(emu.truth(), "BTCUSDT")
        assert [o for o in emu.truth()["orders"] if o["status"] == "Untriggered"] == stops_before, \
            "a stop that covers any size is left as it is"
        record = await engine.store.load_record(BTC)
        assert record is not None and (record.state, record.closed_qty, open_size(record)) == (
            State.PROTECTED, 0.004, 0.006), record

        half = await (await engine.submit(CloseIntent(intent_id=f"e2e-pc-{venue}-2", symbol=BTC, fraction=0.5))).wait()
        assert (half.status, half.outcome) == ("done", "protected"), half
        assert held(emu.truth()) == 0.003 and is_protected(emu.truth(), "BTCUSDT")

        rest = await (await engine.submit(CloseIntent(intent_id=f"e2e-pc-{venue}-3", symbol=BTC))).wait()
        assert (rest.status, rest.outcome) == ("done", "closed"), rest
        await watch.reaches(State.CLOSED)
        assert emu.truth()["positions"] == {}, "ground truth: flat"
        assert bare == [], bare
