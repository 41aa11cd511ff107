"""Attacks on the lifecycle's edges (a hostile session's, after issue 13), each asserting what
the README and DESIGN.md promise against the simulated venue's ground truth: ids that collide
with posguard's own work, an id reused after its intent record expired, a quarantined hash
released by the operator, replies of two intents on one id's list, two closes, a close of an
unverified entry, a restart while emergency-closing.
"""

from __future__ import annotations

import anyio
import pytest

from posguard.actors.intents import CloseIntent, body_of
from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings, ProtectionSettings, VerificationSettings
from posguard.client import is_reply_to
from posguard.streams.backoff import Backoff
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
QUIET_AUDIT = AuditSettings(interval=1000.0)
GONE = (State.CLOSED, State.CLOSED_EXTERNALLY, State.REJECTED)


class Watch:
    """Every transition, with the venue's truth at that moment."""

    def __init__(self, venue: FakeVenue) -> None:
        self.venue = venue
        self.false_gone: list[str] = []
        self.states: list[tuple[str, str, str]] = []

    def __call__(self, record: PositionRecord, note: str) -> None:
        self.states.append((record.symbol, record.intent_id, str(record.state)))
        held = self.venue.truth.position(record.symbol)
        if record.state in GONE and held is not None:
            self.false_gone.append(f"{record.intent_id} {record.state} ({record.reason}) while venue holds {held.size}")


async def wait_final(engine, intent_id: str, timeout: float = 120.0):
    with anyio.fail_after(timeout):
        while (answer := await engine.store.load_intent(intent_id)) is None or answer.status == "accepted":
            await anyio.sleep(0.1)
    return answer


@pytest.mark.parametrize("attached", [True, False], ids=["attached-stop", "separate-stop"])
async def test_a_close_intent_named_like_an_old_emergency_close_is_not_taken_for_a_fill(
    clock: IOAwareMockClock, redis_url: str, attached: bool
) -> None:
    """Open A cannot be protected (every stop refused): emergency close under key 'A:emergency'.
    Open B is protected. A close intent whose id is 'A:emergency' derives the very client
    order ids the old emergency close used; the venue (Bybit-style) refuses the duplicate,
    the lookup finds the *old* filled close, and that must not count as closing B."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, attached_stop_missing_rate=1.0,
                       stop_reject_rate=1.0)
    settings = ActorSettings(account=ACCOUNT, protection=ProtectionSettings(
        stop_backoff=Backoff(initial=0.1, maximum=0.2, jitter=0.0)))
    async with FakeVenue(seed=1301, knobs=knobs, supports_attached_stop=attached) as venue, running_engine(
        redis_url, venue, clock, settings, audit=QUIET_AUDIT
    ) as engine:
        watch = Watch(venue)
        engine.ctx.observers.append(watch)
        await wait_streams_healthy(engine)
        a = await (await engine.submit(open_intent("hA", symbol=SYMBOL))).wait()
        assert a.outcome == "closed", a
        assert venue.truth.position(SYMBOL) is None
        venue.knobs.attached_stop_missing_rate = 0.0
        venue.knobs.stop_reject_rate = 0.0
        b = await (await engine.submit(open_intent("hB", symbol=SYMBOL))).wait()
        assert b.outcome == "protected", b
        assert venue.truth.position(SYMBOL) is not None
        await engine.submit(CloseIntent(intent_id="hA:emergency", symbol=SYMBOL))
        answer = await wait_final(engine, "hA:emergency")
        record = await engine.store.load_record(SYMBOL)
        await anyio.sleep(5)
        stops = [o for o in venue.truth.orders.values() if o.kind == "stop" and o.status == "open"]
    held = venue.truth.position(SYMBOL)
    bare = held is not None and held.stop_price is None and not stops
    assert not watch.false_gone, (watch.false_gone, "and the position is now BARE" if bare else "")
    assert held is None, f"answer {answer.status}/{answer.outcome}, record {record.state} ({record.reason}), venue holds {held}"


# -- slots ------------------------------------------------------------------------------------

from posguard.actors.records import Protection  # noqa: E402
from posguard.actors.store.keys import Keys  # noqa: E402
from posguard.supervisor.risk import RiskLimits  # noqa: E402

KEYS = Keys(ACCOUNT)
BTC = "BTC/USDT:USDT"


def _bad_fields(symbol: str) -> dict[str, str]:
    fields = PositionRecord(
        symbol=symbol, intent_id="hand-1", state=State.PROTECTED, side="buy", qty=0.1, filled_qty=0.1,
        entry_price=150.0, stop_price=147.0, client_order_id="pgzzzzzzzzzzzzzzzz-e", protection=Protection.STOP_ORDER,
        created_at="2026-11-25T07:32:49.605+00:00", updated_at="2026-11-25T07:32:49.605+00:00",
    ).to_fields()
    fields["filled_qty"] = "0.1 "  # a hand edit: quarantined
    return fields


async def test_deleting_a_quarantined_hash_as_the_readme_says_frees_its_slot(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """README: "To release the symbol, fix the field (HSET) or delete the hash; the next audit
    takes the symbol over". With max_open_positions = 1 and no venue position on the symbol,
    the deleted hash's slot must not stay taken for the life of the process."""
    async with FakeVenue(seed=1302, knobs=FAST_PUSH) as venue:
        async with running_engine(redis_url, venue, clock, audit=QUIET_AUDIT) as engine:
            raw = engine.store.client
            await raw.hset(KEYS.position(SYMBOL), _bad_fields(SYMBOL))
            await raw.sadd(KEYS.positions, [SYMBOL])
            engine.stopping = True
        async with running_engine(redis_url, venue, clock, audit=QUIET_AUDIT,
                                  risk=RiskLimits(max_open_positions=1)) as engine:
            await wait_streams_healthy(engine)
            raw = engine.store.client
            await raw.delete([KEYS.position(SYMBOL)])
            await raw.srem(KEYS.positions, [SYMBOL])
            await engine.audit_now()
            await engine.audit_now()
            stats = engine.admission.slots.statistics()
            reply = await (await engine.submit(open_intent("after-delete", symbol=BTC))).wait()
    assert reply.outcome == "protected", (reply.status, reply.reason, stats)


