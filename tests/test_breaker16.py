"""Breaker tests for issue 16: the entry's write ahead in one round trip, decided from the
record as this process last saw it (`Store.write_ahead`), and the states held in memory for
the record's next write (`ActorContext.stage`).

Every test here runs on trio with the mock clock against a real redis-server (the fixtures'),
and checks the simulated venue's ground truth (`venue.truth`) where an order is at stake.
Each test was written by a breaker session against dab4ee9 and seen failing there (``FAILS on
dab4ee9`` in its docstring says how); the fixes landed with them, so they now hold the fixes.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from posguard.actors.intents import CloseIntent
from posguard.actors.records import State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.lease import Lease
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.engine import Engine
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, ClockHeld, open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})


# -- 1. A stale write ahead on a venue that attaches no stop (Binance) ------------------------
#
# `drive_entry` runs the entry inside a task group (beside `ArmedStop.run`) when the venue
# attaches no stop to entries. The write ahead is the entry's first `ctx.save`, inside that
# group, so the `WriteAheadStale` it raises leaves the group wrapped in an ExceptionGroup
# (anyio 4 / trio strict groups, asyncio too). `answer_intent`'s ``except WriteAheadStale``
# does not match a group: instead of "decided again from a fresh read", the actor crashes.


async def test_binance_an_intent_id_used_on_another_symbol_is_refused_not_crashing_the_actor(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9: the reply is ``failed`` (actor crashed, restarted), not the refusal.

    The same attack as test_write_ahead's phantom test, on a venue without attached stops."""
    async with FakeVenue(seed=1602, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        done = await (await engine.submit(open_intent("b16-twice", symbol="BTC/USDT:USDT"))).wait()
        assert done.outcome == "protected"
        await engine.store.load_record(SYMBOL)  # seen, no record: the write ahead path is taken
        restarts_before = len(engine.actors.restarts._times)
        reply = await engine.actors.get_or_start(SYMBOL).submit(open_intent("b16-twice", symbol=SYMBOL), "").wait()
        assert venue.truth.position(SYMBOL) is None, "a second entry under a used intent id was sent"
        assert len(engine.actors.restarts._times) == restarts_before, "the actor crashed on a stale write ahead"
        assert reply.status == "rejected" and "already used" in reply.reason, reply


async def test_binance_a_record_deleted_by_hand_is_decided_again_not_crashing_the_actor(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9. README ("When things go wrong", quarantine) tells the operator to
    delete a bad hash: the next open for that symbol must be decided from the fresh read (no
    record: a new entry), not crash the actor and leave the intent unanswered in Redis."""
    async with FakeVenue(seed=1603, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("b16-del-1", symbol=SYMBOL))).wait()).outcome == "protected"
        await (await engine.submit(CloseIntent(intent_id="b16-del-1-close", symbol=SYMBOL))).wait()
        assert venue.truth.position(SYMBOL) is None
        with clock.hold():
            await engine.store.client.delete([engine.store.keys.position(SYMBOL)])
        reply = await (await engine.submit(open_intent("b16-del-2", symbol=SYMBOL))).wait()
        stored = await engine.store.load_intent("b16-del-2")
        assert reply.status == "done" and reply.outcome == "protected", reply
        assert stored is not None and stored.status == "done", stored
        assert venue.truth.is_protected(SYMBOL)


async def test_binance_repeated_stale_write_aheads_do_not_put_the_service_in_safe_mode(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9. I7: a bad intent is refused "and nothing else disturbed". Each reused
    id crashes the SOL actor (`ActorRegistry._supervise` counts it), and past
    ``supervisor.max_restarts`` (5) in a minute the whole account enters safe mode: one
    strategy resending an id refuses every other strategy's entries."""
    async with FakeVenue(seed=1604, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("b16-used", symbol="BTC/USDT:USDT"))).wait()).outcome == "protected"
        for _ in range(7):
            await engine.store.load_record(SYMBOL)  # seen with no record: the write-ahead path
            await engine.actors.get_or_start(SYMBOL).submit(open_intent("b16-used", symbol=SYMBOL), "").wait()
        assert not engine.gate.safe_mode, engine.gate.safe_mode_reason
        other = await (await engine.submit(open_intent("b16-other", symbol="ETH/USDT:USDT"))).wait()
        assert other.outcome == "protected", other


