"""One position opened, verified and protected end to end: fake venue, real Redis, trio."""

from __future__ import annotations

import anyio
import coredis

from posguard.actors.records import Protection, State
from posguard.actors.store.keys import Keys
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

SYMBOL = "BTC/USDT:USDT"


async def test_open_is_verified_from_the_push_and_protected_by_the_attached_stop(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})
    async with FakeVenue(seed=1, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        ticket = await engine.submit(open_intent("happy-1"))
        with anyio.fail_after(10):
            reply = await ticket.wait()
        record = await engine.store.load_record(SYMBOL)

        assert reply.status == "done" and reply.outcome == "protected"
        assert record is not None and record.state is State.PROTECTED
        assert record.evidence == "push"
        assert record.protection is Protection.ATTACHED_CONFIRMED
        assert venue.truth.position(SYMBOL) is not None
        assert venue.truth.is_protected(SYMBOL)
        assert engine.ctx.rest_calls["fetch_positions"] == 0, "the happy path must not poll the position list"
        assert record.rest_calls == 1  # the create-order call, nothing else


async def test_position_record_is_readable_with_redis_cli_fields(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=2) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        await (await engine.submit(open_intent("readable-1"))).wait()
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        fields = await client.hgetall(Keys(ACCOUNT).position(SYMBOL))
        journal = await client.xrange(Keys(ACCOUNT).journal)
    assert fields["state"] == "protected"
    assert fields["side"] == "buy"
    assert float(fields["qty"]) == 0.01
    assert float(fields["entry_price"]) == 60_000.0
    assert float(fields["stop_price"]) == 58_800.0
    assert fields["client_order_id"].startswith("pg") and fields["client_order_id"].endswith("-e")
    for stamp in ("created_at", "updated_at", "filled_at", "protected_at"):
        assert fields[stamp].endswith("+00:00"), stamp
    states = [entry.field_values["state"] for entry in journal]
    # Written: the entry ahead of its send, then its position protected (with the reply). The
    # steps between are held for that write (`ActorContext.stage`) and its note names each.
    assert states == ["submitting", "protected"]
    note = journal[-1].field_values["note"]
    steps = [part.split(":")[0] for part in note.split("; ")]
    assert steps == ["submitted", "verifying", "open", "protected"], note
    assert "filled 0.01 at 60000.0 (push)" in note, note


async def test_fill_pushed_before_the_create_order_response_is_not_missed(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # The response takes 1 s to come back; the fill is pushed 10 ms after it happens.
    knobs = FaultKnobs(
        rest_latency=2.0,
        rest_latency_by_method={"fetch_price": 0.02, "fetch_leverage": 0.02},  # the checks before the send
        push_delay={t: Lag.fixed(0.01) for t in ("positions", "orders", "executions")},
        position_lag=Lag.fixed(30.0),
    )
    async with FakeVenue(seed=3, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        sent_at = anyio.current_time()
        ticket = await engine.submit(open_intent("early-push-1"))
        reply = await ticket.wait()
        record = await engine.store.load_record(SYMBOL)
        assert reply.outcome == "protected"
        assert record is not None and record.evidence == "push"
        # Verified the moment the response arrived (1 s after the effect), no push wait, no REST.
        assert record.sent_to_verified_ms is not None and record.sent_to_verified_ms <= 2000 + 1
        assert engine.ctx.rest_calls["fetch_order"] == 0 and engine.ctx.rest_calls["fetch_positions"] == 0
        assert anyio.current_time() - sent_at < 2.5


async def test_rejected_order_is_recorded_rejected_and_nothing_is_open(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=4, knobs=FaultKnobs(reject_rate=1.0)) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("rejected-1"))).wait()
        record = await engine.store.load_record(SYMBOL)
        assert reply.status == "rejected"
        assert record is not None and record.state is State.REJECTED
        assert "insufficient" in record.reason
        assert venue.truth.position(SYMBOL) is None
        assert_never_falsely_closed(record, venue)