async def test_a_fixed_quarantined_hash_that_says_closed_frees_its_slot(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The same, fixing the hash with HSET to a terminal state (what an operator who knows the
    position is gone would write)."""
    async with FakeVenue(seed=1303, knobs=FAST_PUSH) as venue:
        async with running_engine(redis_url, venue, clock, audit=QUIET_AUDIT) as engine:
            raw = engine.store.client
            fields = _bad_fields(SYMBOL)
            await raw.hset(KEYS.position(SYMBOL), fields)
            await raw.sadd(KEYS.positions, [SYMBOL])
            engine.stopping = True
        async with running_engine(redis_url, venue, clock, audit=QUIET_AUDIT,
                                  risk=RiskLimits(max_open_positions=1)) as engine:
            await wait_streams_healthy(engine)
            raw = engine.store.client
            await raw.hset(KEYS.position(SYMBOL), {"filled_qty": "0.1", "state": "closed"})
            await engine.audit_now()
            await engine.audit_now()
            stats = engine.admission.slots.statistics()
            reply = await (await engine.submit(open_intent("after-fix", symbol=BTC))).wait()
    assert reply.outcome == "protected", (reply.status, reply.reason, stats)


# -- ids ----------------------------------------------------------------------------------------


async def test_an_intent_id_used_again_after_its_intent_record_expired_is_run_or_refused_not_answered_done(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """README: intent records expire after 7 days, "after which it can be used again". The
    symbol's position record still carries the old intent id (closed). An open under that id
    must run (or be refused), never be answered `done` from the old record without sending."""
    async with FakeVenue(seed=1304, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=QUIET_AUDIT
    ) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("reuse-1", symbol=SYMBOL))).wait()).outcome == "protected"
        closed = await (await engine.submit(CloseIntent(intent_id="reuse-1-close", symbol=SYMBOL))).wait()
        assert closed.outcome == "closed"
        await engine.store.client.delete([KEYS.intent("reuse-1")])  # its 7 days are up
        entries = venue.calls["create_order"]
        again = await (await engine.submit(open_intent("reuse-1", symbol=SYMBOL))).wait()
        sent = venue.calls["create_order"] - entries
        held = venue.truth.position(SYMBOL)
    assert not (again.status == "done" and sent == 0 and held is None), (
        f"answered {again.status}/{again.outcome} with nothing sent and no position: the old record answered it")


async def test_an_open_named_like_an_adoption_does_not_take_over_the_adopted_record(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """An orphan is adopted under intent id 'adopt/<ts_ms>' (shown in posguard status). An
    open intent sent under that id must not be answered from the adopted record (it is refused:
    no strategy's id may contain '/')."""
    from posguard.streams.venue.protocol import OrderRequest

    async with FakeVenue(seed=1305, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=QUIET_AUDIT
    ) as engine:
        await wait_streams_healthy(engine)
        await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=0.1, client_order_id="manual-1"))
        await anyio.sleep(1)
        await engine.audit_now()
        with anyio.fail_after(30):
            while (record := await engine.store.load_record(SYMBOL)) is None or record.state is not State.PROTECTED:
                await anyio.sleep(0.1)
        entries = venue.calls["create_order"]
        reply = await (await engine.submit(open_intent(record.intent_id, symbol=SYMBOL))).wait()
    assert not (reply.status == "done" and venue.calls["create_order"] == entries), (
        f"{record.intent_id}: answered {reply.status}/{reply.outcome} from the adopted record; nothing ran")