# -- 2. The journal entry of a record's end, after held states --------------------------------
#
# `RedisStore._journal` writes ``note or record.reason``: a save without a note (every settle:
# `settle_closed`, `settle_entry`'s rejected and unverified) journals the record's reason. Since
# issue 16 `ActorContext.save` prefixes the held notes, so the note is never empty after a held
# state, and the reason (why the record ended) is no longer in the journal at all.


async def journal_of(engine, symbol: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    entries = await engine.store.client.xrange(engine.store.keys.journal, "-", "+")
    return [dict(e.field_values) for e in entries if dict(e.field_values).get("symbol") == symbol]


async def test_the_journal_says_why_an_entry_stopped_out_before_protection_ended(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9: the closed_externally entry's note is the held states' notes
    ("submitted: ...; verifying; ...; closed_externally") and nothing of the record's reason."""
    # The stop-out lands before any push of the fill: the verification sees the exit too.
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.5) for t in TOPICS}, stop_out_rate=1.0,
                       stop_out_delay=Lag.fixed(0.0))
    async with FakeVenue(seed=1605, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("b16-stopped", symbol=SYMBOL))).wait()
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.CLOSED_EXTERNALLY and venue.truth.position(SYMBOL) is None, (reply, record)
        with clock.hold():
            ends = [e for e in await journal_of(engine, SYMBOL) if e["state"] == "closed_externally"]
        assert len(ends) == 1, ends
        assert record.reason and record.reason in ends[0]["note"], (record.reason, ends[0]["note"])


# -- 3. A refusal in the write-ahead path runs the entry's checks twice -----------------------
#
# `answer_intent` tries an open first on the write-ahead path; a step that ends before its
# write ahead (`IntentRefused` from the market checks, `IntentConflict`) raises
# `WriteAheadStale` in `_run_step`, and the whole step is run again from a fresh read:
# `ctx.entry_check` (the ticker read retried for `risk.price_deadline`, the leverage read, and
# an alert on an internal error) runs a second time for one intent.


