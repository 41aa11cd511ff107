"""Recovery: an actor crash to the actor back and its symbol re-audited; a process start with
1,000 live records in Redis to the first intent accepted.

    python -m tests.bench.bench_recovery [--symbols 1000] [--crashes 20] [--starts 3]

Why: one-for-one supervision is only as good as how fast a crashed actor is back and has
checked its symbol against the venue, and a restart of the whole process must not keep new
entries waiting while it resumes a thousand records. Both are measured in real time on anyio's
asyncio backend, with the real `Engine` against `FakeVenue` (``synthetic_markets``, 20 ms REST
round trips, stops as separate orders) and a private redis-server.

Setup: a first engine opens one protected long on each of ``--symbols`` symbols, so Redis holds
that many live `protected` records backed by real positions and stop orders on the venue; it is
then stopped (its task group cancelled, as a killed process would be). The venue and the
redis-server live on: every engine below is a "new process" on the same account.

Start-up (``--starts`` times): a fresh engine is started and timed from before its Redis client
is opened to `Engine.run` started (markets loaded, an actor created per live record), to every
actor resumed and parked on its mailbox, to the start-up audit done. An entry on a symbol
without a position is submitted the moment `run` has started (as `posguard run` hands intents
over), timed to accepted (`Ticket.owned`: written ahead in Redis) and to done (protected); it is
then closed, so each start finds the same number of live records. Interpreter start-up and
imports are timed separately, in a subprocess.

Actor crash (``--crashes`` times per row, each on a different symbol): a close intent is
submitted on a protected position while the venue's next create_order raises a `RuntimeError`
(a bug, not a venue error, before anything reaches the venue), so the actor dies mid-close with
its record in `closing`. The supervisor restarts it after its restart backoff; the actor drives
the interrupted close to the end (`resume`) and then audits its own symbol (`reconcile_self`).
Timed from the crash (the supervisor logging it) to the actor running again, to the close
finished, to the symbol re-audited, with the venue calls made in between, the re-audit's
findings and what the interrupted close's intent record says afterwards. One row with the
default restart backoff, one with a 1 ms backoff to show the work alone. ``max_restarts`` is
raised for the bench (to 10,000 in 60 s): with the default (more than 5 restarts within 60 s)
the sixth crash would put the engine in safe mode. Every actor crashes once only, so each
waits the backoff's *initial* delay (an actor's backoff grows with each of its crashes).

Prints tables; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from posguard.actors.context import ActorContext
from posguard.actors.findings import Finding
from posguard.actors.intents import CloseIntent
from posguard.actors.lifecycle import SymbolActor
from posguard.actors.records import State
from posguard.streams.backoff import Backoff
from posguard.streams.simulated import FakeVenue, synthetic_markets
from posguard.supervisor.audit import AuditReport
from posguard.supervisor.engine import Engine
from posguard.supervisor.redis_server import start_redis_server
from posguard.supervisor.supervision import SupervisorSettings
from tests.bench.common import machine, ms, percentile, print_table
from tests.bench.fleet import (
    REST_LATENCY,
    check_venue,
    entry,
    fleet_venue,
    open_positions,
    quiet_logging,
    run_async,
    running_engine,
    steady,
    wait_idle,
)

ACCOUNT = "recovery"
SPARE = 16  # symbols with no position, for the entries submitted at start-up
MAX_RESTARTS, RESTART_WINDOW = 10_000, 60.0
"""For the crash rows only: with the default the sixth crash within a minute means safe mode."""
REPO = Path(__file__).resolve().parents[2]


# -- crash timing ---------------------------------------------------------------------------


class CrashLog(logging.Handler):
    """Takes the supervisor's "actor X failed" line as the moment of the crash (it is logged
    synchronously where the exception is caught) and keeps the traceback off the terminal.
    Any other error from the engine is printed as usual."""

    def __init__(self, venue: FakeVenue) -> None:
        super().__init__(level=logging.ERROR)
        self.venue = venue
        self.crashed: dict[str, float] = {}
        self.calls_at_crash: dict[str, Counter[str]] = {}
        self._echo = logging.StreamHandler()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("actor %s failed") and record.args:
            symbol = str(record.args[0])  # type: ignore[index]
            self.crashed[symbol] = time.perf_counter()
            self.calls_at_crash[symbol] = Counter(self.venue.calls)
        else:
            self._echo.emit(record)


@dataclass
class Recovery:
    symbol: str
    restarted: float = 0.0
    resumed: float = 0.0
    reaudited: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


def instrument(actor: SymbolActor, recovery: Recovery) -> None:
    """Stamp the restarted actor's steps (instance attributes shadow the class's methods)."""
    run, resume, reconcile_self = actor.run, actor.resume, actor.reconcile_self

    async def timed_run(*, reconcile_first: bool = False) -> None:
        if reconcile_first and not recovery.restarted:
            recovery.restarted = time.perf_counter()
        await run(reconcile_first=reconcile_first)

    async def timed_resume() -> None:
        await resume()
        if recovery.restarted and not recovery.resumed:
            recovery.resumed = time.perf_counter()

    async def timed_reconcile() -> list[Finding]:
        findings = await reconcile_self()
        recovery.reaudited = time.perf_counter()
        recovery.findings = findings
        recovery.done.set()
        return findings

    actor.run = timed_run  # type: ignore[method-assign]
    actor.resume = timed_resume  # type: ignore[method-assign]
    actor.reconcile_self = timed_reconcile  # type: ignore[method-assign]


@dataclass
class CrashRow:
    label: str
    backoff: Backoff
    to_restart: list[float] = field(default_factory=list)
    to_resumed: list[float] = field(default_factory=list)
    to_reaudited: list[float] = field(default_factory=list)
    venue_calls: list[int] = field(default_factory=list)
    findings: int = 0
    """Findings of the restarted actors' own audits (reconcile_self), all crashes together."""
    close_replies: Counter[str] = field(default_factory=Counter)
    """The interrupted close's intent record in Redis once the actor has finished the close."""


