"""Scale: 10,000 live symbol actors in one process, a full audit of 10,000 positions, and a
start with 10,000 records.

    python -m tests.bench.bench_scale [--symbols 1000] [--audits 11]     # issue 16: --symbols 10000

Why: posguard runs one supervised actor per symbol in one process, and audits the whole
account (every position, every open order, every Redis record) at start-up, periodically,
and after stream reconnects. Both must stay cheap at the scale of a large account. Issue 16's
targets at 10,000 symbols: <= 15 KiB resident per idle actor; a full audit in 500 ms plus the
venue's own latency; the first entry accepted within 3 s of a start with 10,000 records;
opening 100 / 1,000 / 5,000 positions at once growing linearly.

What it does, in real time on anyio's asyncio backend, with the real `Engine` against
`FakeVenue` (``synthetic_markets``, 20 ms REST round trips, stops as separate orders) and a
private redis-server:

1. Memory of idle actors: resident set size (RSS) before and after creating one supervised
   actor per symbol (``ActorRegistry.get_or_start``, as the first intent for a symbol would) and waiting
   until each is parked on its empty mailbox. Then the same on a second engine under
   tracemalloc, for the Python-heap share and where it goes.
2. Opens 100, then 1,000, then 5,000 protected longs at once (as far as ``--symbols`` goes),
   then the rest, so every symbol holds a position; each batch with the actors' REST calls and
   the position lists they asked for (one symbol / the whole account, the fake venue's log).
   RSS with every position open: the fake venue lives in this process, so that figure
   includes the venue's own bookkeeping (an upper bound).
3. Times ``--audits`` full audits (``Engine.audit_now``) of all positions, stop orders and
   records, at 20 ms REST and with the venue's latency set to 0, next to the venue's own
   latency (an audit makes two REST calls: fetch_positions, fetch_open_orders) and a
   breakdown of the audit's parts, the records read both ways side by side.
4. Two new engines, one after the other, on the account's records (`bench_recovery`'s start):
   start to the first entry accepted (written ahead) and protected.

Prints tables, with the README's figures from before issue 16 beside them; asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from posguard.actors.lifecycle.repairs import assess
from posguard.actors.records import PositionRecord, decode_record
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, synthetic_markets
from posguard.streams.simulated.venue import ACCOUNT
from posguard.streams.venue.events import Order, Position
from posguard.supervisor.engine import Engine
from posguard.supervisor.redis_server import start_redis_server
from tests.bench.bench_recovery import one_start
from tests.bench.common import machine, ms, percentile, print_table, rss_bytes
from tests.bench.fleet import (
    REST_LATENCY,
    check_venue,
    fleet_venue,
    open_positions,
    quiet_logging,
    run_async,
    running_engine,
    steady,
    wait_idle,
)

KIB = 1024
MIB = 1024 * 1024
TARGET_ACTOR_BYTES = 15 * KIB
TARGET_AUDIT_SECONDS = 0.5
"""Issue 16's targets at 10,000 symbols: a full audit in 500 ms plus the venue's latency, the
first entry accepted within 3 s of a start with 10,000 records, <= 15 KiB per idle actor."""
TARGET_STARTUP_SECONDS = 3.0
REPO = Path(__file__).resolve().parents[2]


def settled_rss() -> int:
    """RSS after a full collection (so garbage waiting for the collector is not counted)."""
    gc.collect()
    return rss_bytes()


async def idle_actors(engine: Engine, symbols: list[str]) -> float:
    """Create one supervised actor per symbol and wait until all are parked; wall seconds."""
    started = time.perf_counter()
    for symbol in symbols:
        engine.actors.get_or_start(symbol)
    await wait_idle(engine.actors[s] for s in symbols)
    return time.perf_counter() - started


async def traced_actors(redis_url: str, count: int, symbols: list[str]) -> tuple[int, list[tuple[str, int]]]:
    """Python-heap bytes of ``len(symbols)`` idle actors on a second engine (its own venue and
    account) under tracemalloc, and the files that allocated most of it."""
    async with fleet_venue(count, seed=12) as venue, running_engine(redis_url, venue, "scale-traced") as booted:
        engine = booted.engine
        await steady(engine)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await idle_actors(engine, symbols)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    stats = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in stats)
    top = [(s.traceback[0].filename, s.size_diff) for s in stats[:6]]
    return total, top


def short_path(path: str) -> str:
    """A source file's path from its package (``anyio/streams/memory.py``, ``asyncio/locks.py``)."""
    if path == "<string>":
        return "<string> (generated __init__s: anyio's memory-stream state)"
    parts = Path(path).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    if path.startswith(str(REPO) + "/"):
        return path[len(str(REPO)) + 1:]
    for index, part in enumerate(parts):
        if part.startswith("python3"):
            return "/".join(parts[index + 1:])
    return path