# -- replies ------------------------------------------------------------------------------------

import json  # noqa: E402


async def test_a_different_body_refusal_does_not_land_in_the_first_intents_reply_list_as_its_answer(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Id 'x' opens ETH (a slow ticker keeps it in flight); the same id for SOL is refused as a
    different body. A client following 'x' the way `posguard open` does (BLPOP until the
    first final status) must hear ETH's own outcome, not SOL's refusal."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, rest_latency_by_method={"fetch_price": 2.0})
    async with FakeVenue(seed=1306, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=QUIET_AUDIT
    ) as engine:
        await wait_streams_healthy(engine)
        first = await engine.submit(open_intent("x", symbol="ETH/USDT:USDT"))
        await anyio.sleep(0.5)
        await engine.submit(open_intent("x", symbol=SYMBOL))
        assert (await first.wait()).outcome == "protected"
        replies = [json.loads(r) for r in await engine.store.client.lrange(KEYS.reply("x"), 0, -1)]
    eth = body_of(open_intent("x", symbol="ETH/USDT:USDT"))
    finals = [r for r in replies if r["status"] in ("done", "rejected", "failed", "stale", "duplicate")
              and is_reply_to(r, eth)]  # what `posguard open` reads as its answer
    heard = finals[0]
    assert (heard["status"], heard["symbol"]) == ("done", "ETH/USDT:USDT"), (
        f"the ETH client hears {heard['status']} for {heard['symbol']} ({heard.get('reason')}) while ETH is "
        f"{venue.truth.position('ETH/USDT:USDT')}; list: {[(r['status'], r['symbol']) for r in replies]}")


# -- closes -------------------------------------------------------------------------------------


async def test_two_close_intents_back_to_back_close_once_and_answer_both(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1307, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=QUIET_AUDIT
    ) as engine:
        watch = Watch(venue)
        engine.ctx.observers.append(watch)
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("bb", symbol=SYMBOL))).wait()).outcome == "protected"
        c1 = await engine.submit(CloseIntent(intent_id="bb-c1", symbol=SYMBOL))
        c2 = await engine.submit(CloseIntent(intent_id="bb-c2", symbol=SYMBOL))
        r1, r2 = await c1.wait(), await c2.wait()
        closes = [o for o in venue.truth.orders.values() if o.kind != "stop" and o.reduce_only]
    assert (r1.status, r1.outcome) == ("done", "closed"), r1
    assert r2.status == "rejected", r2
    assert venue.truth.position(SYMBOL) is None and not watch.false_gone
    assert len(closes) == 1, closes


