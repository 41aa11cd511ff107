"""Partial closes (`close` with ``qty`` or ``fraction``), through the simulated venue on trio
with the mock clock, real Redis, asserted against the venue's ground truth.

Three shapes of stop, as the venues have them: held by the position (Bybit's attached stop,
Full mode: `FakeVenue` by default), a whole-position order (Binance ``closePosition``), and a
sized stop order (a venue that sizes its stops), which is the one that must be replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import coredis
import msgspec
import pytest

from posguard.actors import ids
from posguard.actors.intents import CloseIntent, IntentRecord
from posguard.actors.records import PositionRecord, State, open_size
from posguard.actors.store.keys import Keys
from posguard.streams.backoff import Backoff
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.engine import Engine
from posguard.supervisor.supervision import SupervisorSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

SYMBOL = "BTC/USDT:USDT"  # step and minimum 0.001; open_intent's size 0.01
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
SHAPES = {
    "attached": ({}, FAST_PUSH),
    "close-position": ({"supports_attached_stop": False},
                       msgspec.structs.replace(FAST_PUSH, whole_position_stops=True, reject_duplicate_client_ids=False)),
    "sized": ({"supports_attached_stop": False}, msgspec.structs.replace(FAST_PUSH, whole_position_stops=False)),
}


def venue_for(shape: str, seed: int) -> FakeVenue:
    kwargs, knobs = SHAPES[shape]
    return FakeVenue(seed=seed, knobs=knobs, **kwargs)


def watch(engine: Engine, venue: FakeVenue) -> list[str]:
    """From now on, at every record write: I1 against the truth, and the venue's position
    covered by a live stop for its whole size (I2); what broke is collected, to be asserted
    empty."""
    broken: list[str] = []

    def check(record: PositionRecord, note: str) -> None:
        assert_never_falsely_closed(record, venue)
        if not venue.truth.is_protected(SYMBOL):
            broken.append(f"{record.state} ({note}): {venue.truth.position(SYMBOL)} bare;"
                          f" stops {venue.truth.open_stops(SYMBOL)}")

    engine.ctx.observers.append(check)
    return broken


def held(venue: FakeVenue) -> float:
    position = venue.truth.position(SYMBOL)
    return round(position.size, 9) if position is not None else 0.0


def stop_cover(venue: FakeVenue) -> str:
    """What guards the position, in words the shapes differ by."""
    position = venue.truth.position(SYMBOL)
    assert position is not None
    if position.stop_price is not None:
        return "held by the position"
    stops = venue.truth.open_stops(SYMBOL)
    if any(s.closes_position for s in stops):
        return "whole-position order"
    return "sized " + ",".join(f"{s.qty:g}" for s in stops)


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_partial_close_reduces_by_the_part_and_resizes_the_stop_then_the_rest_closes(
    clock: IOAwareMockClock, redis_url: str, shape: str
) -> None:
    async with venue_for(shape, 1801) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("pc-open"))).wait()).outcome == "protected"
        broken, bare_before = watch(engine, venue), venue.truth.max_unprotected_seconds(anyio.current_time())
        cover_before = stop_cover(venue)

        reply = await (await engine.submit(CloseIntent(intent_id="pc-1", symbol=SYMBOL, qty=0.004))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        assert "0.006 open" in reply.reason, reply.reason
        assert held(venue) == 0.006, "the venue's position reduced by exactly the part asked"
        record = await engine.store.load_record(SYMBOL)
        assert (record.state, record.closed_qty, record.partial_close_qty, open_size(record)) == (
            State.PROTECTED, 0.004, 0.0, 0.006), record
        assert record.filled_qty == 0.01, "what the entry filled stays: the proofs count exits against it"
        expected = {"attached": "held by the position", "close-position": "whole-position order",
                    "sized": "sized 0.006"}[shape]
        assert stop_cover(venue) == expected, venue.truth.open_stops(SYMBOL)
        if shape != "sized":
            assert stop_cover(venue) == cover_before, "a stop that covers any size is left as it is"
        assert ids.same_intent(reply.client_order_id, ids.close_id(ACCOUNT, "pc-1"), role="close")
        with anyio.fail_after(30):  # the audit reads the lagging lists: once they show the smaller position,
            while [p.size for p in await venue.fetch_positions(SYMBOL)] != [0.006]:
                await anyio.sleep(0.05)
        report = await engine.auditor.run()
        assert report.findings == [], "the smaller position is the partial close's, not a mismatch"

        half = await (await engine.submit(CloseIntent(intent_id="pc-2", symbol=SYMBOL, fraction=0.5))).wait()

        assert (half.status, half.outcome) == ("done", "protected"), half
        assert held(venue) == 0.003
        record = await engine.store.load_record(SYMBOL)
        assert (record.closed_qty, open_size(record)) == (0.007, 0.003), record
        if shape == "sized":
            assert stop_cover(venue) == "sized 0.003"

        rest = await (await engine.submit(CloseIntent(intent_id="pc-3", symbol=SYMBOL))).wait()

        assert (rest.status, rest.outcome) == ("done", "closed"), rest
        assert venue.truth.position(SYMBOL) is None, "ground truth: flat"
        assert venue.truth.open_stops(SYMBOL) == [], "no stop left armed"
        assert broken == [], broken
        # Bare only ever before the entry's stop (a venue without attached stops), never since.
        assert venue.truth.max_unprotected_seconds(anyio.current_time()) == bare_before
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        fields = await client.hgetall(Keys(ACCOUNT).position(SYMBOL))
    assert (fields["state"], fields["closed_qty"], fields["partial_close_qty"]) == ("closed", "0.007", "0.0"), \
        "plain text for redis-cli"


async def test_a_part_that_comes_to_the_whole_position_is_a_full_close(clock: IOAwareMockClock, redis_url: str) -> None:
    async with venue_for("attached", 1802) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("pc-all"))).wait()).outcome == "protected"
        reply = await (await engine.submit(CloseIntent(intent_id="pc-all-c", symbol=SYMBOL, qty=0.5))).wait()
        assert (reply.status, reply.outcome) == ("done", "closed"), reply
        assert venue.truth.position(SYMBOL) is None


@pytest.mark.parametrize(("price", "ends"), [(62_100.0, State.CLOSED_BY_TAKE_PROFIT),
                                             (58_700.0, State.CLOSED_EXTERNALLY)], ids=["take-profit", "stop"])
async def test_what_remains_after_a_partial_close_ends_by_its_take_profit_or_its_stop(
    clock: IOAwareMockClock, redis_url: str, price: float, ends: State
) -> None:
    """The proof counts the partial close's fills as exits of ours: the take-profit (or the
    stop) that closes what was left is what ended the record."""
    async with venue_for("attached", 1805) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        with_take_profit = msgspec.structs.replace(open_intent("pc-tp"), take_profit=62_000.0)
        assert (await (await engine.submit(with_take_profit)).wait()).outcome == "protected"
        reply = await (await engine.submit(CloseIntent(intent_id="pc-tp-c", symbol=SYMBOL, fraction=0.4))).wait()
        assert (reply.outcome, held(venue)) == ("protected", 0.006), reply
        assert venue.truth.position(SYMBOL).take_profit == 62_000.0, "the position's take-profit stays"

        venue.set_price(SYMBOL, price)
        with anyio.fail_after(30):
            while (record := await engine.store.load_record(SYMBOL)).state.is_live:
                await anyio.sleep(0.05)

        assert record.state is ends, record
        assert venue.truth.position(SYMBOL) is None


@pytest.mark.parametrize(("part", "why"), [({"qty": 0.0004}, "qty: 0.0004 is below the venue's minimum"),
                                           ({"fraction": 0.05}, "fraction: fraction 0.05 of 0.01 comes to 0")])
async def test_a_part_below_the_minimum_is_refused_and_nothing_is_sent(
    clock: IOAwareMockClock, redis_url: str, part: dict[str, float], why: str
) -> None:
    async with venue_for("attached", 1803) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(open_intent("pc-min"))).wait()).outcome == "protected"
        orders = venue.calls["create_order"]
        reply = await (await engine.submit(CloseIntent(intent_id="pc-min-c", symbol=SYMBOL, **part))).wait()
        assert reply.status == "rejected" and reply.reason.startswith(why), reply
        assert venue.calls["create_order"] == orders, "nothing sent"
        assert held(venue) == 0.01
        assert (await engine.store.load_record(SYMBOL)).state is State.PROTECTED


class CrashingStore:
    """A store whose record writes fail (a bug-like error: the actor crashes and restarts)
    once, when a record is saved in ``crash_when``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.crash_when: str | None = None
        self.crashes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save_record(self, record: PositionRecord, note: str = "", *,
                          replies: Sequence[IntentRecord] = ()) -> None:
        if self.crash_when is not None and record.state == self.crash_when:
            self.crash_when = None
            self.crashes += 1
            raise RuntimeError(f"injected failure saving a {record.state} record")
        await self._inner.save_record(record, note, replies=replies)


