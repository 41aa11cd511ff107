"""The supervisor: restarts with backoff, safe mode, the audit and its repairs, start-up
after a crash. Trio, mock clock, fake venue, real Redis; asserted against the venue's truth."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from posguard.actors import ids
from posguard.actors.intents import CloseIntent, IntentRecord
from posguard.actors.records import PositionRecord, Protection, State
from posguard.actors.store.console import OperatorConsole
from posguard.actors.store.health import OperatorRequests
from posguard.streams.backoff import Backoff
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.supervision import AuditSettings, SupervisorSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})


class CrashingStore:
    """A store whose record writes fail with a bug-like error while ``armed`` says so."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.crash_when: str | None = None  # crash saving a record in this state
        self.crash_times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save_record(self, record: PositionRecord, note: str = "", *, replies: Sequence[IntentRecord] = ()) -> None:
        if self.crash_when is not None and record.state == self.crash_when:
            self.crash_times.append(anyio.current_time())
            raise RuntimeError(f"injected failure saving a {record.state} record")
        await self._inner.save_record(record, note, replies=replies)


def supervisor_settings(**kwargs: Any) -> SupervisorSettings:
    return SupervisorSettings(restart_backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0), **kwargs)


async def test_a_failed_actor_restarts_with_backoff_and_finishes_the_step(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=40, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, supervisor=supervisor_settings(max_restarts=10)
    ) as engine:
        store = CrashingStore(engine.store)
        engine.ctx.store = store  # type: ignore[assignment]
        store.crash_when = "protected"  # the first write after the entry filled
        await wait_streams_healthy(engine)
        audits_before = engine.auditor.runs
        ticket = await engine.submit(open_intent("crash-1", symbol=SYMBOL))
        reply = await ticket.wait()
        assert reply.status == "failed", f"the caller learns the step was interrupted: {reply}"
        # Let it fail four times, then let it through.
        while len(store.crash_times) < 4:
            await anyio.sleep(0.01)
        store.crash_when = None
        with anyio.fail_after(60):
            while (record := await engine.store.load_record(SYMBOL)).state is not State.PROTECTED:
                await anyio.sleep(0.1)
        times = store.crash_times[:4]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps[2] > gaps[1] > gaps[0] >= 1.0 - 1e-9, f"restart backoff should grow: {gaps}"  # float clock
        assert record.state is State.PROTECTED
        assert venue.truth.entries_filled[SYMBOL] == 1, "the restarted actor looked the entry up, not resent it"
        assert venue.truth.is_protected(SYMBOL)
        assert not engine.gate.safe_mode
        # The intent's stored answer (what `posguard open` and bots follow) is final too.
        with anyio.fail_after(60):
            while (answer := await engine.store.load_intent("crash-1")).status == "accepted":
                await anyio.sleep(0.1)
        assert (answer.status, answer.outcome) == ("done", "protected"), answer
        assert answer.reason.startswith("finished after a restart"), answer
        with anyio.fail_after(20):  # well before the periodic audit (60 s)
            while engine.auditor.runs == audits_before:  # a crash is followed by an audit
                await anyio.sleep(0.1)


async def test_restart_backoff_starts_over_after_a_healthy_window(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=41, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, supervisor=supervisor_settings(max_restarts=20, restart_window=30.0)
    ) as engine:
        store = CrashingStore(engine.store)
        engine.ctx.store = store  # type: ignore[assignment]
        await wait_streams_healthy(engine)
        store.crash_when = "protected"  # the first write after the entry filled
        await engine.submit(open_intent("flaky-1", symbol=SYMBOL))
        with anyio.fail_after(60):
            while len(store.crash_times) < 4:  # backoff 1, 2, 4 s
                await anyio.sleep(0.01)
        store.crash_when = None
        with anyio.fail_after(60):
            while (await engine.store.load_record(SYMBOL)).state is not State.PROTECTED:
                await anyio.sleep(0.1)
        await anyio.sleep(40)  # healthy for longer than the restart window
        store.crash_when = "closed"  # the close is done on the venue; recording it fails
        await engine.submit(CloseIntent(intent_id="flaky-close", symbol=SYMBOL))
        with anyio.fail_after(120):
            while len(store.crash_times) < 6:
                await anyio.sleep(0.01)
        store.crash_when = None
        first, second = store.crash_times[4:6]
        assert 1.0 <= second - first < 2.0, f"a new incident starts at the initial backoff: {second - first:.1f} s"


