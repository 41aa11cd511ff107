"""The seed's algorithm and posguard, side by side on one venue in one run.

    python -m tests.bench.bench_seed_vs_posguard [--opens 1000] [--seed 1] [--concurrency 100]

Why: the claim that posguard "cannot lose a position the way the seed did" is only worth
something next to the seed's own losses under the same exchange behaviour. Both drive
``--opens`` entries through ONE fake venue (disjoint synthetic symbols, so neither sees the
other's positions) with the issue's lag distribution: position list 0.05-0.5 s with 2 %
taking 5-15 s, pushes 10-80 ms with 1 % dropped, 1 % of create-order responses lost after
the order was placed, 30 ms REST round trips.

The baseline is the seed's `open_position_atomic` as its incident report quotes it: create a
market order; sleep 1.0 s; fetch the position list and look for the symbol with size > 0; if
it is not there (or the create call raised), "roll back": poll the position list 10 times
0.5 s apart, market-close what it finds, and if it finds nothing mark the entry rolled back
and place no stop. posguard is the real `Engine` with its actors and a real redis-server.
It runs twice: on a venue that attaches the stop to the entry (Bybit) and on one where the
stop is a separate order after the fill (the baseline always places it separately).

Time is virtual (trio's MockClock; the clock stands still during Redis I/O), so the figures
are the algorithms' own latencies under the venue's simulated delays, not this machine's.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import anyio

from posguard.actors.intents import OpenIntent
from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag, synthetic_markets
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import closing_side
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.redis_server import start_redis_server
from posguard.supervisor.supervision import AuditSettings
from tests.bench.common import machine, ms, percentile, print_table
from tests.clock import IOAwareMockClock
from tests.support import running_engine, wait_streams_healthy

PRICE = 10.0  # every synthetic market starts here
QTY = 1.0
STOP = 9.8


def bench_knobs() -> FaultKnobs:
    topics = ("positions", "orders", "executions")
    return FaultKnobs(
        rest_latency=0.03,
        position_lag=Lag.realistic_position_list(),
        push_delay={t: Lag(low=0.01, high=0.08) for t in topics},
        push_drop={t: 0.01 for t in topics},
        lost_create_response_rate=0.01,
    )


@dataclass
class SideTally:
    """One algorithm's outcome, judged against the venue's ground truth."""

    name: str
    symbols: list[str]
    verified_s: list[float] = field(default_factory=list)
    protected_s: list[float] = field(default_factory=list)
    rest_calls: Counter[str] = field(default_factory=Counter)
    rolled_back: set[str] = field(default_factory=set)  # the algorithm's own verdict "not filled"


class SeedBaseline:
    """`open_position_atomic` from the seed's incident report, call for call."""

    def __init__(self, venue: FakeVenue, tally: SideTally) -> None:
        self.venue = venue
        self.tally = tally
        self.found_at: dict[str, float] = {}
        self.protected_at: dict[str, float] = {}
        self._ids = itertools.count(1)

    async def _position_found(self, symbol: str) -> bool:
        self.tally.rest_calls["fetch_positions"] += 1
        positions = await self.venue.fetch_positions()
        return any(p.symbol == symbol and p.size > 0 for p in positions)

    async def open(self, symbol: str) -> None:
        entry_id = f"seed-{next(self._ids)}"
        try:
            self.tally.rest_calls["create_order"] += 1
            await self.venue.create_order(OrderRequest(symbol=symbol, side="buy", qty=QTY, client_order_id=entry_id))
            await anyio.sleep(1.0)  # "wait 1s for settlement"
            if not await self._position_found(symbol):
                raise LookupError("Position not found after order - order may have failed")
            self.found_at[entry_id] = anyio.current_time()
            self.tally.rest_calls["place_stop"] += 1
            await self.venue.place_stop(StopRequest(
                symbol=symbol, side=closing_side("long"), qty=QTY, stop_price=STOP, client_order_id=f"{entry_id}-sl",
            ))
            self.protected_at[entry_id] = anyio.current_time()
        except (LookupError, VenueUnavailable):
            await self._roll_back(symbol, entry_id)

    async def _roll_back(self, symbol: str, entry_id: str) -> None:
        for attempt in range(10):
            if await self._position_found(symbol):
                self.tally.rest_calls["create_order"] += 1
                await self.venue.create_order(OrderRequest(
                    symbol=symbol, side="sell", qty=QTY, client_order_id=f"{entry_id}-close",
                ))
                return  # "emergency close executed": flat, and honestly so
            if attempt < 9:
                await anyio.sleep(0.5)
        self.tally.rolled_back.add(symbol)  # "Position not found after 10 attempts!"


