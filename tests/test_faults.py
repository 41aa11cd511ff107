"""Verification and protection under every fault the seed names, and the ones it missed.

Each test asserts against the fake venue's ground truth (`venue.truth`), not only against the
actor's own record: what matters is what is really on the exchange.
"""

from __future__ import annotations

import anyio
import pytest

from posguard.actors.intents import CloseIntent
from posguard.actors.records import Protection, State
from posguard.actors.settings import ActorSettings, VerificationSettings
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import OrderRejected, VenueUnavailable
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

SYMBOL = "ETH/USDT:USDT"
TOPICS = ("positions", "orders", "executions")


def pushes(delay: float = 0.05, drop: float = 0.0) -> dict[str, dict[str, object]]:
    return {"push_delay": {t: Lag.fixed(delay) for t in TOPICS}, "push_drop": {t: drop for t in TOPICS}}


async def open_one(engine, venue, intent_id: str = "i-1", **kwargs):  # noqa: ANN001, ANN201
    """Submit one open intent, check I1 at every transition, return (reply, record)."""
    engine.ctx.observers.append(lambda record, _note: assert_never_falsely_closed(record, venue))
    await wait_streams_healthy(engine)
    reply = await (await engine.submit(open_intent(intent_id, symbol=SYMBOL, **kwargs))).wait()
    return reply, await engine.store.load_record(SYMBOL)


async def settled(engine, symbol: str, state: State, within: float = 10.0):  # noqa: ANN001, ANN201
    """The record once it reaches ``state`` (or as it is after ``within`` virtual seconds)."""
    with anyio.move_on_after(within):
        while (await engine.store.load_record(symbol)).state is not state:
            await anyio.sleep(0.05)
    return await engine.store.load_record(symbol)


def entries_filled(venue: FakeVenue, symbol: str = SYMBOL) -> int:
    return venue.truth.entries_filled[symbol]