async def test_a_close_while_the_entry_is_unverified_closes_it_and_answers(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """REST down past the verification deadline with every push dropped: unverified (the fill
    is real). A close then, with REST back: the venue must end flat and the close answered.
    The outage ends within the stop budget after the deadline (60 + 15 s), so the unverified
    entry gets its stop; after a longer one the position is closed instead, once REST answers."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, push_drop={t: 1.0 for t in TOPICS},
                       rest_outage_for=Lag.fixed(68.0))
    async with FakeVenue(seed=1308, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=QUIET_AUDIT
    ) as engine:
        watch = Watch(venue)
        engine.ctx.observers.append(watch)
        await wait_streams_healthy(engine)
        venue.knobs.lost_create_response_rate = 1.0
        venue.knobs.outage_after_lost_response = 1.0
        ticket = await engine.submit(open_intent("uv", symbol=SYMBOL))
        opened = await ticket.wait()
        venue.knobs.lost_create_response_rate = 0.0
        venue.knobs.outage_after_lost_response = 0.0
        assert opened.outcome == "unverified", opened
        closing = await engine.submit(CloseIntent(intent_id="uv-close", symbol=SYMBOL))
        venue.knobs.push_drop = {}
        answer = await closing.wait()
        await anyio.sleep(5)
        record = await engine.store.load_record(SYMBOL)
    assert not watch.false_gone, watch.false_gone
    assert venue.truth.position(SYMBOL) is None, (answer, record.state, record.reason)
    assert (answer.status, answer.outcome) == ("done", "closed"), answer


async def test_a_restart_while_emergency_closing_finishes_the_close_and_answers_the_open(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, stop_reject_rate=1.0)
    settings = ActorSettings(account=ACCOUNT, protection=ProtectionSettings(
        stop_backoff=Backoff(initial=0.1, maximum=0.2, jitter=0.0),
        close_backoff=Backoff(initial=1.0, maximum=2.0, jitter=0.0), stop_deadline=3.0))
    async with FakeVenue(seed=1309, knobs=knobs, supports_attached_stop=False) as venue:
        async with running_engine(redis_url, venue, clock, settings, audit=QUIET_AUDIT) as engine:
            await wait_streams_healthy(engine)
            await engine.submit(open_intent("em", symbol=SYMBOL))
            with anyio.fail_after(60):
                while (r := await engine.store.load_record(SYMBOL)) is None or r.state is not State.EMERGENCY_CLOSING:
                    await anyio.sleep(0.01)
            venue.knobs.rest_error_rate = 1.0
            await anyio.sleep(3)
            engine.stopping = True
        assert venue.truth.position(SYMBOL) is not None
        venue.knobs.rest_error_rate = 0.0
        venue.knobs.stop_reject_rate = 0.0
        async with running_engine(redis_url, venue, clock, settings, audit=QUIET_AUDIT) as engine:
            answer = await wait_final(engine, "em")
            record = await engine.store.load_record(SYMBOL)
    assert venue.truth.position(SYMBOL) is None, record
    assert record.state is State.CLOSED and answer.status == "done", (record.state, answer)


async def test_a_close_while_the_entry_still_fills_and_rest_calls_it_unknown_waits_for_the_last_part(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Found by the fault schedules (a seed run after 113 others): an entry filling in two parts
    30 s apart, its order pushes lost and REST calling it unknown for 60 s (its lag), verified before the
    second part (a 4 s deadline). A close
    between the parts reduces the first part; "unknown" of an entry known to have filled is
    REST's lag, not "no longer working": the record must not say closed while the second part
    is still to come, and ends flat."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, push_drop={"orders": 1.0},
                       order_lag=Lag.fixed(60.0), split_fill_rate=1.0, split_fill_parts=2,
                       split_fill_over=Lag.fixed(30.0))
    settings = ActorSettings(account=ACCOUNT, verification=VerificationSettings(push_deadline=1.0, hard_deadline=4.0))
    async with FakeVenue(seed=1311, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, settings, audit=QUIET_AUDIT
    ) as engine:
        watch = Watch(venue)
        engine.ctx.observers.append(watch)
        await wait_streams_healthy(engine)
        await engine.submit(open_intent("parts-1", symbol=SYMBOL, qty=1.0))
        with anyio.fail_after(60):
            while (record := await engine.store.load_record(SYMBOL)) is None or record.state not in (
                    State.PROTECTED, State.UNVERIFIED):
                await anyio.sleep(0.1)
        assert venue.truth.orders[record.client_order_id].status == "partially_filled", "the close comes between"
        await engine.submit(CloseIntent(intent_id="parts-1-close", symbol=SYMBOL))
        answer = await wait_final(engine, "parts-1-close", timeout=300)
        with anyio.fail_after(120):  # the entry's last part has come (the venue's own schedule)
            while venue.truth.orders[record.client_order_id].status != "filled":
                await anyio.sleep(0.5)
    assert watch.false_gone == [], watch.false_gone
    assert (answer.status, answer.outcome) == ("done", "closed"), answer
    assert venue.truth.position(SYMBOL) is None, "both parts were closed"