async def crash_row(
    redis_url: str, venue: FakeVenue, symbols: list[str], label: str, tag: str, backoff: Backoff
) -> CrashRow:
    """Crash each symbol's actor once, one after another, on a freshly started engine."""
    row = CrashRow(label, backoff)
    handler = CrashLog(venue)
    engine_log = logging.getLogger("posguard.engine")
    engine_log.addHandler(handler)
    engine_log.propagate = False
    supervision = SupervisorSettings(restart_backoff=backoff, max_restarts=MAX_RESTARTS, restart_window=RESTART_WINDOW)
    try:
        async with running_engine(redis_url, venue, ACCOUNT, supervisor=supervision) as booted:
            engine = booted.engine
            await steady(engine)
            await wait_idle(engine.actors.values())
            for number, symbol in enumerate(symbols):
                recovery = Recovery(symbol)
                instrument(engine.actors[symbol], recovery)
                venue.fail_next("create_order", RuntimeError(f"injected bug in create_order ({symbol})"))
                reply = await (await engine.submit(CloseIntent(intent_id=f"crash-{tag}-{number}", symbol=symbol))).wait()
                if reply.status != "failed":
                    raise SystemExit(f"{symbol}: the injected crash did not happen: {reply}")
                with anyio.fail_after(60):
                    await recovery.done.wait()
                crashed = handler.crashed[symbol]
                record = await engine.store.load_record(symbol)
                if record is None or record.state is not State.CLOSED or venue.truth.position(symbol) is not None \
                        or venue.truth.open_stops(symbol):
                    raise SystemExit(f"{symbol}: not closed cleanly after the restart: {record}")
                intent = await engine.store.load_intent(reply.intent_id)
                row.close_replies[intent.status if intent is not None else "missing"] += 1
                row.findings += len(recovery.findings)
                row.to_restart.append(recovery.restarted - crashed)
                row.to_resumed.append(recovery.resumed - crashed)
                row.to_reaudited.append(recovery.reaudited - crashed)
                calls = Counter(venue.calls)
                calls.subtract(handler.calls_at_crash[symbol])
                row.venue_calls.append(sum(calls.values()))
            if engine.gate.safe_mode:
                raise SystemExit(f"the engine entered safe mode: {engine.gate.safe_mode_reason}")
    finally:
        engine_log.removeHandler(handler)
        engine_log.propagate = True
    return row


