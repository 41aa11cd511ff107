"""The lifecycle's one transition table, and the edges where a state change used to be lost.

* The README's table is the code's table; an invalid change raises; no module sets a state
  but `PositionRecord.transition`.
* A close that keeps failing says so (``close_failing``) and is finished as a close after a
  restart, its intent answered (issue 13, defect 3).
* An intent is never left ``accepted`` by a crash between the record write that settles it and
  its answer: the answer rides in that write's transaction, and at start-up every settled
  record's intents still saying ``accepted`` are answered (issue 13, defect 2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from posguard.actors import ids
from posguard.actors.intents import CloseIntent, IntentRecord
from posguard.actors.records import TRANSITIONS, InvalidTransition, PositionRecord, State, describe_transitions
from posguard.actors.settings import ActorSettings, ProtectionSettings
from posguard.streams.backoff import Backoff
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

REPO = Path(__file__).resolve().parents[1]
SYMBOL = "SOL/USDT:USDT"
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})
QUIET_AUDIT = AuditSettings(interval=1000.0)


def test_the_readme_lifecycle_table_is_the_transition_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```\n{describe_transitions()}\n```" in readme, (
        "README's lifecycle table differs from actors/records.py TRANSITIONS; paste describe_transitions():\n"
        + describe_transitions()
    )


def test_an_invalid_transition_raises_and_changes_nothing() -> None:
    record = PositionRecord(symbol=SYMBOL, intent_id="t-1", state=State.CLOSED, side="buy", qty=1.0,
                            stop_price=1.0, client_order_id=ids.entry_id(ACCOUNT, "t-1"), reason="closed on request")
    with pytest.raises(InvalidTransition, match="closed -> protected"):
        record.transition(State.PROTECTED, "audit")
    assert (record.state, record.reason) == (State.CLOSED, "closed on request")
    record = PositionRecord(symbol=SYMBOL, intent_id="t-2", state=State.CLOSING, side="buy", qty=1.0,
                            stop_price=1.0, client_order_id=ids.entry_id(ACCOUNT, "t-2"))
    with pytest.raises(InvalidTransition):
        record.transition(State.UNVERIFIED)  # what a failing close used to become (defect 3)
    record.transition(State.CLOSE_FAILING, "still trying")
    assert record.state is State.CLOSE_FAILING and not record.closed_at
    record.transition(State.CLOSED, "closed on request")
    assert record.closed_at, "a terminal state stamps closed_at"
    assert all(not TRANSITIONS[s] for s in State if s.is_terminal)


def test_no_module_sets_a_record_state_but_the_transition_method() -> None:
    assignment = re.compile(r"\.state\s*(?:,[^=\n]*)?=(?!=)")
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for folder in ("actors", "streams", "supervisor")
        for path in (REPO / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if assignment.search(line) and not (path.name == "records.py" and "self.state = to" in line)
    ]
    assert not offenders, "set states with PositionRecord.transition:\n" + "\n".join(offenders)


async def test_a_close_that_keeps_failing_says_so_and_is_finished_after_a_restart(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    settings = ActorSettings(account=ACCOUNT, protection=ProtectionSettings(
        close_alert_after=2, close_backoff=Backoff(initial=1.0, maximum=2.0, jitter=0.0), stop_deadline=3.0,
    ))
    async with FakeVenue(seed=131, knobs=FAST_PUSH) as venue:
        async with running_engine(redis_url, venue, clock, settings, audit=QUIET_AUDIT) as engine:
            await wait_streams_healthy(engine)
            opened = await (await engine.submit(open_intent("keeps-1", symbol=SYMBOL))).wait()
            assert opened.outcome == "protected", opened
            venue.knobs.rest_error_rate = 1.0  # every REST call fails before taking effect
            await engine.submit(CloseIntent(intent_id="keeps-1-close", symbol=SYMBOL))
            with anyio.fail_after(120):
                while (record := await engine.store.load_record(SYMBOL)).state is not State.CLOSE_FAILING:
                    assert record.state in (State.PROTECTED, State.CLOSING), record
                    await anyio.sleep(0.1)
            assert venue.truth.position(SYMBOL) is not None, "nothing closed while REST was failing"
            engine.stopping = True
        venue.knobs.rest_error_rate = 0.0
        async with running_engine(redis_url, venue, clock, settings, audit=QUIET_AUDIT) as engine:
            with anyio.fail_after(120):
                while (answer := await engine.store.load_intent("keeps-1-close")).status == "accepted":
                    await anyio.sleep(0.1)
            record = await engine.store.load_record(SYMBOL)
    assert (answer.status, answer.outcome) == ("done", "closed"), answer
    assert answer.reason.startswith("finished after a restart"), answer
    assert record.state is State.CLOSED, record
    assert venue.truth.position(SYMBOL) is None, "the close was driven on after the restart"
    assert not [o for o in venue.truth.orders.values() if o.kind == "stop" and o.status == "open"], \
        "its stop was cancelled once the position was closed"


class AnswerLosingStore:
    """A store that dies (like a SIGKILL would) writing an intent's final answer on its own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.lost: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save_intent(self, intent: IntentRecord) -> None:
        if intent.status != "accepted" and intent.intent_id not in self.lost:
            self.lost.append(intent.intent_id)
            raise RuntimeError(f"injected crash before answering {intent.intent_id}")
        await self._inner.save_intent(intent)

    async def save_record(self, record: PositionRecord, note: str = "", *,
                          replies: Sequence[IntentRecord] = ()) -> None:
        await self._inner.save_record(record, note, replies=replies)


