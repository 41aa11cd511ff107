"""An entry's write ahead in one round trip (issue 16), and what it still refuses.

The ``accepted`` answer, the record in ``submitting`` and its journal entry go in one fenced
transaction, decided from the record as this process last saw it (no read on the path); Redis
writes them only if the intent id is new and the symbol's record is what was seen. Anything
else is decided again from a fresh read, as before. Round trips are counted at the store seam
(`tests.support.ClockHeld.calls`: every store coroutine is one round trip), against a real
redis-server; the venue's own record is the ground truth for what was sent.
"""

from __future__ import annotations

import pytest

from posguard.actors.intents import CloseIntent, IntentRecord, body_of
from posguard.actors.records import State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})


def round_trips_at_send(venue: FakeVenue, calls: list[str]) -> list[list[str]]:
    """Each entry sent to ``venue``: the store calls made before it, since ``calls`` was cleared."""
    create_order, seen = venue.create_order, []

    async def create(request: OrderRequest) -> Order:
        if not request.reduce_only:
            seen.append(list(calls))
        return await create_order(request)

    venue.create_order = create  # type: ignore[method-assign]
    return seen


async def test_an_entry_is_written_ahead_in_one_round_trip_on_a_symbol_it_has_seen(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1601, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        first = await (await engine.submit(open_intent("wa-1", symbol=SYMBOL))).wait()
        await (await engine.submit(CloseIntent(intent_id="wa-1-close", symbol=SYMBOL))).wait()
        assert first.outcome == "protected" and venue.truth.position(SYMBOL) is None
        sends = round_trips_at_send(venue, engine.store.calls)
        engine.store.calls.clear()
        reply = await (await engine.submit(open_intent("wa-2", symbol=SYMBOL))).wait()
        record = await engine.store.load_record(SYMBOL)
        assert reply.status == "done" and record.state is State.PROTECTED, (reply, record.state)
        assert sends == [["write_ahead"]], "the intent's first and only round trip before the send"
        assert venue.truth.orders[record.client_order_id].filled > 0  # the venue's own record of the send


async def test_an_intent_id_already_used_on_another_symbol_is_refused_by_the_write_ahead(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The phantom of issue 13 through the new path: the id's record is in Redis (written by an
    earlier run), the symbol is one this process has seen with no record: nothing is sent."""
    async with FakeVenue(seed=1602, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        done = await (await engine.submit(open_intent("wa-twice", symbol="BTC/USDT:USDT"))).wait()
        assert done.outcome == "protected"
        await engine.store.load_record(SYMBOL)  # seen, no record: the write ahead would take it
        sends = round_trips_at_send(venue, engine.store.calls)
        reply = await engine.actors.get_or_start(SYMBOL).submit(open_intent("wa-twice", symbol=SYMBOL), "").wait()
        assert sends == [], "a second entry under a used intent id was sent"
        assert reply.status != "accepted" and await engine.store.load_record(SYMBOL) is None, reply
        assert venue.truth.position(SYMBOL) is None


async def test_a_record_changed_in_redis_since_it_was_seen_is_decided_again_from_redis(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Someone else wrote the symbol's record (an operator with redis-cli, another tool): the
    write ahead decided from what this process saw is refused, and the fresh read decides."""
    async with FakeVenue(seed=1603, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        first = await (await engine.submit(open_intent("wa-3", symbol=SYMBOL))).wait()
        assert first.outcome == "protected"
        await (await engine.submit(CloseIntent(intent_id="wa-3-close", symbol=SYMBOL))).wait()
        key = engine.store.keys.position(SYMBOL)
        with clock.hold():  # a hand-edit: the closed record says live again, for another intent
            await engine.store.client.hset(key, {"state": "protected", "intent_id": "by-hand"})
        sends = round_trips_at_send(venue, engine.store.calls)
        reply = await (await engine.submit(open_intent("wa-4", symbol=SYMBOL))).wait()
        assert sends == [] and reply.status == "rejected" and "already has a live position" in reply.reason, reply
        with clock.hold():
            assert (await engine.store.client.hget(key, "intent_id")) == "by-hand", "the hand-edit was written over"


async def test_a_refusal_at_intake_never_writes_over_what_redis_holds_for_the_id(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The intake no longer reads an id before the hand-off; its refusals (safe mode here) are
    written only where the id is new. An id with a final answer is answered ``duplicate``; an
    id under way (``accepted``, its entry carried on by a restart) keeps ``accepted`` and gets
    the refusal on its reply list only: a record saying ``rejected`` while its entry opens is
    a false rollback in the intent's own record."""
    async with FakeVenue(seed=1604, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        done = await (await engine.submit(open_intent("wa-done", symbol=SYMBOL))).wait()
        assert done.outcome == "protected"
        under_way = open_intent("wa-under-way", symbol="BTC/USDT:USDT")
        await engine.store.save_intent(IntentRecord(intent_id=under_way.intent_id, action="open", symbol=under_way.symbol,
                                                    status="accepted", body=body_of(under_way)))
        assert engine.gate.enter_safe_mode("test: entries refused")
        again = await (await engine.submit(open_intent("wa-done", symbol=SYMBOL))).wait()
        refused = await (await engine.submit(under_way)).wait()
        assert (again.status, again.outcome) == ("done", "protected"), again  # the first answer, as a duplicate
        assert refused.status == "rejected" and "safe mode" in refused.reason.lower(), refused
        stored = await engine.store.load_intent(under_way.intent_id)
        assert stored is not None and stored.status == "accepted", stored
        assert (await engine.store.load_intent("wa-done")).outcome == "protected"
        assert venue.calls["create_order"] == 1


def round_trips_after_answer(venue: FakeVenue, calls: list[str]) -> list[int]:
    """Where ``calls`` stood when each entry sent to ``venue`` was answered."""
    create_order, answered = venue.create_order, []

    async def create(request: OrderRequest) -> Order:
        order = await create_order(request)
        if not request.reduce_only:
            answered.append(len(calls))
        return order

    venue.create_order = create  # type: ignore[method-assign]
    return answered


@pytest.mark.parametrize("attached", [True, False], ids=["attached stop", "separate stop"])
async def test_after_the_entry_is_answered_only_the_writes_something_waits_on_are_made(
    clock: IOAwareMockClock, redis_url: str, attached: bool
) -> None:
    """Issue 16: one write after the answer where the stop rides on the entry (protected, with
    the intent's final answer in the same transaction); where it does not, one more: the
    stop's own write ahead, which carries the fill. The acknowledgement, the verification's
    start and the fill are held for those writes (`ActorContext.stage`)."""
    async with FakeVenue(seed=1602, knobs=FAST_PUSH, supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        answered = round_trips_after_answer(venue, engine.store.calls)
        engine.store.calls.clear()
        reply = await (await engine.submit(open_intent("after-1", symbol=SYMBOL))).wait()
        after = engine.store.calls[answered[0]:]
        record = await engine.store.load_record(SYMBOL)
        stored = await engine.store.load_intent("after-1")
        assert reply.status == "done" and record.state is State.PROTECTED, (reply, record.state)
        assert venue.truth.position(SYMBOL) is not None and venue.truth.is_protected(SYMBOL)
        assert stored is not None and stored.status == "done" and stored.outcome == "protected", stored
        expected = ["save_record"] if attached else ["save_record", "save_record"]
        assert after == expected, f"store round trips after the answer: {after}"
