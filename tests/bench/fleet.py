"""A fleet for the scale and recovery benchmarks: an Engine on a fake venue with many symbols.

Not a benchmark itself: what ``bench_scale`` and ``bench_recovery`` share. Both run the real
`Engine` (supervised actors, evidence board, audit) against `FakeVenue` with
``synthetic_markets(n)`` (every market at price 10.0) and a private redis-server, on anyio's
asyncio backend in wall-clock time.

The venue places stops as separate reduce-only orders (``supports_attached_stop=False``,
Binance-like), so every open position is backed on the venue by a position *and* a stop order
and the audit compares three lists of 1,000 (positions, stop orders, records), the heavier
case. Nothing here asserts on time; a fleet that does not end up as expected (an open that is
not protected) stops the script with `SystemExit`, because its figures would mean nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from posguard.actors.context import TransitionObserver
from posguard.actors.intents import OpenIntent
from posguard.actors.lifecycle import SymbolActor, Ticket
from posguard.actors.records import State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, synthetic_markets
from posguard.supervisor.engine import Engine
from posguard.supervisor.supervision import AuditSettings, SupervisorSettings

PRICE = 10.0  # every synthetic market's starting price
QTY = 1.0
STOP = 9.8  # 2 % below the price, for buys
REST_LATENCY = 0.02
"""A realistic REST round trip for a nearby exchange endpoint (20 ms)."""
QUIET_AUDIT = AuditSettings(interval=3600.0)
"""No periodic audit during a measurement (the start-up audit still runs)."""


def run_async(func: Callable[..., Awaitable[None]], *args: object) -> None:
    """`anyio.run` on the asyncio backend (real time); a `SystemExit` raised inside a task
    group ends the script with its message rather than an exception-group traceback."""
    try:
        anyio.run(func, *args, backend="asyncio")
    except* SystemExit as group:
        raise SystemExit(f"benchmark stopped: {group.exceptions[0]}") from None


def quiet_logging() -> None:
    """Errors only: the figures are for posguard's work, not for formatting log lines."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


def fleet_venue(symbols: int, *, seed: int = 11, rest_latency: float = REST_LATENCY) -> FakeVenue:
    """A well-behaved fake venue listing ``symbols`` synthetic markets; enter it with ``async with``."""
    return FakeVenue(
        seed=seed,
        knobs=FaultKnobs(rest_latency=rest_latency),
        markets=synthetic_markets(symbols),
        supports_attached_stop=False,
    )


def entry(intent_id: str, symbol: str) -> OpenIntent:
    """A long of 1.0 at the synthetic price 10.0, stop at 9.8."""
    return OpenIntent(intent_id=intent_id, symbol=symbol, side="buy", qty=QTY, stop_price=STOP)


@dataclass
class Booted:
    """A running engine and when its start began and ended (``time.perf_counter``)."""

    engine: Engine
    began: float
    """Before the Redis client was opened: the engine's own start from nothing."""
    run_started: float
    """`Engine.run` reported started: markets loaded, an actor created per live record."""


@asynccontextmanager
async def running_engine(
    redis_url: str,
    venue: FakeVenue,
    account: str,
    *,
    supervisor: SupervisorSettings | None = None,
    audit: AuditSettings = QUIET_AUDIT,
    observers: Sequence[TransitionObserver] = (),
    prepare: Callable[[Engine], None] | None = None,
    seed: int = 5,
) -> AsyncIterator[Booted]:
    """Open a Redis client, build an `Engine` and start it; cancel everything on exit.

    ``prepare`` is called with the engine before it starts (to instrument it).

    Leaving the block is how the benchmarks "stop the process": the task group is cancelled
    (no graceful drain), and the venue and redis-server live on for the next engine.
    """
    began = time.perf_counter()
    async with open_redis(redis_url) as client, anyio.create_task_group() as tg:
        engine = Engine(
            venue=venue,
            store=RedisStore(client, account),
            cache=RedisEventCache(client, account),
            settings=ActorSettings(account=account),
            supervisor=supervisor,
            audit=audit,
            rng=random.Random(seed),
            observers=observers,
        )
        if prepare is not None:
            prepare(engine)
        await tg.start(engine.run)
        yield Booted(engine, began, time.perf_counter())
        tg.cancel_scope.cancel()


async def steady(engine: Engine, timeout: float = 60.0) -> None:
    """Streams connected and the start-up audit done: the engine is in steady state."""
    if not await engine.streams_ready(timeout=timeout):
        raise SystemExit("the fake venue's streams never came up")
    with anyio.fail_after(timeout):
        while engine.auditor.runs == 0:
            await anyio.sleep(0.005)


def is_idle(actor: SymbolActor) -> bool:
    """The actor is parked on its empty mailbox (its supervised task is waiting to receive)."""
    return actor.statistics().waiting_for_work


async def wait_idle(actors: Iterable[SymbolActor], timeout: float = 120.0) -> None:
    """Wait until every actor has finished starting and is waiting on its mailbox.

    Looks at one actor at a time, going on only once it is idle, so that 10,000 actors cost
    about 10,000 looks, not 10,000 every 2 ms (which made the benchmark its own bottleneck)."""
    pending = list(actors)
    with anyio.fail_after(timeout):
        while pending:
            while pending and is_idle(pending[-1]):
                pending.pop()
            if pending:
                await anyio.sleep(0.005)


@dataclass
class Opened:
    count: int
    seconds: float
    """Wall time from the first submit to the last position protected."""


async def open_positions(engine: Engine, symbols: Sequence[str], prefix: str) -> Opened:
    """Open one protected long per symbol, all at once; stop the script if any is not protected."""
    tickets: list[Ticket] = []
    started = time.perf_counter()

    async def one(number: int, symbol: str) -> None:
        ticket = await engine.submit(entry(f"{prefix}-{number}", symbol))
        tickets.append(ticket)
        await ticket.wait()

    async with anyio.create_task_group() as tg:
        for number, symbol in enumerate(symbols):
            tg.start_soon(one, number, symbol)
    seconds = time.perf_counter() - started
    bad = [t.result for t in tickets if t.result is None or t.result.outcome != State.PROTECTED]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(symbols)} opens did not end protected, e.g. {bad[0]}")
    return Opened(len(symbols), seconds)


def check_venue(venue: FakeVenue, symbols: Iterable[str]) -> None:
    """Ground truth: every symbol holds a position with a stop covering it."""
    bare = [s for s in symbols if venue.truth.position(s) is None or not venue.truth.open_stops(s)]
    if bare:
        raise SystemExit(f"{len(bare)} symbols lack a position or a stop on the venue, e.g. {bare[0]}")