async def test_an_intent_whose_record_settled_is_answered_in_the_same_write(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=132, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=QUIET_AUDIT
    ) as engine:
        await wait_streams_healthy(engine)
        store = AnswerLosingStore(engine.store)
        engine.ctx.store = store  # type: ignore[assignment]
        venue.knobs.reject_rate = 1.0  # the entry is refused: the record settles `rejected`
        await engine.submit(open_intent("settles-1", symbol=SYMBOL))
        with anyio.fail_after(60):
            while (answer := await engine.store.load_intent("settles-1")) is None or answer.status == "accepted":
                await anyio.sleep(0.1)
        record = await engine.store.load_record(SYMBOL)
    assert record.state is State.REJECTED
    assert (answer.status, answer.outcome) == ("rejected", "rejected"), answer
    assert store.lost == [], "no separate answer write was needed (it rode with the record's)"


async def test_start_up_answers_every_settled_record_intent_left_accepted(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=133, knobs=FAST_PUSH) as venue:
        async with running_engine(redis_url, venue, clock, audit=QUIET_AUDIT) as engine:
            # What a crash between the two writes of the previous version left behind.
            await engine.store.save_intent(IntentRecord(intent_id="left-1", action="open", symbol=SYMBOL,
                                                        status="accepted"))
            await engine.store.save_intent(IntentRecord(intent_id="left-1-close", action="close", symbol=SYMBOL,
                                                        status="accepted"))
            await engine.store.save_record(PositionRecord(
                symbol=SYMBOL, intent_id="left-1", state=State.CLOSED, side="buy", qty=1.0, filled_qty=1.0,
                stop_price=140.0, client_order_id=ids.entry_id(ACCOUNT, "left-1"), close_intent_id="left-1-close",
                close_client_order_id=ids.close_id(ACCOUNT, "left-1-close"), reason="closed on request",
                settled_ms=venue.now_ms(),
            ))
            engine.stopping = True
        async with running_engine(redis_url, venue, clock, audit=QUIET_AUDIT) as engine:
            with anyio.fail_after(30):
                while {(await engine.store.load_intent(i)).status for i in ("left-1", "left-1-close")} != {"done"}:
                    await anyio.sleep(0.1)
            opened, closed = [await engine.store.load_intent(i) for i in ("left-1", "left-1-close")]
    assert (opened.outcome, closed.outcome) == ("closed", "closed")
    assert closed.client_order_id == ids.close_id(ACCOUNT, "left-1-close")
    assert venue.calls["create_order"] == 0, "answering sends nothing"