@pytest.mark.parametrize("restart", ["actor", "process"])
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_crash_mid_partial_close_resumes_it_as_partial(
    clock: IOAwareMockClock, redis_url: str, shape: str, restart: str
) -> None:
    """The crash comes after the part was closed on the venue (and the stop resized), on the
    write that would say ``protected``: the restarted actor must not close it again, nor all
    of it. ``actor``: the supervisor restarts the actor in the same process (the board still
    holds the close's fills); ``process``: a new engine on the same Redis and venue, whose
    board heard nothing, finishes it (the close's orders looked up by id)."""
    backoff = 1.0 if restart == "actor" else 10_000.0  # "process": the first engine never restarts it
    supervisor = SupervisorSettings(restart_backoff=Backoff(initial=backoff, maximum=backoff, jitter=0.0),
                                    max_restarts=10)
    async with venue_for(shape, 1804) as venue:
        async with running_engine(redis_url, venue, clock, supervisor=supervisor) as engine:
            await wait_streams_healthy(engine)
            assert (await (await engine.submit(open_intent("pc-crash"))).wait()).outcome == "protected"
            broken, bare_before = watch(engine, venue), venue.truth.max_unprotected_seconds(anyio.current_time())
            store = CrashingStore(engine.store)
            engine.ctx.store = store  # type: ignore[assignment]
            store.crash_when = "protected"

            first = await (await engine.submit(CloseIntent(intent_id="pc-crash-c", symbol=SYMBOL, qty=0.004))).wait()

            assert first.status == "failed" and store.crashes == 1, first
            assert (await engine.store.load_record(SYMBOL)).state is State.CLOSING
            if restart == "actor":
                await finish_after_crash(engine, venue, await answered(engine, "pc-crash-c"), shape, broken, bare_before)
                return
        async with running_engine(redis_url, venue, clock) as engine:
            later = watch(engine, venue)
            await finish_after_crash(engine, venue, await answered(engine, "pc-crash-c"), shape, later, bare_before)
        assert broken == [], "the first engine's writes"