# -- start-up timing ------------------------------------------------------------------------


@dataclass
class Start:
    live_records: int = 0
    run_started: float = 0.0
    last_resumed: float = 0.0
    actors_idle: float = 0.0
    audited: float = 0.0
    accepted: float = 0.0
    done: float = 0.0
    audit: AuditReport | None = None
    skipped_busy: int = 0


def watch_startup(start: Start) -> Callable[[Engine], None]:
    """Before the engine starts: stamp when the last actor finished resuming and when the
    first audit ended, and count the symbols that audit skipped because their actor was busy."""

    def prepare(engine: Engine) -> None:
        auditor = engine.auditor
        run, busy, make_actor = auditor.run, auditor.actor_busy, engine.actors.factory

        def stamped_actor(ctx: ActorContext, symbol: str) -> SymbolActor:
            actor = make_actor(ctx, symbol)  # only ever called for a symbol without an actor
            if not start.run_started:  # an actor for a live record, made by `run`
                resume = actor.resume

                async def timed_resume() -> None:
                    await resume()
                    if not start.actors_idle:  # the start-up resume, not a later restart's
                        start.last_resumed = max(start.last_resumed, time.perf_counter())

                actor.resume = timed_resume  # type: ignore[method-assign]
            return actor

        async def timed_run(*, dry_run: bool = False) -> AuditReport:
            report = await run(dry_run=dry_run)
            if start.audit is None:
                start.audited, start.audit = time.perf_counter(), report
            return report

        def counted_busy(symbol: str) -> bool:
            answer = busy(symbol)
            if answer and start.audit is None:
                start.skipped_busy += 1
            return answer

        auditor.run = timed_run  # type: ignore[method-assign]
        auditor.actor_busy = counted_busy
        engine.actors.factory = stamped_actor

    return prepare