# 2 ------------------------------------------------------------------------------------------
async def test_position_list_lag_30s_with_every_push_dropped(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(position_lag=Lag.fixed(30.0), **pushes(drop=1.0))
    async with FakeVenue(seed=20, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        reply, record = await open_one(engine, venue)
        assert record.state is State.PROTECTED and record.evidence == "rest"
        # The position list never showed the attached stop in time, so a separate stop backs it.
        assert record.protection is Protection.STOP_ORDER
        assert venue.truth.position(SYMBOL) is not None and venue.truth.is_protected(SYMBOL)
        assert len(venue.truth.open_stops(SYMBOL)) == 1
        assert record.sent_to_protected_ms is not None and record.sent_to_protected_ms < 30_000


# 3 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("push_drop", [0.0, 1.0], ids=["pushed", "rest-only"])
async def test_stopped_out_before_verification_is_closed_externally(
    clock: IOAwareMockClock, redis_url: str, push_drop: float
) -> None:
    knobs = FaultKnobs(
        position_lag=Lag.fixed(30.0), stop_out_rate=1.0, stop_out_delay=Lag.fixed(0.02), **pushes(0.5, push_drop)
    )
    async with FakeVenue(seed=21, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        reply, record = await open_one(engine, venue)
        assert venue.truth.position(SYMBOL) is None, "the venue stopped it out"
        # With pushes, the fill's evidence lands before the exit's; the record follows within moments.
        record = await settled(engine, SYMBOL, State.CLOSED_EXTERNALLY)
        assert record.state is State.CLOSED_EXTERNALLY
        assert record.filled_qty == 0.01
        assert venue.truth.open_stops(SYMBOL) == [], "no stop left dangling"
        assert reply.status == "done"
        if push_drop == 1.0:  # over REST both fill and exit are seen in one look
            assert reply.outcome == "closed_externally"


# 5 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("order_lag", "push_drop"),
    [(0.0, 0.0), (0.0, 1.0), (3.0, 1.0), (12.0, 1.0)],
    ids=["pushed", "lookup", "lookup-lags-within-grace", "lookup-lags-past-grace"],
)
async def test_lost_create_response_yields_exactly_one_position(
    clock: IOAwareMockClock, redis_url: str, order_lag: float, push_drop: float
) -> None:
    knobs = FaultKnobs(lost_create_response_rate=1.0, order_lag=Lag.fixed(order_lag), **pushes(0.05, push_drop))
    async with FakeVenue(seed=22, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        reply, record = await open_one(engine, venue)
        assert entries_filled(venue) == 1, "a lost response must never produce a second position"
        assert venue.truth.position(SYMBOL).size == 0.01
        assert record.state is State.PROTECTED
        assert venue.truth.is_protected(SYMBOL)
        if order_lag > 5.0:
            assert venue.calls["create_order"] >= 2, "resent under the same id after the grace period"


# 6 ------------------------------------------------------------------------------------------
async def test_bursts_of_5xx_and_rate_limits_are_bounded_and_meet_the_deadline(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(rest_error_rate=0.4, rate_limit_rate=0.2, position_lag=Lag.fixed(20.0), **pushes(drop=1.0))
    async with FakeVenue(seed=23, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        started = anyio.current_time()
        reply, record = await open_one(engine, venue)
        elapsed = anyio.current_time() - started
        assert record.state in (State.PROTECTED, State.UNVERIFIED)
        assert venue.truth.is_protected(SYMBOL)
        assert entries_filled(venue) == 1
        assert sum(engine.ctx.rest_calls.values()) <= 80, f"REST calls not bounded: {dict(engine.ctx.rest_calls)}"
        settings = engine.settings
        budget = settings.verification.hard_deadline + settings.protection.stop_deadline * settings.protection.stop_attempts
        assert elapsed <= budget


async def test_rest_outage_until_the_deadline_leaves_it_unverified_but_protected(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(lost_create_response_rate=1.0, **pushes(drop=1.0))
    async with FakeVenue(seed=24, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        outage = [VenueUnavailable("HTTP 503")] * 10_000
        venue.fail_next("fetch_order", *outage)
        venue.fail_next("fetch_executions", *outage)
        venue.fail_next("fetch_positions", *outage)
        started = anyio.current_time()
        reply, record = await open_one(engine, venue)
        assert record.state is State.UNVERIFIED, "no evidence either way: never 'rejected'"
        assert anyio.current_time() - started >= engine.settings.verification.hard_deadline
        assert venue.truth.position(SYMBOL) is not None
        assert venue.truth.is_protected(SYMBOL), "an unverified entry is protected anyway"
        assert record.stop_client_order_id


# 7 ------------------------------------------------------------------------------------------
async def test_partial_fill_is_protected_for_what_filled(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(partial_fill_rate=1.0, **pushes())
    async with FakeVenue(seed=25, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        reply, record = await open_one(engine, venue, qty=1.0)
        position = venue.truth.position(SYMBOL)
        assert position is not None and 0 < position.size < 1.0
        assert record.state is State.PROTECTED
        assert record.filled_qty == pytest.approx(position.size)
        [stop] = venue.truth.open_stops(SYMBOL)
        assert stop.qty == pytest.approx(position.size), "stop sized to the filled quantity"


# 8 ------------------------------------------------------------------------------------------
async def test_stop_placement_failing_then_succeeding_protects(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=26, knobs=FaultKnobs(**pushes()), supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        venue.fail_next("place_stop", OrderRejected("system busy"), VenueUnavailable("HTTP 502"))
        reply, record = await open_one(engine, venue)
        assert record.state is State.PROTECTED and record.protection is Protection.STOP_ORDER
        assert venue.truth.is_protected(SYMBOL)
        assert len(venue.truth.open_stops(SYMBOL)) == 1


async def test_stop_placement_failing_every_time_ends_in_an_emergency_close(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(stop_reject_rate=1.0, **pushes())
    async with FakeVenue(seed=27, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        alerts: list[str] = []
        engine.ctx.alerts.append(lambda symbol, message: alerts.append(message))
        reply, record = await open_one(engine, venue)
        assert venue.truth.position(SYMBOL) is None, "closed rather than left bare"
        assert record.state is State.CLOSED and "emergency" in record.reason
        assert record.stop_attempts == engine.settings.protection.stop_attempts
        assert any("emergency close" in a for a in alerts)
        with clock.hold():
            stream = await engine.store.client.xrange(engine.store.keys.alerts)
        assert any("emergency close" in entry.field_values["message"] for entry in stream), "alert not in Redis"
        assert venue.truth.max_unprotected_seconds(anyio.current_time()) < 60


async def test_market_through_the_stop_closes_at_once_without_retrying(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=28, knobs=FaultKnobs(**pushes()), supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        intent = open_intent("gap-1", symbol=SYMBOL)
        await wait_streams_healthy(engine)
        ticket = await engine.submit(intent)
        with anyio.fail_after(0.2):
            while venue.truth.position(SYMBOL) is None:
                await anyio.sleep(0.001)
        venue.set_price(SYMBOL, intent.stop_price * 0.99)  # gaps through the stop before it is placed
        await ticket.wait()
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.CLOSED and "through the stop" in record.reason
        assert record.stop_attempts == 1
        assert venue.truth.position(SYMBOL) is None


# 9 ------------------------------------------------------------------------------------------
async def test_two_concurrent_intents_for_one_symbol_never_overlap(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=29, knobs=FaultKnobs(**pushes(0.3))) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        await wait_streams_healthy(engine)
        first = await engine.submit(open_intent("twin-a", symbol=SYMBOL))
        second = await engine.submit(open_intent("twin-b", symbol=SYMBOL))
        a, b = await first.wait(), await second.wait()
        assert a.status == "done" and a.outcome == "protected"
        assert b.status == "rejected" and "already has a live position" in b.reason
        assert entries_filled(venue) == 1
        assert venue.calls["create_order"] == 1
        record = await engine.store.load_record(SYMBOL)
        assert record.intent_id == "twin-a", "the refused intent disturbed nothing"


# 10 -----------------------------------------------------------------------------------------
async def test_stream_disconnect_during_verification_switches_to_rest_at_once(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(position_lag=Lag.fixed(10.0), **pushes(1.5))
    async with FakeVenue(seed=30, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        ticket = await engine.submit(open_intent("dc-1", symbol=SYMBOL))
        await anyio.sleep(0.3)
        venue.disconnect("network blip")
        await ticket.wait()
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.PROTECTED and record.evidence == "rest"
        assert record.sent_to_verified_ms is not None
        assert record.sent_to_verified_ms < engine.settings.verification.push_deadline * 1000, (
            "waited out the push deadline on a dead stream"
        )
        assert venue.truth.is_protected(SYMBOL)


async def test_silent_stream_counts_as_down(clock: IOAwareMockClock, redis_url: str) -> None:
    # Heartbeats stop and nothing is pushed: the stream goes stale and REST takes over.
    knobs = FaultKnobs(heartbeat_interval=1000.0, position_lag=Lag.fixed(10.0), **pushes(drop=1.0))
    settings = ActorSettings(account=ACCOUNT, verification=VerificationSettings(push_deadline=50.0))
    async with FakeVenue(seed=31, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, settings, stale_after=5.0
    ) as engine:
        await wait_streams_healthy(engine)
        reply, record = await open_one(engine, venue)
        assert record.state is State.PROTECTED and record.evidence == "rest"
        assert record.sent_to_verified_ms < 50_000 and record.sent_to_verified_ms <= 5_500


# 11 -----------------------------------------------------------------------------------------
async def test_attached_stop_silently_missing_gets_a_separate_stop(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(attached_stop_missing_rate=1.0, **pushes())
    async with FakeVenue(seed=32, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        reply, record = await open_one(engine, venue)
        position = venue.truth.position(SYMBOL)
        assert position is not None and position.stop_price is None, "the venue dropped the attached stop"
        assert record.state is State.PROTECTED and record.protection is Protection.STOP_ORDER
        assert venue.truth.is_protected(SYMBOL)
        # Noticed from the pushed position (no stop on it), not by waiting out the deadline.
        assert record.sent_to_protected_ms < engine.settings.protection.stop_confirm_deadline * 1000


# close path ---------------------------------------------------------------------------------
async def test_close_is_verified_flat_and_leftover_stops_are_cancelled(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(lost_create_response_rate=0.0, **pushes())
    async with FakeVenue(seed=33, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        await open_one(engine, venue)
        assert len(venue.truth.open_stops(SYMBOL)) == 1
        venue.knobs.lost_create_response_rate = 1.0  # the close's response is lost too
        reply = await (await engine.submit(CloseIntent(intent_id="close-1", symbol=SYMBOL))).wait()
        record = await engine.store.load_record(SYMBOL)
        assert reply.status == "done" and record.state is State.CLOSED
        assert venue.truth.position(SYMBOL) is None
        assert venue.truth.open_stops(SYMBOL) == []
        closes = [o for o in venue.truth.orders.values() if o.reduce_only and o.kind == "market"]
        assert len(closes) == 1, "one close order despite the lost response"


async def test_a_stop_out_after_protection_is_followed_to_closed_externally(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=34, knobs=FaultKnobs(**pushes())) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        reply, record = await open_one(engine, venue)
        venue.set_price(SYMBOL, record.stop_price * 0.99)  # the attached stop fires
        assert venue.truth.position(SYMBOL) is None
        record = await settled(engine, SYMBOL, State.CLOSED_EXTERNALLY)
        assert record.state is State.CLOSED_EXTERNALLY, "the record follows the venue's stop-out"
        close = await (await engine.submit(CloseIntent(intent_id="close-2", symbol=SYMBOL))).wait()
        assert close.status == "rejected" and "no live position" in close.reason
        assert venue.calls["create_order"] == 1, "nothing sent for a position already gone"


async def test_close_with_no_live_position_is_refused_and_sends_nothing(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=35) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(CloseIntent(intent_id="close-3", symbol=SYMBOL))).wait()
        assert reply.status == "rejected" and "no live position" in reply.reason
        assert venue.calls["create_order"] == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("symbol", "NOPE/USDT:USDT", "unknown symbol"),
        ("qty", 0.001, "below the venue's minimum"),
        ("qty", -1.0, "qty: -1.0 is below the venue's minimum"),
        ("stop_price", 0.0, "stop_price: required"),
    ],
)
async def test_bad_intents_are_refused_and_nothing_is_sent(
    clock: IOAwareMockClock, redis_url: str, field: str, value: object, message: str
) -> None:
    """The venue's rules, for an intent built in code. The types' own constraints (an id's
    pattern, numbers above 0) are checked where an intent is decoded (test_poison_intents)."""
    import msgspec

    async with FakeVenue(seed=36) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        intent = msgspec.structs.replace(open_intent("bad-1", symbol=SYMBOL), **{field: value})
        reply = await (await engine.submit(intent)).wait()
        assert reply.status == "rejected" and message in reply.reason
        assert sum(venue.calls[m] for m in ("create_order", "place_stop", "cancel_order")) == 0
        assert await engine.store.list_records() == []


async def test_no_resend_while_the_venue_cannot_answer_on_a_reuse_tolerant_venue(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # Found by the fault schedules: a lost response, then a 40 s REST outage, on a venue that
    # accepts a reused client id (Binance-like). Failing lookups are not "unknown order".
    knobs = FaultKnobs(
        lost_create_response_rate=1.0,
        outage_after_lost_response=1.0,
        rest_outage_for=Lag.fixed(40.0),
        reject_duplicate_client_ids=False,
        **pushes(drop=1.0),
    )
    async with FakeVenue(seed=37, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        reply, record = await open_one(engine, venue)
        assert entries_filled(venue) == 1
        assert venue.calls["create_order"] == 1, "nothing resent while REST was down"
        assert record.state is State.PROTECTED
        assert venue.truth.is_protected(SYMBOL)
