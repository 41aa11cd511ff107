"""Bybit's ``seq``, ``markPrice`` and ``liqPrice`` reach `Position`, over REST and pushed alike.

Through real ccxt against the emulator, which writes them where Bybit V5 does
(``GET /v5/position/list`` and the ``position`` topic). ccxt keeps ``seq`` in ``info`` only.
"""

from __future__ import annotations

import pytest

from posguard.streams.emulators.bybit import running_emulator
from posguard.streams.ingestion.evidence import newer_position
from posguard.streams.venue.events import Position
from posguard.streams.venue.liquidation import DEFAULT_LEVERAGE, estimated_liquidation_price
from posguard.streams.venue.protocol import OrderRequest
from tests.emulator_fixtures import bybit_venue, loopback_network_only, recording  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"


def entry(coid: str) -> OrderRequest:
    return OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id=coid)


async def test_seq_mark_and_liquidation_price_over_rest_and_push_and_a_lagging_list_loses() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue, recording(venue) as rec:
        await venue.load_markets()
        await venue.create_order(entry("pg-seq-e1"))
        pushed = await rec.wait_for(Position, lambda p: p.symbol == BTC and p.size == 0.01)
        [listed] = [p for p in await venue.fetch_positions() if p.symbol == BTC]

        first_seq = emu.engine.positions["BTCUSDT"].seq
        assert first_seq > 0
        assert pushed.seq == listed.seq == first_seq
        assert pushed.mark_price == listed.mark_price == 60_000.0
        estimate = estimated_liquidation_price("long", 60_000.0, DEFAULT_LEVERAGE)
        assert pushed.liq_price == listed.liq_price == pytest.approx(estimate, abs=0.1)

        emu.faults.position_list_lag = 60.0  # the list now lags far behind the push
        mark = len(rec.events)
        await venue.create_order(entry("pg-seq-e2"))
        newer = await rec.wait_for(Position, lambda p: p.symbol == BTC and p.size == 0.02, since=mark)
        [stale] = [p for p in await venue.fetch_positions() if p.symbol == BTC]

        assert stale.size == 0.01 and stale.seq == first_seq < newer.seq == emu.engine.positions["BTCUSDT"].seq
        assert newer_position(newer, stale) is newer