async def answered(engine: Engine, intent_id: str):  # noqa: ANN201
    with anyio.fail_after(120):
        while (answer := await engine.store.load_intent(intent_id)).status == "accepted":
            await anyio.sleep(0.1)
    return answer


async def finish_after_crash(engine: Engine, venue: FakeVenue, answer: IntentRecord, shape: str,
                             broken: list[str], bare_before: float) -> None:
    assert (answer.status, answer.outcome) == ("done", "protected"), answer
    assert answer.reason.startswith("finished after a restart") and "0.006 open" in answer.reason, answer
    assert held(venue) == 0.006, "reduced once, by the part: never closed again, never closed whole"
    closes = [o for o in venue.truth.orders.values()
              if ids.same_intent(o.client_order_id, ids.close_id(ACCOUNT, "pc-crash-c"))]
    assert len(closes) == 1, closes
    record = await engine.store.load_record(SYMBOL)
    assert (record.state, record.closed_qty, open_size(record)) == (State.PROTECTED, 0.004, 0.006), record
    if shape == "sized":
        assert stop_cover(venue) == "sized 0.006"

    rest = await (await engine.submit(CloseIntent(intent_id="pc-crash-rest", symbol=SYMBOL))).wait()
    assert (rest.status, rest.outcome) == ("done", "closed"), rest
    assert venue.truth.position(SYMBOL) is None
    assert broken == [], broken
    assert venue.truth.max_unprotected_seconds(anyio.current_time()) == bare_before