async def test_restart_intensity_enters_safe_mode_entries_refused_protection_continues(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    settings = supervisor_settings(max_restarts=2, restart_window=60.0)
    async with FakeVenue(seed=41, knobs=FAST_PUSH, supports_attached_stop=False) as venue, running_engine(
        redis_url, venue, clock, supervisor=settings, audit=AuditSettings(interval=5.0)
    ) as engine:
        await wait_streams_healthy(engine)
        # An existing protected position on another symbol.
        reply = await (await engine.submit(open_intent("keep-1", symbol="BTC/USDT:USDT"))).wait()
        assert reply.outcome == "protected"
        store = CrashingStore(engine.store)
        engine.ctx.store = store  # type: ignore[assignment]
        store.crash_when = "protected"  # the first write after the entry filled
        await (await engine.submit(open_intent("loop-1", symbol=SYMBOL))).wait()
        with anyio.fail_after(120):
            while not engine.gate.safe_mode:
                await anyio.sleep(0.5)
        store.crash_when = None
        refused = await (await engine.submit(open_intent("new-1", symbol="ETH/USDT:USDT"))).wait()
        assert refused.status == "rejected" and "safe mode" in refused.reason
        assert venue.calls["create_order"] == 2, "nothing sent for the refused entry"
        health = (await engine.store.read_health()).status
        assert health.safe_mode is True and "restarts" in (health.safe_mode_reason or "")
        # The venue drops the BTC stop: the audit still repairs it in safe mode.
        [stop] = venue.truth.open_stops("BTC/USDT:USDT")
        await venue.cancel_order("BTC/USDT:USDT", stop.client_order_id)
        assert not venue.truth.is_protected("BTC/USDT:USDT")
        with anyio.fail_after(30):
            while not venue.truth.is_protected("BTC/USDT:USDT"):
                await anyio.sleep(0.5)
        # The crash-looping symbol's position got protected too once the fault cleared.
        with anyio.fail_after(60):
            while not venue.truth.is_protected(SYMBOL):
                await anyio.sleep(0.5)
        # An operator lifts safe mode; entries are accepted again.
        await OperatorConsole(engine.store.client, ACCOUNT).request(
            OperatorRequests(safe_mode_off_requested_ms=int(time.time() * 1000))
        )
        with anyio.fail_after(10):
            while engine.gate.safe_mode:
                await anyio.sleep(0.5)
        accepted = await (await engine.submit(open_intent("new-2", symbol="ETH/USDT:USDT"))).wait()
        assert accepted.status == "done"


async def test_safe_mode_is_left_only_by_an_operator_request_made_after_it_began(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The health hash's status field saying "no" (a status write or read from before safe
    mode began) is not an operator's command; a request older than safe mode is not either."""

    async def ticks(n: int) -> None:
        target = engine.watchdog.statistics().ticks + n
        with anyio.fail_after(30):
            while engine.watchdog.statistics().ticks < target:
                await anyio.sleep(0.05)

    async with FakeVenue(seed=43, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        console = OperatorConsole(engine.store.client, ACCOUNT)
        early = int(time.time() * 1000) - 1
        await console.request(OperatorRequests(safe_mode_off_requested_ms=early))
        assert engine.gate.enter_safe_mode("test: restarts")
        await engine.store.client.hset(engine.store.keys.health, {"safe_mode": "no"})  # stale status
        await ticks(3)
        assert engine.gate.safe_mode, "left safe mode without an operator"
        await console.request(OperatorRequests(safe_mode_off_requested_ms=int(time.time() * 1000) + 1))
        await ticks(2)
        assert not engine.gate.safe_mode
        assert (await engine.store.read_health()).status.safe_mode is False


async def test_orphan_position_is_adopted_and_protected(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=42, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=10.0)
    ) as engine:
        await wait_streams_healthy(engine)
        # Someone (the seed's bot, a human) opens a position behind posguard's back.
        await venue.create_order(OrderRequest(symbol=SYMBOL, side="sell", qty=3.0, client_order_id="manual-1"))
        assert not venue.truth.is_protected(SYMBOL)
        with anyio.fail_after(30):
            while not venue.truth.is_protected(SYMBOL):
                await anyio.sleep(0.5)
        record = await engine.store.load_record(SYMBOL)
        assert record is not None and record.state is State.PROTECTED
        assert record.side == "sell" and record.filled_qty == 3.0
        assert record.stop_price == pytest.approx(150.0 * 1.02)
        findings = await engine.store.client.xrange(engine.store.keys.audit)
        assert any(f.field_values["kind"] == "orphan" and "adopted" in f.field_values["action"] for f in findings)


async def test_audit_closes_a_record_only_on_proof(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, position_lag=Lag.fixed(0.0))
    async with FakeVenue(seed=43, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1000.0)
    ) as engine:
        await wait_streams_healthy(engine)
        await (await engine.submit(open_intent("proof-1", symbol=SYMBOL))).wait()
        # The venue's REST list stops showing the position (lag) although it is open: no change.
        venue.knobs.position_lag = Lag.fixed(1000.0)
        venue.set_price(SYMBOL, 151.0)  # moves nothing but keeps the position as it was
        engine.board.forget_positions()  # and no push said anything
        with venue.hide_position(SYMBOL):
            report = await engine.audit_now()
            assert report is not None and [f.kind for f in report.findings] == ["not_visible"]
            assert (await engine.store.load_record(SYMBOL)).state is State.PROTECTED
            assert "left open" in report.findings[0].action
        # Now the position really is stopped out, with executions to prove it.
        venue.disconnect()  # and the stream is down, so only the audit can notice
        venue.set_price(SYMBOL, 140.0)
        assert venue.truth.position(SYMBOL) is None
        with venue.hide_position(SYMBOL):
            report = await engine.audit_now()
            assert report is not None and "closed_externally" in report.findings[0].action
            assert (await engine.store.load_record(SYMBOL)).state is State.CLOSED_EXTERNALLY


