"""`posguard demo`: the whole system against the simulated venue, with realistic trouble.

On the simulated venue (the default) the venue lags like a busy exchange (most position-list
updates within 0.5 s, 2 % taking 5-15 s, the seed's failure), drops 1 % of pushes, fails 2 %
of REST calls, loses 2 % of create-order responses after placing the order, and sometimes
forgets an attached stop. With ``--venue emulator`` the same demo runs through real ccxt.pro
against a local emulator: Bybit V5 (``--exchange bybit``, the default) or Binance USD-M
(``--exchange binanceusdm``), with the same faults on both (supervisor/demo_emulator.py).
The demo opens, protects, holds and closes positions over several symbols, prints each as it
settles, and ends with a summary taken from the venue's own ground truth.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import msgspec

from posguard.actors.intents import CloseIntent, OpenIntent
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.client import RedisClient, RedisConnection, as_connection, open_redis, redact_url
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.keys import delete_account_keys
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import DEFAULT_MARKETS, FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.config import Config
from posguard.supervisor.engine import Engine

__all__ = [
    "DEMO_ACCOUNT",
    "DemoTally",
    "DemoVenue",
    "FakeDemoVenue",
    "demo_knobs",
    "open_demo_venue",
    "percentile",
    "run_demo",
]

DEMO_ACCOUNT = "demo"


def demo_knobs() -> FaultKnobs:
    topics = ("positions", "orders", "executions")
    return FaultKnobs(
        rest_latency=0.03,
        position_lag=Lag.realistic_position_list(),
        push_delay={t: Lag(low=0.01, high=0.08) for t in topics},
        push_drop={t: 0.01 for t in topics},
        rest_error_rate=0.02,
        lost_create_response_rate=0.02,
        attached_stop_missing_rate=0.03,
        price_step_interval=0.25,
        price_volatility=0.0005,
    )


@dataclass
class DemoTally:
    opened: int = 0
    protected: int = 0
    closed: int = 0
    closed_externally: int = 0
    rejected: int = 0
    unverified: int = 0
    fill_to_protected: list[float] = field(default_factory=list)
    evidence: dict[str, int] = field(default_factory=dict)
    rest_calls: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class DemoVenue(Protocol):
    """What the demo needs beside the `Venue` itself: prices to size orders and the venue's
    ground truth for the summary (fill times, and how long any position went without a stop)."""

    venue: Venue
    description: str
    faults: str

    def price(self, symbol: str) -> float: ...

    def fill_time(self, client_order_id: str) -> float | None:
        """anyio clock time of the entry's first fill, from the venue's own records."""
        ...

    def unprotected_now(self) -> list[str]: ...

    def unprotected_windows(self) -> list[tuple[str, float]]:
        """(symbol, seconds) for every stretch a position was open without a stop."""
        ...

    def rest_calls(self) -> int: ...


class FakeDemoVenue:
    description = "the simulated venue"
    faults = ("position list lags 0.05-0.5 s (2 % take 5-15 s), 1 % pushes dropped, "
              "2 % REST errors, 2 % create responses lost, 3 % attached stops missing")

    def __init__(self, venue: FakeVenue) -> None:
        self.venue = venue

    def price(self, symbol: str) -> float:
        return self.venue.prices[symbol]

    def fill_time(self, client_order_id: str) -> float | None:
        times = [e.ts_ms for e in self.venue.truth.executions if e.client_order_id == client_order_id]
        return self.venue.clock_time(min(times)) if times else None

    def unprotected_now(self) -> list[str]:
        return self.venue.truth.unprotected_now()

    def unprotected_windows(self) -> list[tuple[str, float]]:
        now = anyio.current_time()
        truth = self.venue.truth
        return [(s, end - start) for s, start, end in truth.unprotected_windows] + [
            (s, now - start) for s, start in truth.unprotected_since.items()
        ]

    def rest_calls(self) -> int:
        return sum(v for k, v in self.venue.calls.items() if not k.startswith(("price_", "rest_outage", "auto_")))


@asynccontextmanager
async def open_demo_venue(config: Config, kind: str, exchange: str = "bybit") -> AsyncIterator[DemoVenue]:
    if kind == "fake":
        async with FakeVenue(seed=config.demo.seed, knobs=demo_knobs()) as venue:
            yield FakeDemoVenue(venue)
        return
    from posguard.supervisor.demo_emulator import open_emulator_demo_venue

    async with open_emulator_demo_venue(config, exchange) as view:
        yield view


async def run_demo(
    config: Config, redis: RedisConnection | str, venue_kind: str = "fake", exchange: str = "bybit", *, out=print  # noqa: ANN001
) -> int:
    """Run the demo; returns the process exit code (1 if any position was left unprotected)."""
    settings = msgspec.structs.replace(config.actor_settings(), account=DEMO_ACCOUNT)
    symbols = list(DEFAULT_MARKETS)[: config.demo.symbols]
    tally = DemoTally()
    protected_at: dict[str, float] = {}

    def observe(record: PositionRecord, _note: str) -> None:
        if record.state is State.PROTECTED and record.client_order_id not in protected_at:
            protected_at[record.client_order_id] = anyio.current_time()

    redis = as_connection(redis)
    async with open_redis(redis) as client:
        await _clear_demo_keys(client, out)
        async with open_demo_venue(config, venue_kind, exchange) as view, anyio.create_task_group() as tg:
            engine = Engine(
                venue=view.venue,
                store=RedisStore(client, DEMO_ACCOUNT),
                cache=RedisEventCache(client, DEMO_ACCOUNT),
                settings=settings,
                audit=config.audit,
                stale_after=config.streams.stale_after,
                rng=random.Random(config.demo.seed),
                observers=[observe],
            )
            await tg.start(engine.run)
            if not await engine.streams_ready():
                out("warning: the venue's streams did not come up; entries will be verified over REST")
            out(f"posguard demo: {config.demo.positions} positions over {len(symbols)} symbols "
                f"on {view.description} (seed {config.demo.seed}), Redis at {redact_url(redis.url)}")
            out(f"venue faults: {view.faults}")
            counter = iter(range(1, config.demo.positions + 1))
            started = anyio.current_time()

            async def trade(symbol: str) -> None:
                for number in counter:
                    await _one_position(engine, view, symbol, number, config, tally, protected_at, out)

            async with anyio.create_task_group() as traders:
                for symbol in symbols:
                    traders.start_soon(trade, symbol)
            elapsed = anyio.current_time() - started
            tally.rest_calls = view.rest_calls()
            unprotected_left = view.unprotected_now()
            windows = view.unprotected_windows()
            max_window = max((seconds for _, seconds in windows), default=0.0)
            bound = config.protection.exposure_bound
            exposed = sorted({s for s, seconds in windows if seconds > bound})
            tg.cancel_scope.cancel()

    _print_summary(tally, elapsed, unprotected_left, exposed, max_window, bound, out)
    return 1 if unprotected_left or exposed else 0


async def _one_position(
    engine: Engine,
    venue: DemoVenue,
    symbol: str,
    number: int,
    config: Config,
    tally: DemoTally,
    protected_at: dict[str, float],
    out,  # noqa: ANN001
) -> None:
    side = "buy" if number % 3 else "sell"
    price = venue.price(symbol)
    rules = engine.rules[symbol]
    qty = max(rules.min_qty, rules.round_qty(50.0 / price))
    stop = price * (0.98 if side == "buy" else 1.02)
    intent_id = f"demo-{config.demo.seed}-{number}"
    reply = await (await engine.submit(
        OpenIntent(intent_id=intent_id, symbol=symbol, side=side, qty=qty, stop_price=stop)  # type: ignore[arg-type]
    )).wait()
    record = await engine.store.load_record(symbol)
    assert record is not None
    tally.evidence[record.evidence or "-"] = tally.evidence.get(record.evidence or "-", 0) + 1
    detail = ""
    if record.state in (State.PROTECTED, State.UNVERIFIED):
        tally.opened += 1
        if record.state is State.PROTECTED:
            tally.protected += 1
        else:
            tally.unverified += 1
        fill = venue.fill_time(record.client_order_id)
        if fill is not None and record.client_order_id in protected_at:
            tally.fill_to_protected.append((protected_at[record.client_order_id] - fill) * 1000)
            detail = f"fill->protected {tally.fill_to_protected[-1]:7.1f} ms"
        await anyio.sleep(config.demo.hold_seconds)
        close = await (await engine.submit(CloseIntent(intent_id=f"{intent_id}-close", symbol=symbol))).wait()
        record = await engine.store.load_record(symbol)
        assert record is not None
        if record.state is State.CLOSED:
            tally.closed += 1
        elif record.state is State.CLOSED_EXTERNALLY:
            tally.closed_externally += 1
        detail += f"  then {record.state} ({close.status})"
    elif record.state is State.CLOSED_EXTERNALLY:
        tally.opened += 1
        tally.closed_externally += 1
        detail = "stopped out before it could be protected"
    elif record.state is State.REJECTED:
        tally.rejected += 1
        detail = reply.reason
    out(f"[{number:3d}/{config.demo.positions}] {symbol:<15} {side:<4} {record.evidence or '-':<4} "
        f"{detail}  rest calls {record.rest_calls}")


async def _clear_demo_keys(client: RedisClient, out: Callable[[str], None]) -> None:
    cleared = await delete_account_keys(client, DEMO_ACCOUNT)
    if cleared:
        out(f"cleared {cleared} keys left by an earlier demo run (account '{DEMO_ACCOUNT}' only)")


def _print_summary(
    tally: DemoTally,
    elapsed: float,
    unprotected_left: list[str],
    exposed: list[str],
    max_window: float,
    bound: float,
    out,  # noqa: ANN001
) -> None:
    f2p = tally.fill_to_protected
    rows = [
        ("positions opened", str(tally.opened)),
        ("  protected (stop confirmed live)", str(tally.protected)),
        ("  unverified (protected, left to audit)", str(tally.unverified)),
        ("  closed by posguard", str(tally.closed)),
        ("  closed by the venue (stop/liquidation)", str(tally.closed_externally)),
        ("entries rejected by the venue", str(tally.rejected)),
        ("fill -> protected p50", f"{percentile(f2p, 50):.1f} ms"),
        ("fill -> protected p99", f"{percentile(f2p, 99):.1f} ms"),
        ("verified from push / REST", f"{tally.evidence.get('push', 0)} / {tally.evidence.get('rest', 0)}"),
        ("REST calls (all, incl. closes)", str(tally.rest_calls)),
        ("longest time any position had no stop", f"{max_window * 1000:.1f} ms"),
        (f"positions ever left unprotected (> {bound:.0f} s)", str(len(exposed))),
        ("positions unprotected at the end", str(len(unprotected_left))),
        ("wall time", f"{elapsed:.1f} s"),
    ]
    width = max(len(label) for label, _ in rows)
    out("")
    out("summary (from the venue's ground truth and the Redis records)")
    out("-" * (width + 14))
    for label, value in rows:
        out(f"{label:<{width}}  {value:>10}")
    out("-" * (width + 14))