def test_a_partial_close_intent_is_parsed_and_its_body_names_the_part() -> None:
    from posguard.actors.intents import body_of
    from posguard.supervisor.intake import BadIntent, parse_intent

    partial = parse_intent({"intent_id": "p1", "action": "close", "symbol": SYMBOL, "qty": "0.004"})
    assert isinstance(partial, CloseIntent) and (partial.qty, partial.fraction) == (0.004, None)
    assert body_of(partial) == f"close {SYMBOL} qty 0.004"
    half = parse_intent({"intent_id": "p2", "action": "close", "symbol": SYMBOL, "fraction": "0.5"})
    assert body_of(half) == f"close {SYMBOL} fraction 0.5"
    whole = parse_intent({"intent_id": "p3", "action": "close", "symbol": SYMBOL})
    assert body_of(whole) == f"close {SYMBOL}", "a full close keeps the body it had before partial closes"
    for bad, field in (({"fraction": "1.5"}, "fraction"), ({"fraction": "0"}, "fraction"), ({"qty": "-1"}, "qty")):
        with pytest.raises(BadIntent, match=f"^{field}: must be"):
            parse_intent({"intent_id": "p4", "action": "close", "symbol": SYMBOL, **bad})


def test_a_close_with_both_qty_and_fraction_or_below_the_minimum_is_refused_at_intake() -> None:
    from posguard.actors.intents import IntentRefused, check_close
    from posguard.streams.simulated import DEFAULT_MARKETS

    rules = {SYMBOL: DEFAULT_MARKETS[SYMBOL][1]}
    with pytest.raises(IntentRefused, match="^qty, fraction: give one of them"):
        check_close(CloseIntent(intent_id="b1", symbol=SYMBOL, qty=0.004, fraction=0.5), rules)
    with pytest.raises(IntentRefused, match="^qty: 0.0004 is below the venue's minimum 0.001"):
        check_close(CloseIntent(intent_id="b2", symbol=SYMBOL, qty=0.0004), rules)
    assert check_close(CloseIntent(intent_id="b3", symbol=SYMBOL, qty=0.0045), rules).qty == 0.0045


def test_posguard_close_sends_the_part_as_a_strategy_would() -> None:
    from posguard.client import fields_of
    from posguard.supervisor.cli import build_parser, intent_of
    from posguard.supervisor.intake import parse_intent

    args = build_parser().parse_args(["close", SYMBOL, "--qty", "0.004", "--intent-id", "cli-pc"])
    assert parse_intent(fields_of(intent_of(args))).qty == 0.004
    args = build_parser().parse_args(["close", SYMBOL, "--fraction", "0.25"])
    assert parse_intent(fields_of(intent_of(args))).fraction == 0.25
    args = build_parser().parse_args(["close", SYMBOL])
    assert set(fields_of(intent_of(args))) == {"action", "intent_id", "symbol"}, "a full close as before"
    with pytest.raises(SystemExit):  # both: argparse refuses, nothing is sent
        build_parser().parse_args(["close", SYMBOL, "--qty", "0.004", "--fraction", "0.5"])
