"""The venue's resend rule (issue 14): when an entry the venue keeps calling unknown may be sent again.

Binance keeps a client order id unique only among open orders: a filled market entry's id can
be used again, and its REST says "does not exist" for tens of seconds after creation. Sending
again on "unknown" there opens a second position. Bybit refuses any reused id, so the same
resend is harmless there and is what recovers a request that never arrived.
"""

from __future__ import annotations

import anyio
import pytest

from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings, VerificationSettings
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import closing_side
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.errors import VenueUnavailable
from posguard.supervisor.engine import Engine
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

SYMBOL = "ETH/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
EVERY_PUSH_DROPPED = {t: 1.0 for t in TOPICS}


async def open_one(engine: Engine, venue: FakeVenue, qty: float | None = None) -> PositionRecord:
    """Open one position, checking I1 at every transition; the record once answered."""
    engine.ctx.observers.append(lambda record, _note: assert_never_falsely_closed(record, venue))
    await wait_streams_healthy(engine)
    await (await engine.submit(open_intent("i-1", symbol=SYMBOL, qty=qty))).wait()
    record = await engine.store.load_record(SYMBOL)
    assert record is not None
    return record


async def test_binance_like_filled_entry_unknown_for_60s_is_never_sent_twice(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The response is lost, REST calls the filled entry unknown for 60 s, no push arrives."""
    knobs = FaultKnobs(
        lost_create_response_rate=1.0,
        order_lag=Lag.fixed(60.0),
        push_drop=EVERY_PUSH_DROPPED,
        reject_duplicate_client_ids=False,
    )
    async with FakeVenue(seed=141, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        record = await open_one(engine, venue)
        assert venue.calls["create_order"] == 1, "an entry the venue calls unknown was sent again"
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert venue.truth.position(SYMBOL).size == record.qty
        assert venue.truth.is_protected(SYMBOL)
        assert record.state in (State.PROTECTED, State.UNVERIFIED)
        # The fill shows in the executions at once: it is protected long before the 60 s lag ends.
        assert record.sent_to_protected_ms is not None and record.sent_to_protected_ms < 15_000


async def test_binance_like_lost_request_is_not_resent_before_the_venues_grace(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The request never arrived; the venue's 60 s grace outlasts the entry's deadline."""
    knobs = FaultKnobs(push_drop=EVERY_PUSH_DROPPED, reject_duplicate_client_ids=False)
    async with FakeVenue(seed=142, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        venue.fail_next("create_order", VenueUnavailable("request timed out"))
        record = await open_one(engine, venue)
        assert venue.calls["create_order"] == 1
        assert venue.truth.entries_filled[SYMBOL] == 0
        assert record.state is State.UNVERIFIED, "no evidence either way: the audit owns it"


async def test_binance_like_lost_request_is_resent_after_the_grace_of_silence(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """With a deadline past the venue's grace, 60 s with no push, no fill and no position
    earns the resend, under the same id."""
    knobs = FaultKnobs(push_drop=EVERY_PUSH_DROPPED, reject_duplicate_client_ids=False)
    settings = ActorSettings(account=ACCOUNT, verification=VerificationSettings(hard_deadline=120.0))
    async with FakeVenue(seed=143, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock, settings
    ) as engine:
        venue.fail_next("create_order", VenueUnavailable("request timed out"))
        started = anyio.current_time()
        record = await open_one(engine, venue)
        assert venue.calls["create_order"] == 2
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert venue.truth.is_protected(SYMBOL)
        assert record.state is State.PROTECTED
        assert anyio.current_time() - started >= 60.0, "resent only after the venue's grace"


async def test_bybit_like_lost_request_is_resent_after_lookup_grace(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(push_drop=EVERY_PUSH_DROPPED, reject_duplicate_client_ids=True)
    async with FakeVenue(seed=144, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        venue.fail_next("create_order", VenueUnavailable("request timed out"))
        started = anyio.current_time()
        record = await open_one(engine, venue)
        assert venue.calls["create_order"] == 2, "resent under the same id after lookup_grace"
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert venue.truth.is_protected(SYMBOL)
        assert record.state is State.PROTECTED
        assert anyio.current_time() - started < engine.ctx.settings.verification.hard_deadline


async def test_bybit_like_filled_entry_unknown_for_60s_is_found_not_duplicated(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The same lag on Bybit: the resend after lookup_grace is refused as a duplicate id."""
    knobs = FaultKnobs(lost_create_response_rate=1.0, order_lag=Lag.fixed(60.0), push_drop=EVERY_PUSH_DROPPED)
    async with FakeVenue(seed=145, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await open_one(engine, venue)
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert venue.truth.is_protected(SYMBOL)


def test_simulated_venue_rule_follows_its_duplicate_id_knob() -> None:
    bybit_like = FakeVenue(knobs=FaultKnobs(reject_duplicate_client_ids=True)).unknown_order_rule
    binance_like = FakeVenue(knobs=FaultKnobs(reject_duplicate_client_ids=False)).unknown_order_rule
    assert bybit_like.unknown_is_final and not bybit_like.entry_needs_silence
    assert not binance_like.unknown_is_final and binance_like.entry_needs_silence
    assert binance_like.entry_grace is not None and binance_like.entry_grace >= 60.0


# -- the "unverified forever" gap: an entry the venue never saw, past the venue's grace ----------


async def settled(engine: Engine, venue: FakeVenue, states: frozenset[State], *, within: float = 600.0) -> PositionRecord:
    """The record once a saved transition puts it in one of ``states`` (virtual seconds)."""
    reached = anyio.Event()
    engine.ctx.observers.append(lambda record, _note: reached.set() if record.state in states else None)
    record = await engine.store.load_record(SYMBOL)
    if record is None or record.state not in states:
        with anyio.fail_after(within):
            await reached.wait()
        record = await engine.store.load_record(SYMBOL)
    assert record is not None
    return record


async def audit_finished(engine: Engine) -> None:
    """The audit run under way (if any) has finished, its repairs included (a later run
    would tidy a stray stop on its own, as a ``stale_stop``)."""
    runs = engine.auditor.runs
    with anyio.fail_after(120):
        while engine.auditor.runs == runs:
            await anyio.sleep(0.01)


async def test_binance_like_lost_request_past_the_deadline_is_settled_rejected_by_the_audit(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The defaults (hard_deadline 60 s = the venue's 60 s grace): the request never reached the
    venue, the entry goes unverified at its deadline with a stop armed for nothing. Once the
    audit has seen the venue silent for its grace, the record is settled rejected, the stray
    stop is cancelled, the slot is free; nothing is ever sent twice."""
    knobs = FaultKnobs(push_drop=EVERY_PUSH_DROPPED, reject_duplicate_client_ids=False)
    async with FakeVenue(seed=146, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        venue.fail_next("create_order", VenueUnavailable("request timed out"))
        record = await open_one(engine, venue)
        assert record.state is State.UNVERIFIED
        record = await settled(engine, venue, frozenset({State.REJECTED}))
        assert "never reached the venue" in record.reason
        await audit_finished(engine)  # the audit run that settled it, its repair included
        assert venue.calls["create_order"] == 1, "settled, so never resent"
        assert venue.truth.entries_filled[SYMBOL] == 0 and venue.truth.position(SYMBOL) is None
        assert venue.truth.open_stops(SYMBOL) == [], "the stop armed for nothing is cancelled"
        assert engine.slots.statistics().occupied == 0, "the slot is given back"
        # Settled once and for good: later audits leave it (and the venue) alone.
        await engine.audit_now()
        assert (await engine.store.load_record(SYMBOL)).state is State.REJECTED
        assert venue.calls["create_order"] == 1


async def test_binance_like_lost_request_with_whole_position_stops_is_left_to_the_audit_not_closed(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """As above, with Binance's real stop rule (a whole-position stop is refused while there is
    nothing to close, -4509): the unverified entry's stops are all refused. Seen failing before
    `NothingToProtect`: an emergency close (a CRITICAL alert, a close order for nothing) that
    recorded a position that never existed as `closed`. Now it stays `unverified` for the
    audit, which settles it rejected; the venue saw one order only."""
    knobs = FaultKnobs(push_drop=EVERY_PUSH_DROPPED, reject_duplicate_client_ids=False, whole_position_stops=True)
    alerts: list[str] = []
    async with FakeVenue(seed=146, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        engine.ctx.observers.append(lambda record, note: alerts.append(note) if "emergency" in note else None)
        venue.fail_next("create_order", VenueUnavailable("request timed out"))
        record = await open_one(engine, venue)
        assert record.state is State.UNVERIFIED, record.reason
        record = await settled(engine, venue, frozenset({State.REJECTED, State.CLOSED, State.EMERGENCY_CLOSING}))
        assert record.state is State.REJECTED and "never reached the venue" in record.reason, record.reason
        assert alerts == []
        assert venue.calls["create_order"] == 1, "no close sent for a position that never existed"
        assert venue.truth.entries_filled[SYMBOL] == 0 and venue.truth.position(SYMBOL) is None
        assert venue.truth.open_stops(SYMBOL) == []


async def test_bybit_like_lost_request_keeps_resending_after_lookup_grace_with_the_defaults(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The same lost request on a venue that keeps ids for good: resent within the deadline
    (lookup_grace 5 s), verified and protected, as before."""
    knobs = FaultKnobs(push_drop=EVERY_PUSH_DROPPED, reject_duplicate_client_ids=True)
    async with FakeVenue(seed=146, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        venue.fail_next("create_order", VenueUnavailable("request timed out"))
        record = await open_one(engine, venue)
        assert record.state is State.PROTECTED
        assert venue.calls["create_order"] == 2
        assert venue.truth.entries_filled[SYMBOL] == 1 and venue.truth.is_protected(SYMBOL)
        await engine.audit_now()
        assert (await engine.store.load_record(SYMBOL)).state is State.PROTECTED


async def test_binance_like_unverified_entry_whose_fill_shows_after_the_grace_is_protected_not_settled(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The order reached the venue and filled, but every trace of it shows late: REST calls it
    unknown for 90 s, its executions and the position appear at 75 s (past the 60 s grace), no
    push arrives. It goes unverified at its deadline, protected anyway; the audit must not
    settle it on the venue's silence, and once the fill shows it is verified at the full size."""
    knobs = FaultKnobs(
        lost_create_response_rate=1.0,
        order_lag=Lag.fixed(90.0),
        execution_lag=Lag.fixed(75.0),
        position_lag=Lag.fixed(75.0),
        push_drop=EVERY_PUSH_DROPPED,
        reject_duplicate_client_ids=False,
    )
    async with FakeVenue(seed=147, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        record = await open_one(engine, venue)
        assert record.state is State.UNVERIFIED
        assert venue.truth.is_protected(SYMBOL), "protected while unverified"
        # An audit past the 60 s grace from the send, the venue still silent (the traces show at 75 s).
        assert 60.0 <= (venue.now_ms() - record.sent_ms) / 1000 < 75.0
        await engine.audit_now()
        assert (await engine.store.load_record(SYMBOL)).state is State.UNVERIFIED, "settled on a silence"
        assert venue.truth.is_protected(SYMBOL), "its stop was cancelled while the fill was on its way"
        record = await settled(engine, venue, frozenset({State.PROTECTED, State.REJECTED}))
        assert record.state is State.PROTECTED
        assert venue.calls["create_order"] == 1
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert venue.truth.position(SYMBOL).size == record.qty == record.filled_qty
        assert venue.truth.is_protected(SYMBOL)
        await engine.audit_now()
        assert venue.truth.is_protected(SYMBOL) and venue.truth.entries_filled[SYMBOL] == 1


# -- the required test, with the fill showing before and after the grace, and in parts --


def one_position_protected_in_full(venue: FakeVenue, record: PositionRecord, qty: float) -> str | None:
    """What is still wrong with the venue's ground truth, or None: exactly one entry order
    filled (one position, the intent's size) and a stop that closes all of it."""
    filled_entries = [o for o in venue.truth.orders.values() if o.client_order_id == record.client_order_id and o.filled > 0]
    if len(filled_entries) != 1:
        return f"{len(filled_entries)} entry orders filled"
    position = venue.truth.position(SYMBOL)
    if position is None or abs(position.size - qty) > QTY_TOLERANCE:
        return f"the venue holds {position}, not one position of {qty}"
    stops = sum(o.qty for o in venue.truth.open_stops(SYMBOL) if o.side == closing_side(position.side))
    if position.stop_price is None and stops < position.size - QTY_TOLERANCE:
        return f"stops cover {stops} of {position.size}"
    return None


@pytest.mark.parametrize(
    ("shows_at", "second_part_at"),
    [(0.0, None), (59.0, None), (61.0, None), (0.0, 5.0), (0.0, 61.0), (61.0, 30.0)],
    ids=["fill-seen-at-once", "fill-seen-at-59s", "fill-seen-at-61s", "split-5s", "split-second-part-at-61s",
         "split-seen-at-61s"],
)
async def test_binance_like_filled_entry_unknown_for_60s_push_dropped_one_position_protected_in_full(
    clock: IOAwareMockClock, redis_url: str, shows_at: float, second_part_at: float | None
) -> None:
    """Issue 14: REST calls the filled entry unknown for 60 s and every push is dropped; its
    executions and the position show over REST at ``shows_at`` (before or after the 60 s
    grace and deadline), filled at once or in two parts (the second ``second_part_at`` s
    later). Exactly one position on the venue, the intent's size, protected by a stop for all
    of it; the entry sent once and never settled on the silence."""
    qty = 0.02
    knobs = FaultKnobs(
        lost_create_response_rate=1.0,
        order_lag=Lag.fixed(60.0),
        execution_lag=Lag.fixed(shows_at),
        position_lag=Lag.fixed(shows_at),
        push_drop=EVERY_PUSH_DROPPED,
        reject_duplicate_client_ids=False,
        split_fill_rate=1.0 if second_part_at is not None else 0.0,
        split_fill_parts=2,
        split_fill_over=Lag.fixed(second_part_at or 0.0),
    )
    async with FakeVenue(seed=148, knobs=knobs, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        record = await open_one(engine, venue, qty=qty)
        assert venue.calls["create_order"] == 1, "an entry the venue calls unknown was sent again"
        assert record.state in (State.PROTECTED, State.UNVERIFIED)
        for _ in range(6):  # audits until the record holds the full, protected size (or give up)
            record = await engine.store.load_record(SYMBOL)
            if record.state is State.PROTECTED and record.filled_qty >= qty - QTY_TOLERANCE \
                    and one_position_protected_in_full(venue, record, qty) is None:
                break
            await anyio.sleep(engine.audit_settings.interval)
        assert one_position_protected_in_full(venue, record, qty) is None, one_position_protected_in_full(venue, record, qty)
        assert record.state is State.PROTECTED and abs(record.filled_qty - qty) <= QTY_TOLERANCE, record
        assert venue.calls["create_order"] == 1
        # Bare only until a trace shows, or till the deadline arms a stop for the full size
        # anyway; never for the second part of a split fill (its stop was sized for it).
        bound = min(shows_at, engine.ctx.settings.verification.hard_deadline) + 5.0
        assert venue.truth.max_unprotected_seconds(venue.now_ms() / 1000) < bound
