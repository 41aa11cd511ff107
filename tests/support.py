"""Shared test scaffolding: an engine on a fake venue and a real redis-server."""

from __future__ import annotations

import inspect
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from actors.intents import OpenIntent
from actors.records import PositionRecord, State
from actors.settings import ActorSettings
from actors.store import RedisStore
from streams.event_cache import RedisEventCache
from streams.fake_venue import FakeVenue
from streams.redis_client import open_redis
from supervisor.engine import Engine
from tests.clock import IOAwareMockClock

ACCOUNT = "test"


class ClockHeld:
    """Wraps an object's coroutine methods so the mock clock stands still while they run.

    Applied to whatever talks to the real redis-server (see `tests.clock`).
    """

    def __init__(self, inner: Any, clock: IOAwareMockClock | None) -> None:
        self._inner = inner
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if self._clock is None or not inspect.iscoroutinefunction(attr):
            return attr
        clock = self._clock

        async def held(*args: Any, **kwargs: Any) -> Any:
            with clock.hold():
                return await attr(*args, **kwargs)

        return held


@asynccontextmanager
async def running_engine(
    redis_url: str,
    venue: FakeVenue,
    clock: IOAwareMockClock | None,
    settings: ActorSettings | None = None,
    **engine_kwargs: Any,
) -> AsyncIterator[Engine]:
    """An `Engine` running against ``venue`` (already entered) and a real Redis."""
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


def open_intent(intent_id: str, symbol: str = "BTC/USDT:USDT", qty: float = 0.01, side: str = "buy") -> OpenIntent:
    """An entry with a stop 2 % away from the fake venue's starting price."""
    from streams.fake_venue import DEFAULT_MARKETS

    price = DEFAULT_MARKETS[symbol][0] if symbol in DEFAULT_MARKETS else 10.0
    stop = price * (0.98 if side == "buy" else 1.02)
    return OpenIntent(intent_id=intent_id, symbol=symbol, side=side, qty=qty, stop_price=stop)  # type: ignore[arg-type]


async def wait_streams_healthy(engine: Engine) -> None:
    assert await engine.streams_ready(timeout=30), "the fake venue's streams never came up"


def assert_never_falsely_closed(record: PositionRecord, venue: FakeVenue) -> None:
    """I1 against ground truth: a record that says gone must match a venue that is flat."""
    if record.state in (State.CLOSED, State.CLOSED_EXTERNALLY, State.REJECTED):
        assert venue.truth.position(record.symbol) is None, (
            f"record says {record.state} but the venue holds {venue.truth.position(record.symbol)}"
        )