async def timed(calls: int, make: Callable[[], Awaitable[Any]]) -> list[float]:
    """Wall seconds of ``calls`` sequential awaits of ``make()``."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await make()
        times.append(time.perf_counter() - started)
    return times


OPEN_BATCHES = (100, 1_000, 5_000)
"""Positions opened at once, one batch after the other (each on symbols of its own). No faults:
an open here makes no position-list call at all (the columns show it), so what grows with the
batch is the engine's own work; the fallbacks' one-symbol lists are tests/test_one_symbol_fallbacks.py's."""
SPARE = 4  # symbols with no position, for the entries submitted at start-up
STARTS = 2
BEFORE = {
    # The README's figures before issue 16 (bench_scale at 1,000 symbols; the opens at once
    # and the 10,000-symbol run as the issue measured them; same machine, another day).
    "open 100": 0.9, "open 1000": 11.0, "open 5000": 117.0,
    "audit 1000 p50": 0.0948, "rss per actor": 12.9 * KIB,
    "startup accepted 1000": (0.456, 0.508),
}


async def open_batches(engine: Engine, venue: FakeVenue, symbols: list[str]) -> list[list[str]]:
    """Open ``OPEN_BATCHES`` at once one after the other, then the rest of ``symbols`` (so each
    holds a position for the audits); a row per batch."""
    rows: list[list[str]] = []
    done = 0
    for size in [*OPEN_BATCHES, 0]:
        if size and done + size > len(symbols):
            continue
        batch = symbols[done:done + size] if size else symbols[done:]
        if not batch:
            break
        lists_before, rest_before = Counter(venue.position_lists), engine.ctx.rest_calls.total()
        opened = await open_positions(engine, batch, f"scale-{done}")
        asked = venue.position_lists - lists_before
        account = asked[ACCOUNT]
        before = BEFORE.get(f"open {size}")
        rows.append([
            f"{len(batch)}" + ("" if size else " (the rest, to fill the account)"), str(done),
            f"{opened.seconds:.2f} s", f"{opened.seconds / len(batch) * 1000:.2f} ms",
            f"{before:.1f} s" if before is not None and size else "",
            str(engine.ctx.rest_calls.total() - rest_before), f"{sum(asked.values()) - account} / {account}",
        ])
        done += len(batch)
    return rows


