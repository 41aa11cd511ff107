"""Records, snapshots and an actor context for the tests of the entry-evidence rules."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ObjectReceiveStream

from posguard.actors.context import ActorContext
from posguard.actors.intents import OpenIntent
from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.positions import RedisStore
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.simulated import FakeVenue
from posguard.streams.venue.events import Execution, Order, OrderSide, Position, PositionSide, VenueEvent
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, ClockHeld

SOL = "SOL/USDT:USDT"
ETH = "ETH/USDT:USDT"
COID = "pgtest-twin-e"
SENT_MS = 1_000_000


def entry_record(symbol: str = SOL, *, side: OrderSide = "buy", qty: float = 1.0, sent_ms: int = SENT_MS,
                 client_order_id: str = COID) -> PositionRecord:
    """A record whose entry order was sent at ``sent_ms`` and is being verified."""
    return PositionRecord(
        symbol=symbol, intent_id="twin", state=State.VERIFYING, side=side, qty=qty,
        stop_price=140.0 if side == "buy" else 160.0, client_order_id=client_order_id, sent_ms=sent_ms,
    )


def order(symbol: str = SOL, *, filled: float = 1.0, status: str = "filled", side: OrderSide = "buy",
          price: float = 150.0, ts_ms: int = SENT_MS + 5, client_order_id: str = COID) -> Order:
    return Order(
        symbol=symbol, order_id=f"o-{symbol}-{client_order_id}", client_order_id=client_order_id, side=side,
        kind="market", qty=1.0, filled=filled, avg_price=price if filled else None, status=status,  # type: ignore[arg-type]
        reduce_only=False, stop_price=None, ts_ms=ts_ms,
    )


def execution(exec_id: str, symbol: str = SOL, *, qty: float = 1.0, side: OrderSide = "buy", price: float = 150.0,
              ts_ms: int = SENT_MS + 5, client_order_id: str = COID) -> Execution:
    return Execution(
        symbol=symbol, exec_id=exec_id, order_id=f"o-{symbol}-{client_order_id}", client_order_id=client_order_id,
        side=side, qty=qty, price=price, ts_ms=ts_ms,
    )


def snapshot(size: float, *, seq: int, ts_ms: int = SENT_MS + 5, symbol: str = SOL,
             side: PositionSide = "long") -> Position:
    """A position snapshot; ``size == 0`` is the venue saying "flat"."""
    return Position(
        symbol=symbol, side=side if size else "flat", size=size, entry_price=150.0 if size else 0.0,
        stop_price=None, seq=seq, ts_ms=ts_ms,
    )


async def unchecked(intent: OpenIntent) -> OpenIntent:
    """The entry check of a context that is given no intents (these tests drive its parts)."""
    return intent


@asynccontextmanager
async def actor_context(redis_url: str, clock: IOAwareMockClock, venue: FakeVenue) -> AsyncIterator[ActorContext]:
    """What an actor is given, on ``venue`` (entered) and a real Redis, with an empty board."""
    settings = ActorSettings(account=ACCOUNT)
    async with open_redis(redis_url) as client:
        yield ActorContext(
            venue=venue, store=ClockHeld(RedisStore(client, settings.account), clock),  # type: ignore[arg-type]
            board=EvidenceBoard(), rules=dict(venue.rules), settings=settings, entry_check=unchecked,
            rng=random.Random(7),
        )


@asynccontextmanager
async def board_fed_by(venue: FakeVenue) -> AsyncIterator[EvidenceBoard]:
    """A board the venue's private stream pushes into for the block, as the ingestor does."""
    board = EvidenceBoard()
    send, receive = anyio.create_memory_object_stream[VenueEvent](math.inf)

    async def feed(events: ObjectReceiveStream[VenueEvent]) -> None:
        async for event in events:
            board.apply(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(venue.stream, send)
        tg.start_soon(feed, receive)
        yield board
        tg.cancel_scope.cancel()
