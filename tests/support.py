"""Shared test scaffolding: an engine on a fake venue and a real redis-server."""

from __future__ import annotations

import inspect
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from posguard.actors.intents import OpenIntent
from posguard.actors.records import PositionRecord
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import RedisConnection, open_redis
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue
from posguard.streams.venue.events import closing_side, position_side_of
from posguard.supervisor.engine import Engine
from tests.clock import IOAwareMockClock

ACCOUNT = "test"


class ClockHeld:
    """Wraps an object's coroutine methods so the mock clock stands still while they run.

    Applied to whatever talks to the real redis-server (see `tests.clock`). ``calls`` names
    every coroutine method called, in order: on a store, each is one round trip to Redis.
    """

    def __init__(self, inner: Any, clock: IOAwareMockClock | None) -> None:
        self._inner = inner
        self._clock = clock
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        clock, calls = self._clock, self.calls

        async def held(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if clock is None:
                return await attr(*args, **kwargs)
            with clock.hold():
                return await attr(*args, **kwargs)

        return held


@asynccontextmanager
async def running_engine(
    redis_url: str | RedisConnection,
    venue: FakeVenue,
    clock: IOAwareMockClock | None,
    settings: ActorSettings | None = None,
    **engine_kwargs: Any,
) -> AsyncIterator[Engine]:
    """An `Engine` running against ``venue`` (already entered) and a real Redis (a URL, or a
    `RedisConnection`: the test cluster's)."""
    settings = settings or ActorSettings(account=ACCOUNT)
    async with open_redis(redis_url) as client, anyio.create_task_group() as tg:
        engine = Engine(
            venue=venue,
            store=ClockHeld(RedisStore(client, settings.account), clock),
            cache=ClockHeld(RedisEventCache(client, settings.account), clock),
            settings=settings,
            rng=random.Random(7),
            **engine_kwargs,
        )
        await tg.start(engine.run)
        yield engine
        tg.cancel_scope.cancel()


def open_intent(
    intent_id: str, symbol: str = "BTC/USDT:USDT", qty: float | None = None, side: str = "buy"
) -> OpenIntent:
    """An entry with a stop 2 % away from the fake venue's starting price (default size:
    0.01, or the symbol's minimum if that is larger)."""
    from posguard.streams.simulated import DEFAULT_MARKETS

    price, rules = DEFAULT_MARKETS[symbol]
    qty = qty if qty is not None else max(0.01, rules.min_qty)
    stop = price * (0.98 if side == "buy" else 1.02)
    return OpenIntent(intent_id=intent_id, symbol=symbol, side=side, qty=qty, stop_price=stop)  # type: ignore[arg-type]


async def wait_streams_healthy(engine: Engine) -> None:
    """The streams are up and the start-up audit is done: the engine is in steady state."""
    assert await engine.streams_ready(timeout=30), "the fake venue's streams never came up"
    with anyio.fail_after(60):
        while engine.auditor.runs == 0:
            await anyio.sleep(0.01)


def assert_never_falsely_closed(record: PositionRecord, venue: FakeVenue) -> None:
    """I1 against ground truth: a record that says gone must match a venue that is flat."""
    if record.state.is_terminal:  # closed, closed_externally, closed_by_take_profit, rejected
        assert venue.truth.position(record.symbol) is None, (
            f"record says {record.state} but the venue holds {venue.truth.position(record.symbol)}"
        )


def proven_open_qty(record: PositionRecord, venue: FakeVenue) -> float:
    """How much of the record's entry is still open by the venue's own fills (ground truth):
    the entry's fills less every exit on its symbol since the entry was sent. A record may
    know less (fills not seen yet); it must never be cut below what it once knew and this."""
    executions = venue.truth.executions
    filled = sum(e.qty for e in executions if e.client_order_id == record.client_order_id and e.symbol == record.symbol)
    exit_side = closing_side(position_side_of(record.side))
    exits = sum(
        e.qty for e in executions
        if e.symbol == record.symbol and e.side == exit_side and e.client_order_id != record.client_order_id
        and e.ts_ms >= record.sent_ms
    )
    return max(0.0, filled - exits)
