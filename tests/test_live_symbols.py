"""No nudge, hence no Redis read, for a symbol without a live record (issue 16).

A push that may end a position (a flat position, a fill of a stop or of someone else's order)
used to nudge the symbol's actor whatever its record said, and the actor read its record from
Redis to find there was nothing to end. `ActorContext.live_symbols` says which symbols may hold
a live record: `ActorContext.save` adds a symbol before its first live write goes out and drops
it only after a terminal write is in; the engine fills it from its start-up scan.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from posguard.actors.context import ActorContext
from posguard.actors.intents import IntentRecord
from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.positions import RedisStore
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.simulated import FakeVenue
from posguard.streams.venue.events import Execution, Position
from posguard.supervisor.routing import EventRouter
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, running_engine

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


class CountingActor:
    def __init__(self) -> None:
        self.nudges = 0

    def nudge(self) -> None:
        self.nudges += 1


class Registry(dict[str, CountingActor]):
    def __init__(self, ctx: Any) -> None:
        super().__init__({BTC: CountingActor(), ETH: CountingActor()})
        self.ctx = ctx


class RecordingStore:
    """A store that notes, at each record write, whether the symbol was already marked live."""

    def __init__(self, ctx_ref: list[ActorContext], fail: bool = False) -> None:
        self.ctx_ref = ctx_ref
        self.fail = fail
        self.live_at_write: list[bool] = []

    async def save_record(self, record: PositionRecord, note: str = "", *, replies: Sequence[IntentRecord] = ()) -> None:
        self.live_at_write.append(record.symbol in self.ctx_ref[0].live_symbols)
        if self.fail:
            raise ConnectionError("Redis went away mid-write")


def context(store: Any) -> ActorContext:
    async def no_check(intent: Any) -> Any:
        return intent

    return ActorContext(venue=FakeVenue(), store=store, board=EvidenceBoard(), rules={},
                        settings=ActorSettings(account=ACCOUNT), entry_check=no_check, rng=random.Random(1))


def flat(symbol: str) -> Position:
    return Position(symbol=symbol, side="flat", size=0.0, entry_price=0.0, stop_price=None, ts_ms=1)


def test_a_push_that_may_end_a_position_nudges_only_a_symbol_whose_record_may_be_live() -> None:
    ctx = context(store=None)
    registry = Registry(ctx)
    router = EventRouter(registry, lambda why: None)  # type: ignore[arg-type]
    stop_fill = Execution(symbol=BTC, exec_id="x1", order_id="o1", client_order_id="", side="sell", qty=1.0,
                          price=9.8, ts_ms=2)
    router.route(flat(BTC))
    router.route(stop_fill)
    assert registry[BTC].nudges == 0  # no live record: nothing to end, no Redis read

    ctx.live_symbols.add(BTC)
    router.route(flat(BTC))
    router.route(stop_fill)
    router.route(flat(ETH))
    assert (registry[BTC].nudges, registry[ETH].nudges) == (2, 0)


def record(state: State = State.SUBMITTING) -> PositionRecord:
    return PositionRecord(symbol=BTC, intent_id="i-1", state=state, side="buy", qty=1.0, stop_price=9.8,
                          client_order_id="pg-e")


async def test_save_marks_a_symbol_live_before_the_write_and_settled_only_after_it() -> None:
    ref: list[ActorContext] = []
    store = RecordingStore(ref)
    ctx = context(store)
    ref.append(ctx)
    entry = record()
    await ctx.save(entry)
    assert store.live_at_write == [True] and BTC in ctx.live_symbols
    entry.transition(State.REJECTED, "confirmed not filled")
    store.fail = True
    with pytest.raises(ConnectionError):
        await ctx.save(entry)
    assert BTC in ctx.live_symbols  # the terminal write may not be in: still maybe live
    store.fail = False
    await ctx.save(entry)
    assert BTC not in ctx.live_symbols


async def test_the_engine_starts_with_the_live_records_of_its_scan(clock: IOAwareMockClock, redis_url: str) -> None:
    async with open_redis(redis_url) as client:
        store = RedisStore(client, ACCOUNT)
        with clock.hold():
            live = record()
            live.transition(State.VERIFYING)
            await store.save_record(live)
            settled = PositionRecord(symbol=ETH, intent_id="i-2", state=State.SUBMITTING, side="buy", qty=1.0,
                                     stop_price=9.8, client_order_id="pg-e2")
            settled.transition(State.REJECTED)
            await store.save_record(settled)
    async with FakeVenue() as venue, running_engine(redis_url, venue, clock) as engine:
        assert BTC in engine.ctx.live_symbols
        assert ETH not in engine.ctx.live_symbols