async def test_audit_adopts_a_position_a_closed_record_is_contradicted_by(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=44, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1000.0)
    ) as engine:
        await wait_streams_healthy(engine)
        # Redis says rejected (an old bot's "rolled back"), but the venue holds the position.
        await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=2.0, client_order_id="x-1"))
        await engine.store.save_record(PositionRecord(
            symbol=SYMBOL, intent_id="old", state=State.REJECTED, side="buy", qty=2.0, stop_price=140.0,
            client_order_id="x-1", reason="rolled back", settled_ms=venue.now_ms() - 60_000,
        ))
        report = await engine.audit_now()
        assert report is not None and report.findings[0].kind == "orphan"
        assert "record says rejected" in report.findings[0].seen
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.PROTECTED and venue.truth.is_protected(SYMBOL)


async def test_audit_cancels_stale_stops_and_dry_run_repairs_nothing(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=45, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1000.0)
    ) as engine:
        await wait_streams_healthy(engine)
        await engine.audit_now()
        stale = ids.stop_id(ACCOUNT, "long-gone", 1)
        await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=1.0, client_order_id="m-1"))
        await venue.place_stop(StopRequest(symbol=SYMBOL, side="buy", qty=1.0, stop_price=200.0, client_order_id=stale))
        dry = await engine.audit_now(dry_run=True)
        assert dry is not None and {f.kind for f in dry.findings} == {"stale_stop", "orphan"}
        assert all(f.action.startswith("would ") for f in dry.findings)
        assert venue.truth.orders[stale].status == "open", "a dry run changes nothing"
        assert await engine.store.load_record(SYMBOL) is None
        report = await engine.audit_now()
        assert report is not None
        assert venue.truth.orders[stale].status == "cancelled"
        assert venue.truth.is_protected(SYMBOL)


async def test_start_up_after_a_crash_looks_the_entry_up_before_anything_new(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=46, knobs=FAST_PUSH) as venue:
        intent = open_intent("before-crash", symbol=SYMBOL)
        coid = ids.entry_id(ACCOUNT, intent.intent_id)
        # The previous process wrote ahead, sent the order, and died before the next write.
        async with running_engine(redis_url, venue, clock, audit=AuditSettings(interval=1000.0)) as engine:
            await engine.store.save_record(PositionRecord(
                symbol=SYMBOL, intent_id=intent.intent_id, state=State.SUBMITTING, side="buy", qty=intent.qty,
                stop_price=intent.stop_price, client_order_id=coid, protection=Protection.ATTACHED_REQUESTED, sent_ms=venue.now_ms() - 1,
            ))
            engine.stopping = True
        await venue.create_order(OrderRequest(
            symbol=SYMBOL, side="buy", qty=intent.qty, client_order_id=coid, stop_loss=intent.stop_price
        ))
        venue.knobs.reject_duplicate_client_ids = False  # even where a resend would go through
        async with running_engine(redis_url, venue, clock, audit=AuditSettings(interval=1000.0)) as engine:
            with anyio.fail_after(60):
                while (record := await engine.store.load_record(SYMBOL)).state is not State.PROTECTED:
                    await anyio.sleep(0.1)
        assert venue.calls["create_order"] == 1, "found by its client order id, not sent again"
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert record.order_id != ""


async def test_graceful_stop_refuses_new_intents_and_lets_the_step_finish(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    knobs = FaultKnobs(push_delay={t: Lag.fixed(1.0) for t in TOPICS})
    async with FakeVenue(seed=47, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        ticket = await engine.submit(open_intent("in-flight", symbol=SYMBOL))
        await anyio.sleep(0.1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.stop)
            while not engine.stopping:
                await anyio.sleep(0)
            late = await (await engine.submit(open_intent("late", symbol="BTC/USDT:USDT"))).wait()
        assert late.status == "rejected" and "shutting down" in late.reason
        assert (await ticket.wait()).outcome == "protected"
        assert venue.truth.is_protected(SYMBOL) and venue.truth.position("BTC/USDT:USDT") is None