async def run(opens: int, seed: int, concurrency: int, redis_url: str, clock: IOAwareMockClock, attached: bool) -> None:
    markets = synthetic_markets(2 * opens)
    names = list(markets)
    seed_side = SideTally("seed baseline", names[:opens])
    guard_side = SideTally("posguard", names[opens:])
    verified_at: dict[str, float] = {}
    protected_at: dict[str, float] = {}

    def observe(record: PositionRecord, _note: str) -> None:
        now = anyio.current_time()
        if record.state in (State.OPEN, State.UNVERIFIED, State.CLOSED_EXTERNALLY):
            verified_at.setdefault(record.client_order_id, now)
        if record.state is State.PROTECTED:
            verified_at.setdefault(record.client_order_id, now)  # attached stop: one step
            protected_at.setdefault(record.client_order_id, now)

    async with FakeVenue(seed=seed, knobs=bench_knobs(), markets=markets, supports_attached_stop=attached) as venue:
        baseline = SeedBaseline(venue, seed_side)
        async with running_engine(
            redis_url, venue, clock, ActorSettings(account="bench"),
            audit=AuditSettings(interval=86_400.0), observers=[observe],
        ) as engine:
            await wait_streams_healthy(engine)
            venue_calls_before = Counter(venue.calls)
            started_virtual, started_wall = anyio.current_time(), time.perf_counter()
            done = Counter[str]()

            async def guard_open(symbol: str) -> None:
                number = names.index(symbol)
                intent = OpenIntent(intent_id=f"bench-{number}", symbol=symbol, side="buy", qty=QTY, stop_price=STOP)
                await (await engine.submit(intent)).wait()

            async def worker(side: SideTally, open_one) -> None:  # noqa: ANN001
                for symbol in queue[side.name]:
                    await open_one(symbol)
                    done[side.name] += 1
                    if done[side.name] % (opens // 4) == 0:
                        print(f"  {side.name}: {done[side.name]}/{opens} opens at {anyio.current_time() - started_virtual:.0f} virtual s", flush=True)

            queue = {s.name: iter(s.symbols) for s in (seed_side, guard_side)}
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker, seed_side, baseline.open)
                    tg.start_soon(worker, guard_side, guard_open)
            ended_at = anyio.current_time()
            virtual, wall = ended_at - started_virtual, time.perf_counter() - started_wall
            records = {r.symbol: r for r in await engine.store.list_records()}
            # Everything the venue served during the run that the baseline did not ask for.
            guard_side.rest_calls = +(Counter(venue.calls) - venue_calls_before - seed_side.rest_calls)
            for internal in ("price_walk", "auto_disconnect", "rest_outage"):
                guard_side.rest_calls.pop(internal, None)

    fills = {e.client_order_id: venue.clock_time(e.ts_ms) for e in reversed(venue.truth.executions)}
    for entry_id, at in baseline.found_at.items():
        seed_side.verified_s.append(at - fills[entry_id])
    for entry_id, at in baseline.protected_at.items():
        seed_side.protected_s.append(at - fills[entry_id])
    for record in records.values():
        fill = fills.get(record.client_order_id)
        if fill is not None and record.client_order_id in verified_at:
            guard_side.verified_s.append(verified_at[record.client_order_id] - fill)
        if fill is not None and record.client_order_id in protected_at:
            guard_side.protected_s.append(protected_at[record.client_order_id] - fill)
        if record.state in (State.REJECTED, State.CLOSED):
            guard_side.rolled_back.add(record.symbol)

    truth = venue.truth
    unprotected = set(truth.unprotected_now())
    bare: Counter[str] = Counter()  # symbol -> seconds without a stop, per the venue's truth
    for symbol, start, end in truth.unprotected_windows:
        bare[symbol] += end - start
    for symbol, start in truth.unprotected_since.items():
        bare[symbol] += ended_at - start  # still bare when the run ended: a lower bound
    rows = []
    for side in (seed_side, guard_side):
        symbols = set(side.symbols)
        false_rollbacks = sum(1 for s in side.rolled_back if truth.position(s) is not None)
        calls = sum(side.rest_calls.values())
        bare_s = [bare[s] for s in side.symbols]
        rows.append([
            side.name,
            ms(percentile(side.verified_s, 50)), ms(percentile(side.verified_s, 99)),
            ms(percentile(side.protected_s, 50)), ms(percentile(side.protected_s, 99)),
            ms(percentile(bare_s, 50)), ms(percentile(bare_s, 99)), ms(max(bare_s)),
            len(unprotected & symbols),
            false_rollbacks,
            sum(1 for s in symbols if truth.entries_filled[s] > 1),
            f"{calls / opens:.2f}",
            f"{side.rest_calls['fetch_positions'] / opens:.2f}",
        ])
    print_table(
        f"seed vs posguard: {opens} opens each, one fake venue, seed {seed}, "
        f"{'stop attached to the entry' if attached else 'no attached stops: a separate stop order'}, "
        "virtual time (trio MockClock)",
        ["algorithm", "fill->verified p50", "p99", "fill->protected p50", "p99", "bare p50", "p99", "max",
         "unprotected at end", "false rollbacks", "duplicate positions", "REST calls/open", "position-list polls/open"],
        rows,
    )
    evidence = Counter(r.evidence or "-" for r in records.values())
    states = Counter(str(r.state) for r in records.values())
    print()
    print(f"posguard records: {dict(states)}; verified from push {evidence['push']}, from REST {evidence['rest']}")
    print(f"posguard REST calls by method: {dict(guard_side.rest_calls)}")
    print(f"seed REST calls by method: {dict(seed_side.rest_calls)}")
    print(f"fill->verified/protected percentiles cover opens that got there: seed {len(seed_side.protected_s)} "
          f"protected of {opens}, posguard {len(guard_side.protected_s)} of {opens}")
    print("fill->protected is when the algorithm knows its stop is live; 'bare' is how long the venue's "
          "ground truth had the position without a stop (still-bare positions counted to the end of the run)")
    print(f"virtual time {virtual:.1f} s, wall time {wall:.1f} s, concurrency {concurrency} per algorithm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    print(f"machine: {machine()}")
    print("venue: position list 0.05-0.5 s (2 % take 5-15 s), pushes 10-80 ms (1 % dropped), "
          "1 % create responses lost, REST round trip 30 ms")
    for attached in (True, False):
        with start_redis_server() as server:
            clock = IOAwareMockClock()
            anyio.run(run, args.opens, args.seed, args.concurrency, server.url, clock, attached,
                      backend="trio", backend_options={"clock": clock.trio_clock})


if __name__ == "__main__":
    main()
