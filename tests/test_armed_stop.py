"""A whole-position stop armed while an entry's outcome is unknown (issue 14's last finding).

Binance attaches no stop to an entry. An entry whose answer is lost while every push is
dropped and every REST list lags was bare from its fill until some evidence of the fill
arrived or the hard deadline made it `unverified`: 22-47 s in the crash test, against its
10 s bound, counted again after each restart (I2). posguard now arms a whole-position stop
(Binance ``closePosition=true``) right after a send whose outcome is unknown, beside the
lookups; Binance refuses it while there is nothing to close (-4509, `NothingToClose`), so it
is tried again every `ProtectionSettings.armed_stop_retry` until the venue accepts it.

Run on the simulated venue with Binance's rules (ids reusable once closed, no attached stop,
whole-position stops: one per side, refused while flat), trio and a mock clock, real Redis;
the bare time is the venue's ground truth.
"""

from __future__ import annotations

from posguard.actors import ids
from posguard.actors.lifecycle import recovery
from posguard.actors.records import PositionRecord, Protection, State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import NothingToClose
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

import anyio
import pytest

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
LAG = Lag.fixed(90.0)  # longer than the hard deadline: REST has nothing to say in time
BINANCE_LIKE = dict(reject_duplicate_client_ids=False, whole_position_stops=True)
LOST_AND_SILENT = FaultKnobs(position_lag=LAG, order_lag=LAG, execution_lag=LAG, push_drop={t: 1.0 for t in TOPICS},
                             lost_create_response_rate=1.0, **BINANCE_LIKE)
NO_AUDITS = AuditSettings(interval=3600.0)
MARGIN = 1.0  # seconds past one retry: the REST round trips of the send and of one stop attempt


def longest_bare(venue: FakeVenue) -> float:
    return venue.truth.max_unprotected_seconds(anyio.current_time())


def whole_stops(venue: FakeVenue) -> list[str]:
    return [o.client_order_id for o in venue.truth.open_stops(SYMBOL) if o.closes_position]


async def test_an_entry_of_unknown_outcome_is_bare_for_about_one_retry(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1404, knobs=LOST_AND_SILENT, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("lost", symbol=SYMBOL))).wait()
        record = await engine.store.load_record(SYMBOL)
        retry = engine.settings.protection.armed_stop_retry
        assert venue.truth.entries_filled[SYMBOL] == 1 and venue.truth.position(SYMBOL) is not None
        assert venue.truth.is_protected(SYMBOL)
        bare = longest_bare(venue)
        assert bare <= retry + MARGIN < engine.settings.verification.hard_deadline, (
            f"the position was bare {bare:.1f} s ({record.state}: {record.reason}; {reply})"
        )
        # One stop on the venue: protection found the armed one live and placed no second.
        assert whole_stops(venue) == [record.stop_client_order_id]
        assert len(venue.truth.open_stops(SYMBOL)) == 1
        assert record.protection is Protection.STOP_ORDER and record.stop_scope == "whole_position"


async def test_a_refusal_while_flat_is_no_evidence_and_the_stop_goes_on_once_filled(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The arm meets -4509 for as long as the venue is flat, keeps trying at its pace, and the
    record never reads "rejected" from it (I1): a fill that lands late is covered at once."""
    knobs = FaultKnobs(position_lag=LAG, order_lag=LAG, execution_lag=LAG, push_drop={t: 1.0 for t in TOPICS},
                       **BINANCE_LIKE)
    async with FakeVenue(seed=1405, knobs=knobs, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        with pytest.raises(NothingToClose):  # the venue's rule, as the emulator's
            await venue.place_stop(StopRequest(symbol=SYMBOL, side="sell", qty=2.0, stop_price=1.0,
                                               client_order_id="probe"))
        intent = open_intent("late", symbol=SYMBOL)
        coid = ids.entry_id(ACCOUNT, intent.intent_id)
        # What a killed process left: the entry written ahead, maybe sent, nothing known.
        record = PositionRecord(symbol=SYMBOL, intent_id=intent.intent_id, state=State.SUBMITTING, side="buy",
                                qty=intent.qty, stop_price=intent.stop_price, client_order_id=coid,
                                sent_ms=venue.now_ms() - 1)
        await engine.store.save_record(record, "entry order about to be sent")
        tries: list[str] = []
        engine.ctx.observers.append(lambda r, note: tries.append(note) if note.startswith("arming") else None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(recovery.resume, engine.ctx, SYMBOL)
            await anyio.sleep(5.0)  # flat meanwhile: every try refused -4509
            assert len(tries) >= 3, tries
            assert (await engine.store.load_record(SYMBOL)).state is not State.REJECTED
            # The first send did reach the venue: its fill lands now (an answer lost long ago).
            await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=intent.qty, client_order_id=coid))
            filled_at = anyio.current_time()
            while not venue.truth.is_protected(SYMBOL):
                await anyio.sleep(0.1)
            covered_after = anyio.current_time() - filled_at
        assert covered_after <= engine.settings.protection.armed_stop_retry + MARGIN
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert len(venue.truth.open_stops(SYMBOL)) == 1