async def run(redis_url: str, count: int, audits: int) -> None:
    markets = list(synthetic_markets(count + SPARE))
    symbols, spare = markets[:count], markets[count:]
    async with fleet_venue(count + SPARE) as venue:
        async with running_engine(redis_url, venue, "scale") as booted:
            engine = booted.engine
            await steady(engine)
            await anyio.sleep(0.2)

            # 1. idle actors: RSS
            rss_base = settled_rss()
            create_s = await idle_actors(engine, symbols)
            await anyio.sleep(0.2)
            rss_idle = settled_rss()
            per_actor = (rss_idle - rss_base) / count

            # 2. one protected position per symbol, opened in batches at once
            open_rows = await open_batches(engine, venue, symbols)
            check_venue(venue, symbols)
            await anyio.sleep(0.5)  # let the last pushes reach the board and the event cache
            rss_positions = settled_rss()

            # 3. full audits
            rows = []
            audit_times: dict[float, list[float]] = {}
            orders_seen = await venue.fetch_open_orders()
            for latency in (REST_LATENCY, 0.0):
                venue.knobs.rest_latency = latency
                reports = []
                times = []
                for _ in range(audits):
                    started = time.perf_counter()
                    report = await engine.audit_now()
                    times.append(time.perf_counter() - started)
                    if report is None:
                        raise SystemExit("an audit could not read the venue or Redis")
                    reports.append(report)
                audit_times[latency] = times
                venue_s = 2 * latency
                last = reports[-1]
                rows.append([
                    f"{latency * 1000:.0f} ms", str(last.positions), str(len(orders_seen)), str(last.records),
                    str(sum(len(r.findings) for r in reports)), ms(percentile(times, 50)), ms(max(times)),
                    ms(venue_s), ms(percentile(times, 50) - venue_s), ms(max(times) - venue_s),
                ])
            parts = await audit_parts(engine, venue, audits)
            venue.knobs.rest_latency = REST_LATENCY

        # 4. a new engine on the account's records: start-up to the first accepted entry
        startups = [await one_start(redis_url, venue, n, spare[n % len(spare)], account="scale") for n in range(STARTS)]

    traced, top = await traced_actors(redis_url, count, symbols)

    before_rss = BEFORE["rss per actor"]
    print_table(
        f"memory: {count} idle supervised actors (resident set size of this process, after gc.collect())",
        ["measure", "value", "target", "before (README, 1,000 actors)"],
        [
            ["RSS before (engine up, streams on, no actors)", f"{rss_base / MIB:.1f} MiB", "", ""],
            [f"RSS with {count} idle actors", f"{rss_idle / MIB:.1f} MiB", "", ""],
            ["RSS per idle actor", f"{per_actor / KIB:.1f} KiB",
             f"<= {TARGET_ACTOR_BYTES // KIB} KiB: {'met' if per_actor <= TARGET_ACTOR_BYTES else 'NOT met'}",
             f"{before_rss / KIB:.1f} KiB"],
            ["Python heap per idle actor (tracemalloc)", f"{traced / count / KIB:.1f} KiB", "", ""],
            [f"time to create {count} actors and reach their mailbox wait", ms(create_s), "", ""],
            [f"RSS with {count} protected positions (+ fake venue in-process)", f"{rss_positions / MIB:.1f} MiB", "", ""],
            ["  growth per position over idle actors (upper bound)",
             f"{(rss_positions - rss_idle) / count / KIB:.1f} KiB", "", ""],
        ],
    )
    print_table(
        "where an idle actor's Python heap goes (tracemalloc, by file, per actor)",
        ["file", "bytes per actor"],
        [[short_path(name), f"{size / count:.0f}"] for name, size in top],
    )
    print_table(
        "opening positions at once (20 ms REST, stops as separate orders; batches one after the other)",
        ["opened at once", "already open", "first submit -> last protected", "per position",
         "issue 16's figures", "actors' REST calls", "position lists asked: one symbol / whole account"],
        open_rows,
    )
    print_table(
        f"full audit of {count} positions + stop orders + records (Engine.audit_now, {audits} runs per row, wall clock)",
        ["venue REST", "positions", "open stop orders", "records", "findings", "p50", "max", "venue latency (2 calls)",
         "p50 - venue", "max - venue"],
        rows,
    )
    worst = max(audit_times[REST_LATENCY]) - 2 * REST_LATENCY
    print(f"target: {ms(TARGET_AUDIT_SECONDS)} plus the venue's latency at 10,000: "
          f"{'met' if worst <= TARGET_AUDIT_SECONDS else 'NOT met'} (worst {ms(worst)} over the venue at 20 ms REST; "
          f"before: {ms(BEFORE['audit 1000 p50'])} p50 at 1,000)")
    print_table(
        f"an audit's parts, each timed alone ({audits} runs; REST latency 0)",
        ["part", "p50", "max"],
        [[name, ms(percentile(times, 50)), ms(max(times))] for name, times in parts],
    )
    low, high = BEFORE["startup accepted 1000"]
    print_table(
        f"start-up with {count} live protected records in Redis (each row a new engine; ms from before its Redis "
        f"client is opened; before, with 1,000 records: entry accepted after {ms(low)}-{ms(high)})",
        ["start", "live records", "run started", "last actor resumed", "start-up audit done", "entry accepted",
         "target", "entry protected", "audit findings"],
        [[str(n + 1), str(s.live_records), ms(s.run_started), ms(s.last_resumed), ms(s.audited), ms(s.accepted),
          f"<= {TARGET_STARTUP_SECONDS:.0f} s: {'met' if s.accepted <= TARGET_STARTUP_SECONDS else 'NOT met'}",
          ms(s.done), str(len(s.audit.findings) if s.audit else "?")]
         for n, s in enumerate(startups)],
    )


