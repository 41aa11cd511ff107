"""No nudge, hence no Redis read, for a symbol without a live record (issue 16).

A push that may end a position (a flat position, a fill of a stop or of someone else's order)
used to nudge the symbol's actor whatever its record said, and the actor read its record from
Redis to find there was nothing to end. `Store.may_be_live` says which symbols may hold a live
record, from the record as this process last read or wrote it (`store.positions.may_be_live`):
a symbol counts as live from before its first live write goes out until a terminal write is
in, and from the start-up scan. One rule, over the store's own view (it was a second set kept
beside it by `ActorContext.save`).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from posguard.actors.context import ActorContext
from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.keys import Keys
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


class LiveSet:
    """A store that knows only which symbols may be live."""

    def __init__(self) -> None:
        self.live: set[str] = set()

    def may_be_live(self, symbol: str) -> bool:
        return symbol in self.live


def context(store: Any) -> ActorContext:
    async def no_check(intent: Any) -> Any:
        return intent

    return ActorContext(venue=FakeVenue(), store=store, board=EvidenceBoard(), rules={},
                        settings=ActorSettings(account=ACCOUNT), entry_check=no_check, rng=random.Random(1))


def flat(symbol: str) -> Position:
    return Position(symbol=symbol, side="flat", size=0.0, entry_price=0.0, stop_price=None, ts_ms=1)


def test_a_push_that_may_end_a_position_nudges_only_a_symbol_whose_record_may_be_live() -> None:
    store = LiveSet()
    registry = Registry(context(store))
    router = EventRouter(registry, lambda why: None)  # type: ignore[arg-type]
    stop_fill = Execution(symbol=BTC, exec_id="x1", order_id="o1", client_order_id="", side="sell", qty=1.0,
                          price=9.8, ts_ms=2)
    router.route(flat(BTC))
    router.route(stop_fill)
    assert registry[BTC].nudges == 0  # no live record: nothing to end, no Redis read

    store.live.add(BTC)
    router.route(flat(BTC))
    router.route(stop_fill)
    router.route(flat(ETH))
    assert (registry[BTC].nudges, registry[ETH].nudges) == (2, 0)


def record(state: State = State.SUBMITTING) -> PositionRecord:
    return PositionRecord(symbol=BTC, intent_id="i-1", state=state, side="buy", qty=1.0, stop_price=9.8,
                          client_order_id="pg-e")


async def test_a_symbol_is_live_from_before_its_first_live_write_until_a_terminal_write_is_in(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with open_redis(redis_url) as client:
        store = RedisStore(client, ACCOUNT)
        with clock.hold():
            await store.read_records()  # the start-up scan: Redis holds nothing for the account
        assert not store.may_be_live(BTC)
        live_during_write: list[bool] = []
        hset = client.eval

        async def observed_eval(*args: Any, **kwargs: Any) -> Any:
            live_during_write.append(store.may_be_live(BTC))
            return await hset(*args, **kwargs)

        client.eval = observed_eval  # type: ignore[method-assign]
        entry = record()
        with clock.hold():
            await store.save_record(entry)
        assert live_during_write == [True] and store.may_be_live(BTC)
        entry.transition(State.REJECTED, "confirmed not filled")

        async def failing_eval(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("Redis went away mid-write")

        client.eval = failing_eval  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await store.save_record(entry)
        assert store.may_be_live(BTC)  # the terminal write may not be in: still maybe live
        client.eval = observed_eval  # type: ignore[method-assign]
        with clock.hold():
            await store.save_record(entry)
        assert live_during_write[-1] is True  # during the terminal write, too
        assert not store.may_be_live(BTC)


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
            keys = Keys(ACCOUNT)
            await client.hset(keys.position("SOL/USDT:USDT"), {"state": "no such state"})
            await client.sadd(keys.positions, ["SOL/USDT:USDT"])
    async with FakeVenue() as venue, running_engine(redis_url, venue, clock) as engine:
        assert engine.store.may_be_live(BTC)
        assert not engine.store.may_be_live(ETH)
        assert engine.store.may_be_live("SOL/USDT:USDT"), "an unusable record may be live: its actor is nudged"
        assert not engine.store.may_be_live("XRP/USDT:USDT"), "Redis holds nothing for it"