async def one_start(redis_url: str, venue: FakeVenue, number: int, fresh: str, account: str = ACCOUNT) -> Start:
    """A new engine on ``account``'s live records, timed; an entry on ``fresh`` submitted at once."""
    start = Start()
    async with running_engine(redis_url, venue, account, prepare=watch_startup(start)) as booted:
        engine = booted.engine
        start.run_started = booted.run_started - booted.began
        start.live_records = len(engine.actors)
        ticket = await engine.submit(entry(f"fresh-{number}", fresh))

        async def stamp(event: Callable[[], Awaitable[object]], name: str) -> None:
            await event()
            setattr(start, name, time.perf_counter() - booted.began)

        async def all_idle() -> None:
            await wait_idle(list(engine.actors.values()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(stamp, ticket.owned.wait, "accepted")
            tg.start_soon(stamp, ticket.done.wait, "done")
            tg.start_soon(stamp, all_idle, "actors_idle")
            tg.start_soon(steady, engine)
        start.audited -= booted.began
        start.last_resumed -= booted.began
        if ticket.result is None or ticket.result.outcome != State.PROTECTED:
            raise SystemExit(f"the entry submitted at start-up did not end protected: {ticket.result}")
        closed = await (await engine.submit(CloseIntent(intent_id=f"fresh-{number}-close", symbol=fresh))).wait()
        if closed.outcome != State.CLOSED:
            raise SystemExit(f"closing the start-up entry failed: {closed}")
    return start


def import_seconds(code: str, runs: int = 3) -> float:
    """Median wall time of ``python -c code`` in a subprocess (interpreter start included)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        times.append(time.perf_counter() - started)
    return percentile(times, 50)


# -- the run --------------------------------------------------------------------------------


async def run(redis_url: str, count: int, crashes: int, starts: int) -> None:
    markets = list(synthetic_markets(count + SPARE))
    held, spare = markets[:count], markets[count:]
    default_backoff = SupervisorSettings().restart_backoff
    fast_backoff = Backoff(initial=0.001, maximum=0.001, jitter=0.0)
    async with fleet_venue(count + SPARE) as venue:
        async with running_engine(redis_url, venue, ACCOUNT) as booted:
            await steady(booted.engine)
            opened = await open_positions(booted.engine, held, "fill")
            await anyio.sleep(0.5)
        check_venue(venue, held)
        print(f"\nsetup: {opened.count} protected positions opened in {opened.seconds:.1f} s; "
              f"venue holds {len(venue.truth.unprotected_now())} unprotected; first engine stopped")

        startups = [await one_start(redis_url, venue, n, spare[n % len(spare)]) for n in range(starts)]
        rows = [
            await crash_row(redis_url, venue, held[:crashes],
                            f"default: {default_backoff.initial * 1000:.0f} ms +/- {default_backoff.jitter:.0%}",
                            "default", default_backoff),
            await crash_row(redis_url, venue, held[crashes:2 * crashes], "1 ms, no jitter", "fast", fast_backoff),
        ]

    interpreter = import_seconds("pass")
    engine_imports = import_seconds("import posguard.supervisor.service, posguard.supervisor.engine, posguard.actors.store")
    ccxt_imports = import_seconds("import posguard.supervisor.service, posguard.supervisor.venues, posguard.streams.ccxt_adapter.venue")

    print_table(
        f"start-up with {count} live protected records in Redis (each row a new engine; ms from before "
        "its Redis client is opened)",
        ["start", "live records", "run started", "last actor resumed", "start-up audit done", "entry accepted",
         "entry protected", "audit findings", "audit skipped (actor busy)"],
        [[str(n + 1), str(s.live_records), ms(s.run_started), ms(s.last_resumed), ms(s.audited), ms(s.accepted),
          ms(s.done), str(len(s.audit.findings) if s.audit else "?"), str(s.skipped_busy)]
         for n, s in enumerate(startups)],
    )
    print_table(
        "before the engine: a new Python process (subprocess, median of 3)",
        ["what", "wall"],
        [
            ["python -c pass (interpreter start)", ms(interpreter)],
            ["python -c 'import posguard.supervisor.service, ...' (engine, Redis, metrics)", ms(engine_imports)],
            ["the same + posguard.streams.ccxt_adapter (ccxt, for a real exchange)", ms(ccxt_imports)],
        ],
    )
    print_table(
        f"actor crash -> back and re-audited ({crashes} crashes per row, each on its own symbol; "
        f"REST {REST_LATENCY * 1000:.0f} ms; ms)",
        ["restart backoff", "->restarted p50", "p99", "->close finished p50", "p99", "->re-audited p50", "p99", "max",
         "venue calls", "re-audit findings", "close intent record after"],
        [[r.label, ms(percentile(r.to_restart, 50)), ms(percentile(r.to_restart, 99)),
          ms(percentile(r.to_resumed, 50)), ms(percentile(r.to_resumed, 99)),
          ms(percentile(r.to_reaudited, 50)), ms(percentile(r.to_reaudited, 99)), ms(max(r.to_reaudited)),
          f"{percentile(r.venue_calls, 50):.0f}", str(r.findings),
          ", ".join(f"{status} x{n}" for status, n in r.close_replies.items())]
         for r in rows],
    )
    fast = rows[1]
    work = [a - b for a, b in zip(fast.to_reaudited, fast.to_restart, strict=True)]
    print(f"work alone (restarted -> re-audited, 1 ms row): p50 {ms(percentile(work, 50))}, "
          f"p99 {ms(percentile(work, 99))}; of which venue round trips ~{percentile(fast.venue_calls, 50):.0f} x "
          f"{REST_LATENCY * 1000:.0f} ms")
    default = SupervisorSettings()
    print(f"supervision for the crash rows: max_restarts={MAX_RESTARTS} within {RESTART_WINDOW:.0f} s "
          f"(the default, {default.max_restarts} within {default.restart_window:.0f} s, would have put the "
          f"engine in safe mode at the {default.max_restarts + 1}th crash)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--crashes", type=int, default=20)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    if 2 * args.crashes > args.symbols:
        parser.error("--crashes: each crash needs its own symbol, twice over (two rows)")
    quiet_logging()
    print(f"machine: {machine()}")
    print("asyncio backend, real time; Redis is a private redis-server on this machine")
    started = time.perf_counter()
    with start_redis_server() as server:
        run_async(run, server.url, args.symbols, args.crashes, args.starts)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
