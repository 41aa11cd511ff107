"""Ingest throughput: Bybit pushes -> posguard events -> evidence board, Redis, actor mailboxes.

    python -m tests.bench.bench_ingest [--events 48000] [--symbols 1000]

Why: every fill, order update and position update the venue pushes passes through one
ingestor before any actor can act on it. The issue's target: >= 20,000 events/s on one core,
for 1,000 symbols, on a real redis-server, on the asyncio backend, counting the decode, the
Redis journal and cache writes and the fan-out to the actors; with CPU per event and Redis
round trips per event (how well pipelining amortises them).

What runs, in wall-clock time on anyio's asyncio backend, in this one process plus a private
redis-server (`start_redis_server`, no persistence) on the same machine:

* The production decode path for Bybit. Each push is a WebSocket text frame in Bybit V5's
  shape (built with the emulator's payload functions, ``posguard.streams.emulators.bybit.payloads``), handed
  to ccxt.pro's client the way its socket reader does (``Client.handle_text_or_binary_message``),
  two ways: the wire-frame path (posguard's msgspec decoder, `posguard.streams.ccxt_adapter.frames`,
  reads the frame straight into events; what production runs) and, as the baseline, the path
  before it (the decoder off: orjson parse, then `HookedBybit`: ccxt's own handler and caches,
  then posguard's hook, which parses the item again with ccxt and maps it with
  `posguard.streams.ccxt_adapter.mapping`; what every frame the decoder declines still takes). Either way
  then through `PrivateStream` (the real `CcxtVenue.stream`: symbol filter, unbounded outbox,
  forwarder) into the engine's 65,536-slot stream. The `CcxtVenue` is real; only its REST market list and
  clock are answered in-process and its three watch calls wait forever, so nothing connects
  anywhere (the URLs point at 127.0.0.1 and ``loopback_only`` is on).
* `Engine.ingestor` exactly as `Engine` wires it: `EvidenceBoard.apply`, then `EventRouter.route`
  (nudges the symbol's `SymbolActor` when its record may be live), then one `RedisEventCache.write`
  per batch (up to 1,024 events: one fenced script call). The cache is wrapped only to time each call.
* 1,000 supervised `SymbolActor`s (``ActorRegistry.get_or_start``), none with a live record (an
  account opening and closing as fast as this is a stress of the push path, not of the actors):
  no push nudges them (`Store.may_be_live`). Table 1 shows what a nudge costs when one is
  due (the actor reads its record from Redis, ``follow_venue``).

Steady state, not a cold start: the Redis event journal is pre-filled to its cap
(``EVENTS_MAXLEN``, so every XADD trims) and every symbol's execution ring on the board is
full (256), as in a long-running busy
account. Event mix, per trade cycle of one symbol (8 pushes, cycles interleaved at random
across the symbols): entry order new + filled, entry fill, position open, stop order armed +
filled, stop fill (nudges the actor), position flat (nudges the actor): 50 % orders, 25 %
executions, 25 % positions.

Scenarios (rows of tables 2 and 3), each with fresh ids, through the same running engine:

* events in (no decode): the same pushes, already decoded (as `FakeVenue` pushes Structs),
  sent into the engine's stream by a producer that never yields (the stream fills, batches
  are 1,024: pipelining at its best) or that yields after every event;
* Bybit frames, 256 per socket read: the whole path at saturation, 256 frames handled back to
  back per event-loop turn, as a busy socket delivers them; through ccxt (the baseline) and
  through the msgspec decoder (the wire-frame path);
* Bybit frames, 1 per socket read: the same, back to the loop after every frame;
* Bybit frames (wire-frame path) arriving at a quarter of its measured capacity, evenly spaced: CPU and round
  trips per event at a sustainable load, and push -> board latency (every 16th push, from its
  arrival to applied and routed). Saturated rows show no latency: it is time queued behind
  the backlog (`PrivateStream`'s outbox is unbounded), which grows with the run's length.

Tables: (1) each stage alone, CPU per event; (2) end to end: throughput, CPU per event of
this process and of redis-server; (3) Redis round trips and batching; (4) the target and
where we stand ("on one core": this process is single-threaded and runs at 100 % of one
core when saturated; events per CPU-second is the one-core figure). Prints; asserts nothing.

Table 1 also measures the Redis write three ways on the same events: the fenced script of
generic commands the cache used before (``FencedBatch``: every HSET/EXPIRE/XADD spelled out,
field names included), the dedicated fenced ingest script it uses now (`INGEST_SCRIPT`: values
only), and a plain pipeline of the same commands (unfenced, so not usable as it is: the fence
check and the write must be one atomic step; shown for the comparison).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import coredis
from coredis.tokens import PureToken
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from posguard.actors import ids
from posguard.actors.lifecycle import ActorStatistics
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.event_cache import EVENTS_MAXLEN, ORDER_TTL_SECONDS, RedisEventCache
from posguard.actors.store.health import StreamHealth, encode_fields
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import Fence
from posguard.actors.store.positions import RedisStore
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.engine.matching import EmuExecution, EmuOrder, EmuPosition
from posguard.streams.emulators.engine.instruments import Instrument
from posguard.streams.emulators.bybit.instruments import instrument_payload
from posguard.streams.emulators.bybit.payloads import execution_payload, order_payload, position_payload
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.ingestion.ingestor import MAX_BATCH, Ingestor
from posguard.streams.simulated import synthetic_markets
from posguard.streams.venue.events import (
    Execution,
    Heartbeat,
    Order,
    Position,
    StreamStatus,
    VenueEvent,
    decode_event,
    encode_event,
)
from posguard.streams.venue.markets import MarketRules
from posguard.supervisor.engine import STREAM_BUFFER, Engine
from posguard.supervisor.redis_server import start_redis_server
from tests.bench.common import machine, percentile, print_table
from tests.bench.fleet import quiet_logging, run_async, wait_idle

TARGET_EVENTS_PER_SECOND = 20_000
ACCOUNT = "bench-ingest"
PRICE, QTY, STOP = 10.0, 1.0, 9.8
CYCLE = 8  # pushes per trade cycle of one symbol
STAGE_EVENTS = 12_000
BASE_MS = 1_760_000_000_000
SAMPLE = 16  # every 16th push is timed from hand-over to board
PACED_SECONDS = 6.0
CACHE_1_EVENTS = 2_000
Frame = tuple[str, str]  # (Bybit topic, the text frame)
Cycle = list[tuple[str, dict[str, Any]]]  # one trade cycle's pushes: (Bybit topic, payload)
Producer = Callable[[], Coroutine[Any, Any, None]]


# -- venue pushes --------------------------------------------------------------------------


def instrument(symbol: str) -> Instrument:
    """The Bybit instrument behind a synthetic market ("S0001/USDT:USDT" -> S0001USDT)."""
    base = symbol.split("/")[0]
    return Instrument(
        symbol=f"{base}USDT", base=base, quote="USDT", settle="USDT", contract_type="LinearPerpetual",
        price=PRICE, tick="0.001", step="0.1", min_qty="0.1", max_qty="100000.0", min_notional="5",
    )


def cycle_templates(inst: Instrument) -> Cycle:
    """One trade cycle's eight pushes, (topic, payload), in Bybit V5's shape, ids left blank."""
    entry = EmuOrder(order_id="", link_id="", symbol=inst.symbol, side="Buy", qty=QTY, reduce_only=False,
                     close_on_trigger=False, created_ms=0, updated_ms=0, stop_loss=STOP, last_price_on_created=PRICE)
    new = order_payload(entry, inst)
    entry.status, entry.cum_qty, entry.cum_value = "Filled", QTY, QTY * PRICE
    filled = order_payload(entry, inst)
    fill = execution_payload(EmuExecution(exec_id="", order=entry, side="Buy", price=PRICE, qty=QTY, exec_type="Trade",
                                          time_ms=0, closed_size=0.0, leaves_qty=0.0, seq=0), inst, {inst.symbol: PRICE})
    opened = position_payload(EmuPosition(symbol=inst.symbol, side="Buy", size=QTY, avg_price=PRICE, stop_loss=STOP),
                              inst, PRICE)
    stop = EmuOrder(order_id="", link_id="", symbol=inst.symbol, side="Sell", qty=QTY, reduce_only=True,
                    close_on_trigger=True, created_ms=0, updated_ms=0, status="Untriggered", trigger_price=STOP,
                    trigger_direction=2, stop_order_type="Stop", last_price_on_created=PRICE)
    armed = order_payload(stop, inst)
    stop.status, stop.cum_qty, stop.cum_value = "Filled", QTY, QTY * STOP
    triggered = order_payload(stop, inst)
    stop_fill = execution_payload(EmuExecution(exec_id="", order=stop, side="Sell", price=STOP, qty=QTY, exec_type="Trade",
                                               time_ms=0, closed_size=QTY, leaves_qty=0.0, seq=0), inst, {inst.symbol: STOP})
    flat = position_payload(EmuPosition(symbol=inst.symbol, realised_pnl=-0.2), inst, STOP)
    return [("order", new), ("order", filled), ("execution", fill), ("position", opened),
            ("order", armed), ("order", triggered), ("execution", stop_fill), ("position", flat)]


def build_frames(templates: Sequence[Cycle], count: int, tag: str, seed: int) -> list[Frame]:
    """``count`` pushes (a multiple of 8): whole trade cycles spread over the symbols, each
    symbol's pushes in order, the symbols interleaved at random. Ids are unique per ``tag``."""
    rng = random.Random(seed)
    cycles = count // CYCLE
    per_symbol = [cycles // len(templates) + (1 if s < cycles % len(templates) else 0) for s in range(len(templates))]
    deck = [s for s, n in enumerate(per_symbol) for _ in range(n * CYCLE)]
    rng.shuffle(deck)
    step = [0] * len(templates)
    frames: list[Frame] = []
    for index, s in enumerate(deck):
        cycle, position = divmod(step[s], CYCLE)
        step[s] += 1
        topic, template = templates[s][position]
        intent = f"{tag}-{s}-{cycle}"
        ts = BASE_MS + index
        payload = dict(template)
        if topic == "position":
            payload.update(updatedTime=str(ts), seq=index + 1)
        else:
            stop = position >= 4
            link = ids.stop_id(ACCOUNT, intent, 0) if stop else ids.entry_id(ACCOUNT, intent)
            order_id = f"{tag}o{s}x{cycle}{'s' if stop else 'e'}"
            if topic == "order":
                payload.update(orderId=order_id, orderLinkId=link, createdTime=str(ts - position), updatedTime=str(ts))
            else:
                payload.update(execId=f"{tag}x{index}", orderId=order_id, orderLinkId=link, execTime=str(ts), seq=index + 1)
        message = {"id": f"{tag}{index}", "topic": topic, "creationTime": ts, "data": [payload]}
        frames.append((topic, json.dumps(message, separators=(",", ":"))))
    return frames


# -- the venue, offline ----------------------------------------------------------------------


async def _wait_forever() -> object:
    await anyio.sleep_forever()
    return None


def offline_bybit(instruments: Sequence[Instrument]) -> tuple[CcxtVenue, Any]:
    """A real `CcxtVenue` for Bybit whose REST market list and clock are answered here and
    whose watch calls never connect; and the ccxt WebSocket client its private pushes use."""
    config = CcxtVenueConfig(exchange="bybit", environment="testnet", rest_url="http://127.0.0.1:9",
                             ws_url="ws://127.0.0.1:9", loopback_only=True, ready_timeout=86_400.0)
    venue = CcxtVenue(config, ApiCredentials("bench-key", "bench-secret"), rng=random.Random(3))
    exchange = venue.exchange

    async def instruments_info(params: dict[str, Any] | None = None) -> dict[str, Any]:
        listed = [] if (params or {}).get("status") == "PreLaunch" else [instrument_payload(i) for i in instruments]
        return {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": listed, "nextPageCursor": ""}}

    async def fetch_time(params: dict[str, Any] | None = None) -> int:
        return int(exchange.milliseconds())

    exchange.publicGetV5MarketInstrumentsInfo = instruments_info
    exchange.fetch_time = fetch_time
    for watch in ("watch_positions", "watch_orders", "watch_my_trades"):
        setattr(exchange, watch, _wait_forever)
    return venue, exchange


# -- measuring -------------------------------------------------------------------------------


class TimedCache:
    """`RedisEventCache` as the ingestor uses it, noting each pipeline's size and wall time."""

    def __init__(self, inner: RedisEventCache) -> None:
        self.inner = inner
        self.in_flight = 0
        self.sizes: list[int] = []
        self.seconds: list[float] = []

    async def write(self, batch: Sequence[VenueEvent]) -> None:
        self.in_flight += 1
        started = time.perf_counter()
        try:
            await self.inner.write(batch)
        finally:
            self.seconds.append(time.perf_counter() - started)
            self.sizes.append(len(batch))
            self.in_flight -= 1


class Probe:
    """Push -> board latency of every ``SAMPLE``-th push of a scenario: the producer notes when
    it hands push ``i`` over, an extra ingestor listener (after `EventRouter.route`) when event ``i``
    has been applied. A push's index is its ``ts_ms - BASE_MS`` (see `build_frames`)."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.applied: dict[int, float] = {}

    def reset(self) -> None:
        self.sent.clear()
        self.applied.clear()

    def listener(self, event: VenueEvent) -> None:
        index = event.ts_ms - BASE_MS
        if index % SAMPLE == 0 and index in self.sent and index not in self.applied:
            self.applied[index] = time.perf_counter()

    def latencies(self) -> list[float]:
        return [self.applied[i] - self.sent[i] for i in self.applied]


@dataclass
class RedisSnapshot:
    commands: int
    cpu: float
    reads: int  # HGETALL calls: the actors' record reads (the cache never reads)


async def redis_snapshot(client: coredis.Redis[str]) -> RedisSnapshot:
    stats = cast(dict[str, Any], await client.info("stats"))
    cpu = cast(dict[str, Any], await client.info("cpu"))
    commandstats = cast(dict[str, dict[str, int]], await client.info("commandstats"))
    return RedisSnapshot(
        commands=int(stats["total_commands_processed"]),
        cpu=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        reads=int((commandstats.get("cmdstat_hgetall") or {}).get("calls", 0)),
    )


@dataclass
class Run:
    name: str
    events: int
    wall: float
    cpu: float
    redis_cpu: float
    commands: int
    reads: int
    sizes: list[int] = field(default_factory=list)
    pipeline_seconds: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    paced: bool = False


def us(seconds: float, events: int) -> str:
    return f"{seconds / events * 1e6:.1f}"


# -- stages alone ----------------------------------------------------------------------------


def time_frames(client: Any, frames: Sequence[Frame]) -> dict[str, tuple[int, float]]:
    """Hand each frame to the ccxt client; per topic: (frames, CPU-ish seconds via perf_counter)."""
    handle = client.handle_text_or_binary_message
    clock = time.perf_counter_ns
    spent: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for topic, frame in frames:
        started = clock()
        handle(frame)
        spent[topic] += clock() - started
        counts[topic] += 1
    return {topic: (counts[topic], spent[topic] / 1e9) for topic in counts}


def use_decoder(exchange: Any, on: bool) -> None:
    """The msgspec frame decoder on (production) or off (every frame through ccxt, as before it)."""
    if on:
        exchange.__dict__.pop("posguard_decoder", None)
    else:
        exchange.posguard_decoder = None


async def decode_with_posguard(venue: CcxtVenue, client: Any, frames: Sequence[Frame],
                               ) -> tuple[dict[str, tuple[int, float]], list[VenueEvent]]:
    """The whole decode path (the decoder or ccxt + posguard's hook, then `PrivateStream`), timed
    per frame; the events it produced, read from the venue's stream."""
    send, receive = anyio.create_memory_object_stream[VenueEvent](len(frames) + 16)
    events: list[VenueEvent] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(venue.stream, send)
        await anyio.sleep(0.05)  # PrivateStream.run has set up its outbox and forwarder
        timings = time_frames(client, frames)
        with anyio.fail_after(60):
            while len(events) < len(frames):
                events.append(await receive.receive())
        tg.cancel_scope.cancel()
    if len(events) != len(frames):
        raise SystemExit(f"decode produced {len(events)} events from {len(frames)} frames")
    return timings, events


def fill_execution_rings(board: EvidenceBoard, symbols: Sequence[str]) -> None:
    """Every symbol's execution ring full (256 fills seen), as in a long-running busy account.
    Preloaded: replaying 256,000 fills through `apply` would take longer than the bench."""
    cap = board.executions_per_symbol
    filler = [Execution(symbol="", exec_id=f"old-{i}", order_id="", client_order_id="", side="buy", qty=QTY,
                        price=PRICE, ts_ms=BASE_MS - cap + i) for i in range(cap)]
    for symbol in symbols:
        board.preload_executions(symbol, filler)


def msgspec_alone(events: Sequence[VenueEvent]) -> float:
    """CPU seconds to decode ``events`` from posguard's own JSON (the journal's format)."""
    encoded = [encode_event(e) for e in events]
    gc.collect()
    started = time.process_time()
    for data in encoded:
        decode_event(data)
    return time.process_time() - started


async def ingest_alone(events: Sequence[VenueEvent], route: Callable[[VenueEvent], None], full_rings: bool, symbols: Sequence[str]) -> float:
    """CPU seconds of `Ingestor.ingest` (board + route, no cache) over ``events`` in batches."""
    board = EvidenceBoard()
    if full_rings:
        fill_execution_rings(board, symbols)
    ingestor = Ingestor(board, None, listeners=[route])
    gc.collect()
    started = time.process_time()
    for start in range(0, len(events), MAX_BATCH):
        await ingestor.ingest(events[start:start + MAX_BATCH])
    return time.process_time() - started


class GenericScriptCache:
    """The cache's write before the ingest script (for the comparison only): every command of
    the batch spelled out into the generic fenced script (`FencedBatch`), field names included."""

    def __init__(self, client: coredis.Redis[str], account: str) -> None:
        self.client = client
        self.keys = Keys(account)
        self.fence = Fence(account)

    async def write(self, batch: Sequence[VenueEvent]) -> None:
        keys = self.keys
        last_heard: dict[str, int] = {}
        async with self.fence.batch(self.client) as pipe:
            for event in batch:
                last_heard[_topic(event)] = event.ts_ms
                command = commands_of(keys, event)
                for name, key, args in command:
                    if name == "HSET":
                        pipe.hset(key, dict(zip(args[::2], args[1::2], strict=True)))
                    elif name == "EXPIRE":
                        pipe.expire(key, ORDER_TTL_SECONDS)
                    else:
                        pipe.xadd(key, dict(zip(args[::2], args[1::2], strict=True)), maxlen=EVENTS_MAXLEN)
            if last_heard:
                pipe.hset(keys.health, health_fields(last_heard))


class PipelineCache:
    """The same commands as one plain pipeline (for the comparison only: unfenced, so a stale
    process could write through it; the fence check and the write must be one atomic step)."""

    def __init__(self, client: coredis.Redis[str], account: str) -> None:
        self.client = client
        self.keys = Keys(account)

    async def write(self, batch: Sequence[VenueEvent]) -> None:
        keys = self.keys
        last_heard: dict[str, int] = {}
        async with self.client.pipeline(transaction=False) as pipe:
            for event in batch:
                last_heard[_topic(event)] = event.ts_ms
                for name, key, args in commands_of(keys, event):
                    if name == "HSET":
                        pipe.hset(key, dict(zip(args[::2], args[1::2], strict=True)))
                    elif name == "EXPIRE":
                        pipe.expire(key, ORDER_TTL_SECONDS)
                    else:
                        pipe.xadd(key, dict(zip(args[::2], args[1::2], strict=True)),
                                  trim_strategy=PureToken.MAXLEN, threshold=EVENTS_MAXLEN,
                                  trim_operator=PureToken.APPROXIMATELY)
            if last_heard:
                pipe.hset(keys.health, health_fields(last_heard))


def _topic(event: VenueEvent) -> str:
    return {Position: "positions", Order: "orders", Execution: "executions"}.get(type(event)) or event.topic  # type: ignore[union-attr]


def health_fields(last_heard: dict[str, int]) -> dict[str, str]:
    return {f: v for topic, ms in last_heard.items() for f, v in encode_fields(StreamHealth(last_event_ms=ms), topic=topic).items()}


def commands_of(keys: Keys, event: VenueEvent) -> list[tuple[str, str, list[Any]]]:
    """The commands the cache's schema calls for, per event (what `INGEST_SCRIPT` runs)."""
    def num(value: float | None) -> str:
        return "" if value is None else str(value)

    out: list[tuple[str, str, list[Any]]] = []
    symbol = getattr(event, "symbol", "")
    match event:
        case Heartbeat():
            return out
        case Position():
            out.append(("HSET", keys.venue_position(event.symbol), [
                "side", event.side, "size", str(event.size), "entry_price", str(event.entry_price),
                "stop_price", num(event.stop_price), "ts_ms", str(event.ts_ms)]))
        case Order() if event.client_order_id:
            key = keys.venue_order(event.client_order_id)
            out.append(("HSET", key, [
                "symbol", event.symbol, "order_id", event.order_id, "kind", event.kind, "side", event.side,
                "status", event.status, "qty", str(event.qty), "filled", str(event.filled),
                "avg_price", num(event.avg_price), "stop_price", num(event.stop_price), "ts_ms", str(event.ts_ms)]))
            out.append(("EXPIRE", key, []))
        case StreamStatus():
            out.append(("HSET", keys.health, [x for kv in encode_fields(StreamHealth(
                connected=event.connected, changed_ms=event.ts_ms, reason=event.reason), topic=event.topic).items()
                for x in kv]))
    out.append(("XADD", keys.events, ["type", type(event).__name__.lower(), "symbol", symbol,
                                      "data", encode_event(event).decode()]))
    return out


CACHE_VARIANTS: dict[str, Callable[[coredis.Redis[str], str], Any]] = {
    "generic fenced script (the cache before)": GenericScriptCache,
    "ingest script (RedisEventCache now)": RedisEventCache,
    "plain pipeline, unfenced (comparison only)": PipelineCache,
}


async def cache_alone(client: coredis.Redis[str], events: Sequence[VenueEvent], batch: int,
                      make: Callable[[coredis.Redis[str], str], Any] = RedisEventCache) -> tuple[float, float, float, int]:
    """One cache variant's ``write`` alone: (wall s, client CPU s, redis CPU s, commands)."""
    cache = make(client, ACCOUNT)
    before = await redis_snapshot(client)
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(events), batch):
        await cache.write(events[start:start + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = await redis_snapshot(client)
    return wall, cpu, after.cpu - before.cpu, after.commands - before.commands - 3


# -- end to end ------------------------------------------------------------------------------


async def prefill_journal(client: coredis.Redis[str], sample: VenueEvent) -> None:
    """The event journal at its cap, as after a day of trading (every XADD then trims)."""
    await client.eval(
        "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'type', 'execution', 'symbol', ARGV[2],"
        " 'data', ARGV[3]) end return 1",
        keys=[Keys(ACCOUNT).events],
        args=[EVENTS_MAXLEN, getattr(sample, "symbol", ""), encode_event(sample).decode()],
    )


async def drained(engine: Engine, cache: TimedCache, target: int) -> None:
    """Every event applied and journalled, and every nudged actor back on its empty mailbox."""
    ingestor = engine.ingestor
    with anyio.fail_after(120):
        while ingestor.statistics().events < target or cache.in_flight:
            await anyio.sleep(0.001)
        await actors_idle(engine)


async def actors_idle(engine: Engine) -> None:
    """Every actor back on its empty mailbox, no nudge pending."""
    while any(busy_or_due(a.statistics()) for a in engine.actors.values()):
        await anyio.sleep(0.001)


def busy_or_due(actor: ActorStatistics) -> bool:
    """The actor is working, or has a nudge still to serve, or is not parked on its mailbox."""
    return actor.nudge_pending or actor.busy or not actor.waiting_for_work


async def nudges_alone(engine: Engine, client: coredis.Redis[str], rounds: int) -> tuple[float, int, int]:
    """Nudge every idle actor ``rounds`` times (``follow_venue``: it reads its record, finds
    none, and goes back to its mailbox): (CPU s, nudges, record reads)."""
    before = await redis_snapshot(client)
    gc.collect()
    cpu = time.process_time()
    for _ in range(rounds):
        for actor in engine.actors.values():
            actor.nudge()
        await actors_idle(engine)
    cpu = time.process_time() - cpu
    after = await redis_snapshot(client)
    return cpu, rounds * len(engine.actors), after.reads - before.reads


async def measured(
    name: str, engine: Engine, cache: TimedCache, probe: Probe, client: coredis.Redis[str], events: int,
    produce: Producer, *, paced: bool = False,
) -> Run:
    probe.reset()
    gc.collect()
    await anyio.sleep(0.05)
    ingestor = engine.ingestor
    target = ingestor.statistics().events + events
    first_batch = len(cache.sizes)
    before = await redis_snapshot(client)
    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await drained(engine, cache, target)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = await redis_snapshot(client)
    ingested = ingestor.statistics()
    if ingested.events != target:
        raise SystemExit(f"{name}: {ingested.events - target + events} events ingested, expected {events}")
    if ingested.cache_failures:
        raise SystemExit(f"{name}: {ingested.cache_failures} cache writes failed")
    return Run(
        name=name, events=events, wall=wall, cpu=cpu, redis_cpu=after.cpu - before.cpu,
        commands=after.commands - before.commands - 3, reads=after.reads - before.reads,
        sizes=cache.sizes[first_batch:], pipeline_seconds=cache.seconds[first_batch:], latencies=probe.latencies(),
        paced=paced,
    )


def frame_producer(client: Any, frames: Sequence[Frame], per_read: int, probe: Probe) -> Producer:
    """ccxt's socket reader: ``per_read`` frames handled back to back (what one read of the
    socket buffer delivers under load), then back to the event loop."""
    handle = client.handle_text_or_binary_message
    sent = probe.sent

    async def produce() -> None:
        for index, (_, frame) in enumerate(frames):
            if index % SAMPLE == 0:
                sent[index] = time.perf_counter()
            handle(frame)
            if (index + 1) % per_read == 0:
                await anyio.sleep(0)

    return produce


def paced_producer(client: Any, frames: Sequence[Frame], rate: float, probe: Probe) -> Producer:
    """Frames arriving at ``rate`` per second: every millisecond or so, the frames due by then
    are handled back to back. A frame's hand-over time is when it was due (its arrival), so
    time spent waiting in the "socket" counts."""
    handle = client.handle_text_or_binary_message
    sent = probe.sent

    async def produce() -> None:
        start = time.perf_counter()
        index = 0
        while index < len(frames):
            due = min(len(frames), int((time.perf_counter() - start) * rate) + 1)
            while index < due:
                if index % SAMPLE == 0:
                    sent[index] = start + index / rate
                handle(frames[index][1])
                index += 1
            await anyio.sleep(0.001)

    return produce


def struct_producer(
    sink: MemoryObjectSendStream[VenueEvent], events: Sequence[VenueEvent], per_yield: int | None, probe: Probe,
) -> Producer:
    """Already-decoded events into the engine's stream (as `FakeVenue` pushes them): with
    ``per_yield`` None as fast as the stream takes them, else back to the loop every so many."""
    sent = probe.sent

    async def produce() -> None:
        for index, event in enumerate(events):
            if index % SAMPLE == 0:
                sent[index] = time.perf_counter()
            try:
                sink.send_nowait(event)
            except anyio.WouldBlock:
                await sink.send(event)
            if per_yield is not None and (index + 1) % per_yield == 0:
                await anyio.sleep(0)

    return produce


# -- main ------------------------------------------------------------------------------------


async def run(redis_url: str, events: int, symbols_count: int, seed: int) -> None:
    symbols = list(synthetic_markets(symbols_count))
    instruments = [instrument(s) for s in symbols]
    templates = [cycle_templates(i) for i in instruments]
    venue, exchange = offline_bybit(instruments)
    try:
        rules = await venue.load_markets()
        if len(rules) != symbols_count:
            raise SystemExit(f"the offline venue listed {len(rules)} markets, expected {symbols_count}")
        ws = exchange.client(exchange.implode_hostname(exchange.urls["api"]["ws"]["private"]["contract"]))
        async with open_redis(redis_url) as client:
            await body(venue, ws, client, rules, symbols, templates, events, seed)
    finally:
        await venue.aclose()


@dataclass
class Stages:
    ccxt_only: dict[str, tuple[int, float]]
    whole_decode: dict[str, tuple[int, float]]
    wire_decode: dict[str, tuple[int, float]]
    msgspec_decode: float
    ingest_fresh: float
    ingest_full: float
    events: int
    caches: dict[str, tuple[tuple[float, float, float, int], tuple[float, float, float, int]]]
    cache_1_events: int
    nudge: tuple[float, int, int] = (0.0, 0, 0)


async def body(
    venue: CcxtVenue, ws: Any, client: coredis.Redis[str], rules: dict[str, MarketRules],
    symbols: list[str], templates: list[Cycle], events: int, seed: int,
) -> None:
    # 1. stages alone
    time_frames(ws, build_frames(templates, STAGE_EVENTS, "warm", seed))  # warm-up, discarded
    ccxt_only = time_frames(ws, build_frames(templates, STAGE_EVENTS, "ccxt", seed + 1))
    use_decoder(venue.exchange, False)
    whole_decode, _ = await decode_with_posguard(venue, ws, build_frames(templates, STAGE_EVENTS, "whole", seed + 4))
    use_decoder(venue.exchange, True)
    wire_decode, decoded = await decode_with_posguard(venue, ws, build_frames(templates, events, "struct", seed + 2))
    cache = TimedCache(RedisEventCache(client, ACCOUNT))
    engine = Engine(venue=venue, store=RedisStore(client, ACCOUNT), cache=cache,
                    settings=ActorSettings(account=ACCOUNT), rng=random.Random(seed))
    engine.rules.update(rules)
    sample = decoded[:STAGE_EVENTS]
    await prefill_journal(client, decoded[0])
    caches = {}
    for label, make in CACHE_VARIANTS.items():
        caches[label] = (await cache_alone(client, sample, MAX_BATCH, make),
                         await cache_alone(client, sample[:CACHE_1_EVENTS], 1, make))
    stages = Stages(
        ccxt_only=ccxt_only,
        whole_decode=whole_decode,
        wire_decode=wire_decode,
        msgspec_decode=msgspec_alone(sample),
        ingest_fresh=await ingest_alone(sample, engine.router.route, False, symbols),
        ingest_full=await ingest_alone(sample, engine.router.route, True, symbols),
        events=len(sample),
        caches=caches,
        cache_1_events=CACHE_1_EVENTS,
    )

    # 2. end to end: the engine's ingestor, 1,000 actors, the real stream
    runs: list[Run] = []
    probe = Probe()
    engine.ingestor.listeners.append(probe.listener)
    send, receive = anyio.create_memory_object_stream[VenueEvent](STREAM_BUFFER)
    sink = send.clone()
    async with anyio.create_task_group() as tg:
        engine.actors.attach(tg)  # what Engine.run does before it starts the actors
        tg.start_soon(engine.ingestor.run, receive)
        tg.start_soon(engine.stream_events, send)  # CcxtVenue.stream -> PrivateStream.run
        for symbol in symbols:
            engine.actors.get_or_start(symbol)
        await wait_idle(engine.actors.values())
        fill_execution_rings(engine.board, symbols)
        stages.nudge = await nudges_alone(engine, client, 3)

        runs.append(await measured("events in (no decode), producer never yields", engine, cache, probe, client,
                                   len(decoded), struct_producer(sink, decoded, None, probe)))
        again = [with_fresh_ids(e, "again") for e in decoded]
        runs.append(await measured("events in (no decode), producer yields every event", engine, cache, probe, client,
                                   len(again), struct_producer(sink, again, 1, probe)))
        del again, decoded
        for wire in (False, True):
            use_decoder(venue.exchange, wire)
            for per_read in (256, 1):
                frames = build_frames(templates, events, f"r{per_read}{wire}", seed + per_read + 10 * wire)
                path = "msgspec decoder (wire-frame path)" if wire else "through ccxt (baseline)"
                runs.append(await measured(f"Bybit frames {path}, {per_read} per socket read", engine, cache, probe,
                                           client, len(frames), frame_producer(ws, frames, per_read, probe)))
                del frames
        capacity = max(r.events / r.wall for r in runs if r.name.startswith("Bybit frames msgspec"))
        rate = max(100.0, round(capacity / 4, -2))
        frames = build_frames(templates, max(CYCLE, int(rate * PACED_SECONDS) // CYCLE * CYCLE), "paced", seed + 3)
        runs.append(await measured(f"Bybit frames msgspec decoder, arriving at {rate:,.0f}/s (a quarter of capacity)", engine, cache,
                                   probe, client, len(frames), paced_producer(ws, frames, rate, probe), paced=True))
        sink.close()
        tg.cancel_scope.cancel()

    print_stages(stages)
    print_runs(runs)


def with_fresh_ids(event: VenueEvent, tag: str) -> VenueEvent:
    """The same event with fresh ids, so a second pass is not de-duplicated by the board."""
    match event:
        case Execution():
            return msgspec.structs.replace(event, exec_id=f"{tag}-{event.exec_id}")
    return event


def print_stages(st: Stages) -> None:
    names = {"order": "order update", "execution": "execution", "position": "position update"}
    rows: list[list[str]] = []
    totals = {"ccxt": [0.0, 0], "whole": [0.0, 0], "wire": [0.0, 0]}
    for topic in ("order", "execution", "position"):
        cells = []
        for label, timings in (("ccxt", st.ccxt_only), ("whole", st.whole_decode), ("wire", st.wire_decode)):
            n, spent = timings[topic]
            totals[label][0] += spent
            totals[label][1] += n
            cells.append(f"{spent / n * 1e6:.1f}")
        rows.append([f"decode {names[topic]}: ccxt.pro alone / through ccxt + hook / msgspec decoder",
                     " / ".join(cells), f"{st.wire_decode[topic][0]:,}"])
    rows.append(["decode, the mix: ccxt.pro alone / through ccxt + hook / msgspec decoder",
                 " / ".join(f"{spent / n * 1e6:.1f}" for spent, n in totals.values()), ""])
    rows.append(["  for reference: msgspec decode of posguard's own event JSON (decode_event)",
                 us(st.msgspec_decode, st.events), f"{st.events:,}"])
    rows.append(["ingest: board.apply + EventRouter.route, execution rings empty", us(st.ingest_fresh, st.events),
                 f"{st.events:,}"])
    rows.append(["ingest: board.apply + EventRouter.route, execution rings full (256)", us(st.ingest_full, st.events),
                 f"{st.events:,}"])
    for label, (big, one) in st.caches.items():
        for size, (wall, cpu, redis_cpu, commands), n, per in (("1,024", big, st.events, MAX_BATCH),
                                                                ("1", one, st.cache_1_events, 1)):
            rows.append([f"Redis write, {label}, batches of {size}: client CPU (wall; redis-server CPU)",
                         f"{us(cpu, n)} ({us(wall, n)}; {us(redis_cpu, n)})",
                         f"{n:,}; {-(-n // per) / n:.4f} round trips, {commands / n:.2f} commands run per event"])
    nudge_cpu, nudges, reads = st.nudge
    rows.append(["actor nudge when one is due (follow_venue reads its record: none), CPU per nudge",
                 f"{nudge_cpu / nudges * 1e6:.1f}", f"{nudges:,}, {reads / nudges:.2f} reads each"])
    print_table(
        "1. Each stage alone, one at a time. Decode: wall time of each handle call (pure CPU, nothing else "
        "running): ccxt.pro alone = orjson + ccxt's Bybit handler with no listener; through ccxt + hook = "
        "+ posguard's hook (second ccxt parse), mapping, PrivateStream._emit; msgspec decoder = "
        "the frame straight to events + PrivateStream._emit. The rest: CPU of this process. Redis calls "
        "per event: one per write call (script or pipeline); commands run: what redis-server counted, "
        "inside scripts too",
        ["stage", "µs per event", "events"], rows,
    )


def print_runs(runs: list[Run]) -> None:
    rows = []
    for r in runs:
        rows.append([
            r.name, f"{r.events:,}", f"{r.wall:.2f}", f"{r.events / r.wall:,.0f}", us(r.cpu, r.events),
            f"{r.cpu / r.wall * 100:.0f} %", f"{r.events / r.cpu:,.0f}", us(r.redis_cpu, r.events),
        ])
    print_table(
        "2. End to end: frames or events -> PrivateStream -> Engine.ingestor (board, 1,000 actors, Redis); "
        "wall clock until every event is journalled and every nudged actor is idle again",
        ["scenario", "events", "wall s", "events/s", "CPU µs/event", "CPU use", "events per CPU-s",
         "redis-server CPU µs/event"],
        rows,
    )

    rows = []
    for r in runs:
        mean = sum(r.sizes) / len(r.sizes)
        rows.append([
            r.name, f"{len(r.sizes):,}", f"{mean:,.0f} / {percentile(r.sizes, 50):,.0f} / {max(r.sizes):,}",
            f"{len(r.sizes) / r.events:.4f}", f"{r.reads / r.events:.3f}",
            f"{(len(r.sizes) + r.reads) / r.events:.3f}", f"{r.commands / r.events:.2f}",
            f"{percentile(r.pipeline_seconds, 50) * 1000:.1f} / {percentile(r.pipeline_seconds, 99) * 1000:.1f}",
            (f"{percentile(r.latencies, 50) * 1000:.1f} / {percentile(r.latencies, 99) * 1000:.1f} / "
             f"{max(r.latencies) * 1000:.1f}") if r.paced else "(saturated: backlog)",
        ])
    print_table(
        "3. Redis round trips and batching: one script call per ingested batch (what the stream holds when "
        "the ingestor comes back, <= 1,024), plus one record read per actor nudge (none here: no live "
        "records); push -> board: "
        f"every {SAMPLE}th push, from its arrival (before decode) to applied and routed, below saturation only",
        ["scenario", "cache calls", "batch mean / p50 / max", "cache calls/event", "actor reads/event",
         "Redis calls/event", "commands run/event", "cache call ms p50 / p99", "push->board ms p50 / p99 / max"],
        rows,
    )

    rows = [["target: events/s through the ingestor, on one core", f"{TARGET_EVENTS_PER_SECOND:,}", ""]]
    for label, prefix in (("wire-frame path", "Bybit frames msgspec"), ("baseline through ccxt", "Bybit frames through")):
        real = [r for r in runs if r.name.startswith(prefix) and not r.paced]
        best = max(real, key=lambda r: r.events / r.wall)
        worst = min(real, key=lambda r: r.events / r.wall)
        rows += [
            [f"{label}, best ({best.name})", f"{best.events / best.wall:,.0f}", verdict(best.events / best.wall)],
            [f"{label}, worst ({worst.name})", f"{worst.events / worst.wall:,.0f}", verdict(worst.events / worst.wall)],
            [f"{label}, events per CPU-second of this process (best); Redis calls/event",
             f"{best.events / best.cpu:,.0f}; {(len(best.sizes) + best.reads) / best.events:.4f}",
             verdict(best.events / best.cpu)],
        ]
    structs = max((r for r in runs if not r.name.startswith("Bybit")), key=lambda r: r.events / r.wall)
    rows.append([f"without any decode ({structs.name})", f"{structs.events / structs.wall:,.0f}",
                 verdict(structs.events / structs.wall)])
    print_table("4. Target and where we stand", ["measure", "events/s", "vs target"], rows)
    print()
    print(f"redis-server runs on this same {os.cpu_count()}-core machine and competes with this process for CPU; "
          "'CPU' is this process only (time.process_time), redis-server's own is shown apart (INFO cpu).")


def verdict(rate: float) -> str:
    ratio = rate / TARGET_EVENTS_PER_SECOND
    return f"{ratio:.2f}x: {'meets' if ratio >= 1 else 'below'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=48_000, help="events per end-to-end scenario (rounded to 8)")
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    events = max(CYCLE * args.symbols, args.events // CYCLE * CYCLE)
    quiet_logging()
    print(machine())
    print(f"{args.symbols:,} symbols, {events:,} events per end-to-end scenario, anyio asyncio backend, "
          f"redis-server on 127.0.0.1 on this machine")
    started = time.perf_counter()
    with start_redis_server() as server:
        run_async(run, server.url, events, args.symbols, args.seed)
    print(f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