async def test_an_entry_refused_for_want_of_a_price_is_refused_within_the_price_deadline(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9: the refusal comes after 2 x `risk.price_deadline` (two full rounds of
    ticker reads), not after one as README ("Intents") says."""
    from posguard.streams.venue.errors import VenueUnavailable

    async with FakeVenue(seed=1606, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        reads = 0

        async def ticker_down(symbol: str) -> float:
            nonlocal reads
            reads += 1
            raise VenueUnavailable("ticker: 503 (test)")

        venue.fetch_price = ticker_down  # type: ignore[method-assign]
        deadline = engine.risk.price_deadline
        started = clock.current_time()
        reply = await (await engine.submit(open_intent("b16-no-price", symbol="XRP/USDT:USDT"))).wait()
        took = clock.current_time() - started
        assert reply.status == "rejected" and "price" in reply.reason, reply
        assert venue.truth.position("XRP/USDT:USDT") is None
        assert took <= deadline + 1.0, f"refused after {took:.1f} s ({reads} ticker reads), deadline {deadline} s"


# -- 4. Redis losing its data under an open for a symbol this process knows is held -----------
#
# The seen head says the symbol holds a live protected position: the write-ahead path refuses
# the open (`IntentConflict`), `_run_step` turns the refusal into `WriteAheadStale`, and the
# intent is decided again from a fresh read, which after a FLUSHALL finds no record and no
# intent: a new entry. The fresh path's own first write (`save_intent`, accepted) is what
# finds the epoch gone: the fence re-acquires, the watchdog pauses entries ("Redis lost its
# data: auditing the venue before entries resume") and the very next step sends the entry.


@asynccontextmanager
async def leased_engine(redis_url: str, venue: FakeVenue, clock: IOAwareMockClock) -> AsyncIterator[Engine]:
    """`running_engine` with a lease and fenced writes, wired as `service._serve` wires them."""
    settings = ActorSettings(account=ACCOUNT)
    async with open_redis(redis_url) as client, anyio.create_task_group() as tg:
        lease = Lease(client, ACCOUNT, ttl=10.0)
        with clock.hold():
            assert await lease.acquire()
        engine = Engine(
            venue=venue,
            store=ClockHeld(RedisStore(client, ACCOUNT, lease.fence), clock),
            cache=ClockHeld(RedisEventCache(client, ACCOUNT, lease.fence), clock),
            settings=settings,
            rng=random.Random(7),
        )
        lease.fence.on_data_lost.append(engine.watchdog.data_lost)
        await tg.start(engine.run)
        yield engine
        tg.cancel_scope.cancel()


async def test_after_redis_lost_its_data_an_open_is_not_sent_on_a_symbol_known_to_hold_a_position(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9: a second entry is filled on BTC (the venue holds 0.02 where the one
    open intent asked 0.01 and the second was refused before the loss), while the engine's own
    gate already says entries are paused for the data loss."""
    async with FakeVenue(seed=1607, knobs=FAST_PUSH) as venue, leased_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        first = await (await engine.submit(open_intent("b16-held", symbol="BTC/USDT:USDT"))).wait()
        assert first.outcome == "protected"
        refused = await (await engine.submit(open_intent("b16-second", symbol="BTC/USDT:USDT"))).wait()
        assert refused.status == "rejected" and "already has a live position" in refused.reason, refused
        with clock.hold():
            await engine.store.client.flushall()
        # An open already queued on the actor when Redis lost its data (the intake's own read
        # finds the group gone and holds what it reads next; this one was handed over before).
        again = await (await engine.submit(open_intent("b16-third", symbol="BTC/USDT:USDT"))).wait()
        assert venue.truth.entries_filled["BTC/USDT:USDT"] == 1, (
            f"a second entry was sent on a symbol this process knew held a position ({again.status},"
            f" entries paused: {engine.gate.paused})")


# -- 5. Held notes staged while another write of the record is in flight ----------------------
#
# `ActorContext.save` reads the held notes when it builds its journal entry, awaits the write,
# then drops every note held for the symbol (`held_notes.pop`). A note staged while the write
# was in flight (the armed stop's save runs beside the entry's send and verification on a
# venue without attached stops) was in no journal entry, and is dropped with the others.


async def test_a_state_staged_while_the_armed_stops_write_is_in_flight_reaches_the_journal(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9: the entry's acknowledgement ("submitted: venue acknowledged ...") and
    its verification's start are in no journal entry. A Redis round trip of 1 s for the armed
    stop's write (a slow or distant Redis) is the only thing the test slows."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, lost_create_response_rate=1.0)
    async with FakeVenue(seed=1609, knobs=knobs, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        held_save = engine.store.save_record  # the ClockHeld proxy's: Redis time costs no mock time

        async def slow_save(record, note="", **kwargs):  # type: ignore[no-untyped-def]
            if note.startswith("arming whole-position stop"):
                await anyio.sleep(1.0)  # the round trip, as the other tasks see it
            return await held_save(record, note, **kwargs)

        engine.store.save_record = slow_save  # type: ignore[method-assign]
        reply = await (await engine.submit(open_intent("b16-notes", symbol=SYMBOL))).wait()
        assert reply.outcome == "protected" and venue.truth.is_protected(SYMBOL), reply
        with clock.hold():
            notes = [e["note"] for e in await journal_of(engine, SYMBOL)]
        assert any(n.startswith("arming whole-position stop") for n in notes), notes  # the race was run
        assert any("submitted: venue acknowledged" in n for n in notes), notes


async def test_binance_a_reused_intent_id_sent_with_xadd_is_answered_once_not_crashing_every_reclaim(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9 (finding 1 through the intake). The crashed intent's ticket is
    ``failed``, so the intake leaves its entry pending (`_ack_when_owned`) and takes it again
    every `reclaim_after` (120 s by default; 0.05 s here, as Redis counts idle time in real
    time): the actor crashes again each time, an audit is requested each time, and the
    strategy's BLPOP on the reply list never gets an answer. A poison loop from one intent."""
    from posguard.supervisor.intake import IntentIntake

    async with FakeVenue(seed=1610, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine, anyio.create_task_group() as tg:
        intake = IntentIntake(engine.store.client, engine, account=ACCOUNT, block_ms=0, reclaim_after=0.05)
        await tg.start(intake.run)
        await wait_streams_healthy(engine)
        client, keys = engine.store.client, engine.store.keys
        done = await (await engine.submit(open_intent("b16-xadd", symbol="BTC/USDT:USDT"))).wait()
        assert done.outcome == "protected"
        with clock.hold():
            await client.xadd(keys.intents, {"intent_id": "b16-xadd", "action": "open", "symbol": SYMBOL,
                                             "side": "buy", "qty": "0.1", "stop_price": "147"})
        replies: list[str] = []
        restarts = 0.0
        with anyio.move_on_after(120):
            while restarts < 3 and not any('"rejected"' in r for r in replies):
                await anyio.sleep(0.5)
                with clock.hold():
                    replies = list(await client.lrange(keys.reply("b16-xadd"), 0, -1))
                restarts = engine.metrics.restarts._value.get()  # actor_restarts
        tg.cancel_scope.cancel()
    assert venue.truth.position(SYMBOL) is None
    assert restarts == 0, f"the SOL actor crashed {restarts:.0f} times on one intent (replies: {replies})"
    assert any('"rejected"' in r and "already used" in r for r in replies), replies


# -- 6. The liquidation re-check after protection, cut short ----------------------------------
#
# `recheck_liquidation` runs after the protected write (which answered the intent): it sets
# ``protection = none`` and writes the record (`place_stop`'s write ahead) with the state still
# ``protected``, then places the tightened stop. An actor restart there (a crash, a bug) resumes
# nothing for a ``protected`` record (`drive_entry` only protects ``open``/``unverified``), and
# the symbol's own audit sees the old stop covering the size: the position is left with only a
# stop beyond the venue's liquidation price, which never fires, and nothing tightens it again.


async def test_an_actor_restart_during_the_liquidation_tightening_leaves_no_stop_that_can_fire(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9 (not issue 16's own: issue 13's re-check, reached through the protected
    write that now carries the answer): after the restart the venue holds only the 63,000
    stop of a short it liquidates near 62,415."""
    from posguard.actors.intents import OpenIntent
    from posguard.streams.venue.events import Order
    from posguard.streams.venue.protocol import OrderRequest, StopRequest

    symbol = "BTC/USDT:USDT"
    async with FakeVenue(seed=64, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        real_create_order, real_place_stop = venue.create_order, venue.place_stop
        crashed = []

        async def market_moves_before_the_fill(request: OrderRequest) -> Order:
            if not request.reduce_only:
                venue.set_price(symbol, 57_000.0)  # as test_admission's defect-10 test
            return await real_create_order(request)

        async def crash_once(request: StopRequest) -> Order:
            if not crashed:
                crashed.append(request)
                raise RuntimeError("test: the actor dies while the tightened stop is being placed")
            return await real_place_stop(request)

        venue.create_order = market_moves_before_the_fill  # type: ignore[method-assign]
        venue.place_stop = crash_once  # type: ignore[method-assign]
        intent = OpenIntent(intent_id="b16-liq", symbol=symbol, side="sell", qty=0.01, stop_price=63_000.0)  # type: ignore[arg-type]
        await (await engine.submit(intent)).wait()
        assert crashed, "the tightening was never tried"
        runs = engine.auditor.runs
        await anyio.sleep(200)  # the restart, its reconcile, three periodic audits (audit.interval 60 s)
        assert engine.auditor.runs >= runs + 3
        record = await engine.store.load_record(symbol)
        position = venue.truth.position(symbol)
        assert position is not None and position.liq_price
        stops = [s.stop_price for s in venue.truth.open_stops(symbol)]
        if position.stop_price is not None:
            stops.append(position.stop_price)
        assert any(s is not None and s < position.liq_price for s in stops), (
            f"short liquidated near {position.liq_price}; its only stops {stops} never fire"
            f" (record {record.state}, protection {record.protection}, stop_price {record.stop_price})")


async def test_binance_after_redis_lost_its_data_an_open_on_a_symbol_traded_before_is_served(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """FAILS on dab4ee9 (finding 1 from ordinary operations): after a FLUSHALL the process keeps
    its heads of the flushed records (`read_records` keeps what this process saw: the
    data-loss audit does not refresh them), so the first open on every symbol it traded before
    is refused by the write ahead, and on a venue without attached stops that crashes the
    actor: the open is answered ``failed``. (On Bybit it costs one more round trip.)"""
    async with FakeVenue(seed=1611, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            leased_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("b16-fl-1", symbol=SYMBOL))).wait()).outcome == "protected"
        await (await engine.submit(CloseIntent(intent_id="b16-fl-1-close", symbol=SYMBOL))).wait()
        assert venue.truth.position(SYMBOL) is None
        with clock.hold():
            await engine.store.client.flushall()
        with anyio.fail_after(120):  # the loss noticed (its alert), the full audit run, entries resumed
            while True:
                with clock.hold():
                    alerts = await engine.store.client.xrange(engine.store.keys.alerts)
                if any("Redis lost its data" in dict(a.field_values).get("message", "") for a in alerts) \
                        and not engine.gate.paused:
                    break
                await anyio.sleep(0.5)
        reply = await (await engine.submit(open_intent("b16-fl-2", symbol=SYMBOL))).wait()
        assert reply.status == "done" and reply.outcome == "protected", reply
