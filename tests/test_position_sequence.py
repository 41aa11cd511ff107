"""Issue 13, defect 12: position snapshots are ordered by Bybit's cross sequence (``seq``).

A push can arrive after a later one, and a REST list lags; two changes of one position can
fall in one millisecond (a fill and the stop-out it triggers), so timestamps cannot order
them. Neither the board nor an entry's evidence may let an older snapshot replace a newer one.
"""

from __future__ import annotations

import pytest

from posguard.actors.verification import EntryEvidence
from posguard.streams.ingestion.evidence import EvidenceBoard, newer_position
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.liquidation import estimated_liquidation_price
from posguard.streams.venue.protocol import OrderRequest
from tests.evidence_scaffolding import COID, SOL, board_fed_by, entry_record, snapshot


async def test_a_late_push_of_an_older_seq_does_not_replace_the_newer_position() -> None:
    board = EvidenceBoard()
    board.apply(snapshot(0.0, seq=8))  # the stop-out: flat
    board.apply(snapshot(1.0, seq=7))  # the fill, pushed in the same millisecond, arrived late
    position = board.position(SOL)
    assert position is not None and position.seq == 8 and not position.is_open


def test_seq_decides_over_timestamps_and_timestamps_decide_without_it() -> None:
    pushed = snapshot(1.0, seq=12, ts_ms=5_000)
    assert newer_position(pushed, snapshot(0.5, seq=11, ts_ms=9_000)) is pushed, "an older seq stamped later"
    later_same_seq = snapshot(1.0, seq=12, ts_ms=5_001)  # a settings change keeps the last fill's seq
    assert newer_position(pushed, later_same_seq) is later_same_seq
    without = snapshot(0.5, seq=0, ts_ms=5_001)  # Binance: no seq, the timestamp decides
    assert newer_position(pushed, without) is without
    assert newer_position(without, snapshot(1.0, seq=0, ts_ms=5_000)) is without


def test_a_rest_snapshot_older_than_the_pushed_seq_is_not_taken_as_evidence() -> None:
    evidence = EntryEvidence(entry_record())
    evidence.take_position(snapshot(0.0, seq=9), "push")  # the venue pushed "flat"
    evidence.take_position(snapshot(1.0, seq=8), "rest")  # the lagging list still shows it open
    assert evidence.position is not None and evidence.position.seq == 9
    assert evidence.visible_position() is None


async def test_on_the_simulated_venue_a_lagging_list_never_overwrites_the_pushed_flat() -> None:
    # The entry fills and its attached stop is jumped through at once: two position changes in
    # one venue millisecond. Pushes are instant; the position list shows each change at once or
    # 5-10 s late, by its own draw (seed 2: the fill at once, the stop-out late), so for a while
    # the list still shows the position open while the push already said flat.
    lag = Lag(low=0.0, high=0.001, tail_p=0.5, tail_low=5.0, tail_high=10.0)
    knobs = FaultKnobs(stop_out_rate=1.0, stop_out_delay=Lag.fixed(0.0), position_lag=lag)
    async with FakeVenue(seed=2, knobs=knobs) as venue, board_fed_by(venue) as board:
        record = entry_record(sent_ms=venue.now_ms())
        await venue.create_order(OrderRequest(symbol=SOL, side="buy", qty=1.0, client_order_id=COID, stop_loss=147.0))
        while (pushed := board.position(SOL)) is None or pushed.is_open:
            await board.wait_for_change(SOL)
        listed = [p for p in await venue.fetch_positions() if p.symbol == SOL]

        assert listed and listed[0].is_open, "staging: the list lags behind the push"
        assert listed[0].ts_ms == pushed.ts_ms and listed[0].seq < pushed.seq, "staging: one millisecond, two seqs"
        assert venue.truth.position(SOL) is None
        evidence = EntryEvidence(record)
        evidence.take_position(pushed, "push")
        evidence.take_position(listed[0], "rest")
        assert evidence.position == pushed
        assert evidence.visible_position() is None


async def test_the_simulated_venue_stamps_mark_liquidation_price_and_seq_on_every_change() -> None:
    btc = "BTC/USDT:USDT"
    async with FakeVenue(seed=1) as venue, board_fed_by(venue) as board:
        venue.set_leverage(SOL, 5.0)
        await venue.create_order(OrderRequest(symbol=SOL, side="buy", qty=1.0, client_order_id="pg-stamp-e"))
        opened = venue.truth.positions[SOL]
        assert opened.mark_price == 150.0
        assert opened.liq_price == pytest.approx(150.0 * (1 - 1 / 5 + 0.005)) == estimated_liquidation_price("long", 150.0, 5)
        venue.set_price(SOL, 151.0)
        await venue.create_order(OrderRequest(symbol=SOL, side="sell", qty=0.4, client_order_id="pg-stamp-c",
                                              reduce_only=True))
        await venue.create_order(OrderRequest(symbol=btc, side="sell", qty=0.01, client_order_id="pg-stamp-b"))
        reduced, short = venue.truth.positions[SOL], venue.truth.positions[btc]

        assert reduced.seq > opened.seq and reduced.mark_price == 151.0 and reduced.size == pytest.approx(0.6)
        assert short.liq_price == pytest.approx(60_000.0 * (1 + 1 / 10 - 0.005)), "10x unless told otherwise"
        assert {p.symbol: p for p in await venue.fetch_positions()} == {SOL: reduced, btc: short}
        while board.position(btc) != short:
            await board.wait_for_change(btc)
        assert board.position(SOL) == reduced, "pushed as listed"
