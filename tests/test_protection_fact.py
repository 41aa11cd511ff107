"""Issue 13: "is this position protected" is a fact stored on the record, not an inference.

The record's `protection` field says what is known about the stop (none, attached to the entry
and requested, attached and confirmed on the venue's position, or a separate stop order the
venue accepted); `is_protected` is the one rule that reads it. Before, `stop_source = attached`
was written before anything was confirmed and four places guessed from it and from
`stop_client_order_id` (the id of a stop that was about to be placed, not of one that is live).
"""

from __future__ import annotations

import coredis
import msgspec
import pytest

from posguard.actors import ids
from posguard.actors.findings import Finding
from posguard.actors.lifecycle import recovery, repairs
from posguard.actors.records import BadRecord, PositionRecord, Protection, State, decode_record, is_protected
from posguard.actors.store.keys import Keys
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor.engine import Engine
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "XRP/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
NO_AUDITS = AuditSettings(interval=3600.0)


async def unverified_with_a_stop_written_ahead(engine: Engine, venue: FakeVenue) -> PositionRecord:
    """The venue holds the entry with no stop; the record is `unverified` and its stop id was
    written ahead, but the process died before that stop reached the venue."""
    intent = open_intent("stop-never-sent", symbol=SYMBOL)
    coid = ids.entry_id(ACCOUNT, intent.intent_id)
    record = PositionRecord(
        symbol=SYMBOL, intent_id=intent.intent_id, state=State.UNVERIFIED, side="buy", qty=intent.qty,
        stop_price=intent.stop_price, client_order_id=coid, sent_ms=venue.now_ms() - 1,
        stop_client_order_id=ids.stop_id(ACCOUNT, intent.intent_id, 1), stop_attempts=1,
        reason="no evidence by the deadline",
    )
    await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=intent.qty, client_order_id=coid))
    assert not venue.truth.is_protected(SYMBOL)
    await engine.store.save_record(record, "placing stop")
    return record


async def test_a_resumed_unverified_record_whose_stop_never_reached_the_venue_gets_one(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=150, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        await unverified_with_a_stop_written_ahead(engine, venue)
        await recovery.resume(engine.ctx, SYMBOL)
        assert venue.truth.is_protected(SYMBOL), "a stop id written ahead was taken for a live stop"


async def test_the_audit_does_not_call_a_record_protected_for_a_stop_id_written_ahead(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=151, knobs=FAST_PUSH, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        await unverified_with_a_stop_written_ahead(engine, venue)
        position = venue.truth.position(SYMBOL)
        finding = Finding(symbol=SYMBOL, kind="unverified", position=position, seen="unverified")
        await repairs.repair(engine.ctx, finding)
        after = await engine.store.load_record(SYMBOL)
        assert after.state is not State.PROTECTED or venue.truth.is_protected(SYMBOL), (
            "recorded protected while no stop is on the venue"
        )


async def test_the_record_claims_a_stop_only_once_the_venue_shows_it(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(attached_stop_missing_rate=1.0, position_lag=Lag.fixed(10.0),
                       push_delay={t: Lag.fixed(0.05) for t in TOPICS})
    async with FakeVenue(seed=152, knobs=knobs) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        seen: list[tuple[Protection, bool, bool]] = []
        engine.ctx.observers.append(lambda record, _note: seen.append(
            (record.protection, is_protected(record), venue.truth.is_protected(record.symbol))
        ))
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("attached-missing", symbol=SYMBOL))).wait()
        assert reply.outcome == "protected" and venue.truth.is_protected(SYMBOL)
        assert seen[0][0] is Protection.ATTACHED_REQUESTED, "the entry is written ahead asking for its stop"
        assert all(venue_ok for _, claimed, venue_ok in seen if claimed), seen
        final = await engine.store.load_record(SYMBOL)
        assert final.protection is Protection.STOP_ORDER, "the missing attached stop was backed by an order"


def test_records_written_by_the_previous_version_are_read_as_before() -> None:
    old = PositionRecord(
        symbol=SYMBOL, intent_id="old-1", state=State.PROTECTED, side="buy", qty=1.0, filled_qty=1.0,
        entry_price=0.6, stop_price=0.58, client_order_id="pgzzzzzzzzzzzzzzzz-e",
    ).to_fields()
    del old["protection"]

    def read(state: State, stop_source: str, protected_at: str = "") -> Protection:
        fields = dict(old, state=str(state), stop_source=stop_source, protected_at=protected_at)
        return decode_record(fields, symbol=SYMBOL).protection

    confirmed_at = "2026-11-25T07:32:49.689+00:00"
    assert read(State.SUBMITTING, "attached") is Protection.ATTACHED_REQUESTED  # sent asking for it
    assert read(State.PROTECTED, "attached", confirmed_at) is Protection.ATTACHED_CONFIRMED
    assert read(State.PROTECTED, "order", confirmed_at) is Protection.STOP_ORDER
    assert read(State.OPEN, "") is Protection.NONE
    fields = dict(old, protection="stop_order", stop_source="attached")
    assert decode_record(fields, symbol=SYMBOL).protection is Protection.STOP_ORDER, "the new field wins"
    with pytest.raises(BadRecord, match="stop_source"):
        decode_record(dict(old, stop_source="manual"), symbol=SYMBOL)


async def test_a_record_of_the_previous_version_loses_its_stop_source_at_its_next_write(redis_url: str) -> None:
    old = PositionRecord(
        symbol=SYMBOL, intent_id="old-2", state=State.PROTECTED, side="buy", qty=1.0, filled_qty=1.0,
        entry_price=0.6, stop_price=0.58, client_order_id="pgzzzzzzzzzzzzzzzz-e",
        protected_at="2026-11-25T07:32:49.689+00:00",
    ).to_fields()
    del old["protection"]
    old["stop_source"] = "attached"
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        store = RedisStore(client, ACCOUNT)
        key = Keys(ACCOUNT).position(SYMBOL)
        await client.hset(key, old)
        record = await store.load_record(SYMBOL)
        assert record is not None and record.protection is Protection.ATTACHED_CONFIRMED
        await store.save_record(record, "written by this version")
        fields = await client.hgetall(key)
    assert "stop_source" not in fields and fields["protection"] == "attached_confirmed"


def test_only_a_confirmed_stop_counts_as_protection() -> None:
    record = PositionRecord(symbol=SYMBOL, intent_id="x", state=State.OPEN, side="buy", qty=1.0, stop_price=0.5,
                            client_order_id="pgzzzzzzzzzzzzzzzz-e")
    assert {p: is_protected(msgspec.structs.replace(record, protection=p)) for p in Protection} == {
        Protection.NONE: False, Protection.ATTACHED_REQUESTED: False,
        Protection.ATTACHED_CONFIRMED: True, Protection.STOP_ORDER: True,
    }