async def audit_parts(engine: Engine, venue: FakeVenue, audits: int) -> list[tuple[str, list[float]]]:
    """What one audit spends its time on (venue latency 0: the fake venue's own CPU only),
    with the records read both ways side by side: today's screened read, and the HGETALL
    pipeline with `decode_record` per hash that it replaced."""
    venue.knobs.rest_latency = 0.0
    positions: list[Position] = await venue.fetch_positions()
    orders: list[Order] = await venue.fetch_open_orders()
    records: list[PositionRecord] = await engine.store.list_records()
    by_symbol = {p.symbol: p for p in positions}
    stops: dict[str, list[Order]] = {}
    for order in orders:
        stops.setdefault(order.symbol, []).append(order)
    by_record = {r.symbol: r for r in records}

    store = engine.store
    assert isinstance(store, RedisStore)
    symbols_in_redis = sorted(await store.client.smembers(store.keys.positions))

    async def read_hashes() -> list[dict[str, str]]:
        async with store.client.pipeline(transaction=False) as pipe:
            replies = [pipe.hgetall(store.keys.position(symbol)) for symbol in symbols_in_redis]
        return [dict(await reply) for reply in replies]

    hashes = await read_hashes()

    async def parse_records() -> None:
        for fields in hashes:
            decode_record(fields)

    async def old_path() -> None:
        for fields in await read_hashes():
            decode_record(fields)

    async def assess_all() -> None:
        for symbol in sorted(set(by_symbol) | set(by_record)):
            assess(symbol, by_record.get(symbol), by_symbol.get(symbol), stops.get(symbol, []), actor_busy=False)

    return [
        ("venue fetch_positions (fake venue's CPU, 0 ms REST)", await timed(audits, venue.fetch_positions)),
        ("venue fetch_open_orders (fake venue's CPU, 0 ms REST)", await timed(audits, venue.fetch_open_orders)),
        (f"Redis read_records ({len(records)} records: screened script + msgspec)",
         await timed(audits, engine.store.read_records)),
        (f"  before: {len(hashes)} HGETALL in 1 pipeline + decode_record each", await timed(audits, old_path)),
        (f"    of which {len(hashes)} HGETALL in 1 pipeline (coredis)", await timed(audits, read_hashes)),
        (f"    of which {len(hashes)} x decode_record", await timed(audits, parse_records)),
        (f"assess {len(by_symbol | by_record)} symbols (pure CPU)", await timed(audits, assess_all)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--audits", type=int, default=11)
    args = parser.parse_args()
    quiet_logging()
    print(f"machine: {machine()}")
    print("asyncio backend, real time; Redis is a private redis-server on this machine")
    started = time.perf_counter()
    with start_redis_server() as server:
        run_async(run, server.url, args.symbols, args.audits)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
