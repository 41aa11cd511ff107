"""Amend intents (issue 17): a protected position's stop moved (a price, a distance,
breakeven), its take-profit changed or removed, through the simulated venue on trio with the
mock clock, real Redis, asserted against the venue's ground truth: the position is covered by a
live stop at every step of the change.

Two shapes, as the venues have them: the stop and take-profit held by the position and changed
in place (Bybit ``trading-stop``, Full mode: `FakeVenue` by default), and separate orders,
the new stop placed first and the old one cancelled after (Binance's closePosition algo
orders: ``supports_attached_stop=False`` with whole-position stops).
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import msgspec
import pytest

from posguard.actors import ids
from posguard.actors.intents import AmendIntent, IntentRecord
from posguard.actors.records import PositionRecord, Protection, State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import VenueUnavailable
from posguard.supervisor.engine import Engine
from posguard.supervisor.intake import BadIntent, parse_intent
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "BTC/USDT:USDT"  # starts at 60,000; open_intent's stop is 58,800
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
BINANCE_LIKE = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, whole_position_stops=True,
                          reject_duplicate_client_ids=False)
SHAPES = [pytest.param(True, FAST_PUSH, id="in-place"), pytest.param(False, BINANCE_LIKE, id="replace-order")]


async def listed(venue: FakeVenue, client_order_id: str) -> None:
    """Until the venue's open-order list (which lags) shows the order: what the audit reads."""
    with anyio.fail_after(30):
        while client_order_id not in {o.client_order_id for o in await venue.fetch_open_orders(SYMBOL)}:
            await anyio.sleep(0.05)


def amend(intent_id: str, **fields: Any) -> AmendIntent:
    return AmendIntent(intent_id=intent_id, symbol=SYMBOL, **fields)


def watch_coverage(venue: FakeVenue) -> list[str]:
    """Every write to the venue is checked against its ground truth the moment it returns:
    the position is covered by a live stop for its whole size. Returns the calls seen."""
    calls: list[str] = []
    for name in ("place_stop", "cancel_order", "amend_attached"):
        inner = getattr(venue, name)

        def wrapped(*args: Any, _inner: Any = inner, _name: str = name, **kwargs: Any) -> Any:
            async def call() -> Any:
                try:
                    return await _inner(*args, **kwargs)
                finally:
                    calls.append(_name)
                    assert venue.truth.is_protected(SYMBOL), f"bare after {_name}: {venue.truth.position(SYMBOL)}"
            return call()

        setattr(venue, name, wrapped)
    return calls


def stop_of(venue: FakeVenue, record: PositionRecord) -> float | None:
    """The stop the venue really holds for the position: its own, or the one open stop order."""
    position = venue.truth.position(SYMBOL)
    assert position is not None
    if position.stop_price is not None:
        return position.stop_price
    [stop] = venue.truth.open_stops(SYMBOL)
    assert stop.client_order_id == record.stop_client_order_id
    return stop.stop_price


async def protected(engine: Engine, venue: FakeVenue, intent_id: str, **extra: Any) -> PositionRecord:
    intent = msgspec.structs.replace(open_intent(intent_id), **extra)
    reply = await (await engine.submit(intent)).wait()
    assert reply.outcome == "protected", reply
    with anyio.fail_after(10):  # Binance-like: the take-profit goes out after the answer
        while extra.get("take_profit") and not venue.supports_attached_stop and not venue.truth.open_take_profits(SYMBOL):
            await anyio.sleep(0.05)
    return await engine.store.load_record(SYMBOL)


@pytest.mark.parametrize(("attached", "knobs"), SHAPES)
async def test_moving_the_stop_keeps_the_position_covered_throughout(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs
) -> None:
    async with FakeVenue(seed=1711, knobs=knobs, supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        before = await protected(engine, venue, "am-open")
        windows = len(venue.truth.unprotected_intervals(anyio.current_time()))
        calls = watch_coverage(venue)

        reply = await (await engine.submit(amend("am-move", stop_price=59_400.0))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        record = await engine.store.load_record(SYMBOL)
        assert (record.state, record.stop_price, record.amend_intent_id) == (State.PROTECTED, 59_400.0, "")
        assert stop_of(venue, record) == 59_400.0, "the venue holds the moved stop"
        assert venue.truth.unprotected_intervals(anyio.current_time())[windows:] == [], "never bare"
        if attached:
            assert calls == ["amend_attached"], "changed in place, nothing placed or cancelled"
            assert record.protection is Protection.ATTACHED_CONFIRMED
        else:
            # Binance holds one closePosition stop per side: the replacement goes out sized
            # (`place_stop(replacing=True)`), then the old one is cancelled.
            assert calls == ["place_stop", "place_stop", "cancel_order"], "the new stop first, the old one after"
            assert record.stop_client_order_id != before.stop_client_order_id
            assert venue.truth.orders[before.stop_client_order_id].status == "cancelled"
            assert record.replaced_stop_client_order_id == ""


@pytest.mark.parametrize(("attached", "knobs"), SHAPES)
async def test_a_stop_on_the_wrong_side_is_refused_and_nothing_changes(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs
) -> None:
    async with FakeVenue(seed=1712, knobs=knobs, supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        before = await protected(engine, venue, "am-open2")
        calls = watch_coverage(venue)

        reply = await (await engine.submit(amend("am-wrong", stop_price=60_500.0))).wait()

        assert reply.status == "rejected", reply
        assert "stop_price: 60500.0 must be below the last price" in reply.reason, reply.reason
        assert calls == [], "nothing sent"
        record = await engine.store.load_record(SYMBOL)
        assert (record.stop_price, record.stop_client_order_id, record.amend_intent_id) == (
            before.stop_price, before.stop_client_order_id, "")
        assert stop_of(venue, record) == 58_800.0


@pytest.mark.parametrize(("attached", "knobs"), SHAPES)
async def test_the_venue_refusing_the_new_stop_keeps_the_old_one(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs
) -> None:
    """The market moves through the new stop between the check and the send: the venue
    refuses it, the old stop is never touched, the amend is answered rejected."""
    async with FakeVenue(seed=1713, knobs=knobs, supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        before = await protected(engine, venue, "am-open3")
        calls = watch_coverage(venue)
        check = engine.ctx.amend_check
        assert check is not None

        async def market_moves_after_the_check(intent: AmendIntent, record: PositionRecord) -> Any:
            checked = await check(intent, record)
            venue.set_price(SYMBOL, 59_300.0)
            return checked

        engine.ctx.amend_check = market_moves_after_the_check
        reply = await (await engine.submit(amend("am-late", stop_price=59_400.0))).wait()

        assert reply.status == "rejected", reply
        assert "refused by the venue" in reply.reason and "the stop stays at 58800" in reply.reason, reply.reason
        assert calls == (["amend_attached"] if attached else ["place_stop"]), "nothing cancelled"
        record = await engine.store.load_record(SYMBOL)
        assert (record.state, record.stop_price, record.stop_client_order_id, record.amend_intent_id) == (
            State.PROTECTED, 58_800.0, before.stop_client_order_id, "")
        assert record.protection is before.protection
        assert stop_of(venue, record) == 58_800.0


@pytest.mark.parametrize(("attached", "knobs"), SHAPES)
async def test_breakeven_and_distance(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs
) -> None:
    async with FakeVenue(seed=1714, knobs=knobs, supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        before = await protected(engine, venue, "am-open4")
        watch_coverage(venue)
        venue.set_price(SYMBOL, 61_000.0)
        # The price checks read the pushed mark price while it is younger than
        # risk.price_max_age (the position's last push said 60,000): virtual time past it.
        await anyio.sleep(engine.risk.price_max_age + 0.1)

        reply = await (await engine.submit(amend("am-be", breakeven=True))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        record = await engine.store.load_record(SYMBOL)
        assert record.stop_price == engine.rules[SYMBOL].round_price(before.entry_price) > 58_800.0
        assert stop_of(venue, record) == record.stop_price

        again = await (await engine.submit(amend("am-be2", breakeven=True))).wait()
        assert again.status == "rejected" and "would not tighten" in again.reason, again

        reply = await (await engine.submit(amend("am-dist", stop_distance=0.01))).wait()
        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        record = await engine.store.load_record(SYMBOL)
        assert record.stop_price == 60_390.0 and stop_of(venue, record) == 60_390.0


@pytest.mark.parametrize(("attached", "knobs"), SHAPES)
async def test_changing_and_removing_the_take_profit(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs
) -> None:
    async with FakeVenue(seed=1715, knobs=knobs, supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        before = await protected(engine, venue, "am-open5", take_profit=62_000.0)
        watch_coverage(venue)

        reply = await (await engine.submit(amend("am-tp", take_profit=63_000.0))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        record = await engine.store.load_record(SYMBOL)
        assert record.take_profit == 63_000.0 and record.stop_price == 58_800.0
        if attached:
            assert venue.truth.position(SYMBOL).take_profit == 63_000.0
        else:
            [take_profit] = venue.truth.open_take_profits(SYMBOL)
            assert take_profit.stop_price == 63_000.0
            # The entry's intent, the next attempt: the audit knows it as the record's own.
            assert take_profit.client_order_id == record.take_profit_client_order_id == ids.take_profit_id(
                ACCOUNT, "am-open5", 2)
            await listed(venue, take_profit.client_order_id)
            report = await engine.auditor.run()
            assert report.findings == [], "not a stray take-profit"
            assert venue.truth.orders[take_profit.client_order_id].status == "open"
            assert venue.truth.orders[before.take_profit_client_order_id].status == "cancelled"

        reply = await (await engine.submit(amend("am-notp", remove_take_profit=True))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        record = await engine.store.load_record(SYMBOL)
        assert record.take_profit == 0.0
        assert venue.truth.open_take_profits(SYMBOL) == []
        assert venue.truth.position(SYMBOL).take_profit is None
        assert stop_of(venue, record) == 58_800.0, "the stop untouched"


async def test_only_a_protected_position_can_be_amended(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1716, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(amend("am-none", stop_price=59_000.0))).wait()
        assert reply.status == "rejected", reply
        assert "only a protected position can be amended (record state: none)" in reply.reason, reply.reason


def test_parse_amend_fields() -> None:
    intent = parse_intent({"intent_id": "a1", "action": "amend", "symbol": SYMBOL, "breakeven": "true"})
    assert intent == AmendIntent(intent_id="a1", symbol=SYMBOL, breakeven=True)
    with pytest.raises(BadIntent, match="qty: not allowed on an amend intent"):
        parse_intent({"intent_id": "a1", "action": "amend", "symbol": SYMBOL, "qty": "1"})
    with pytest.raises(BadIntent, match="breakeven: not allowed on an open intent"):
        parse_intent({"intent_id": "a1", "action": "open", "symbol": SYMBOL, "side": "buy", "qty": "1",
                      "stop_price": "1", "breakeven": "true"})


@pytest.mark.parametrize(("attached", "knobs", "placed"), [
    pytest.param(True, FAST_PUSH, False, id="in-place"),  # in place: there is no replacement order
    pytest.param(False, BINANCE_LIKE, False, id="replace-order-before-the-send"),
    pytest.param(False, BINANCE_LIKE, True, id="replace-order-new-stop-placed"),
])
async def test_an_amend_cut_short_by_a_crash_is_finished_on_restart(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs, placed: bool
) -> None:
    """The record as a crash leaves it after the amend's write ahead (I5): the new stop in
    the record, the old one named as replaced; ``new-stop-placed``: the crash came after the
    replacement's own write ahead (`place_stop`), its fate unknown to the record. The restart
    finishes the amend: the moved stop live, the old one cancelled, the intent answered."""
    async with FakeVenue(seed=1717, knobs=knobs, supports_attached_stop=attached) as venue:
        async with running_engine(redis_url, venue, clock) as engine:
            await wait_streams_healthy(engine)
            before = await protected(engine, venue, "am-open6")
            crashed = msgspec.structs.replace(before, stop_price=59_400.0, amend_intent_id="am-crash",
                                              replaced_stop_client_order_id="" if attached else before.stop_client_order_id)
            if placed:
                # `place_stop` wrote the attempt's id and no stop known live, then the crash.
                crashed.protection, crashed.stop_attempts = Protection.NONE, before.stop_attempts + 1
                crashed.stop_client_order_id = ids.stop_id(ACCOUNT, "am-open6", crashed.stop_attempts)
            await engine.store.save_record(crashed, "amend am-crash: written ahead (then the process died)")
            await engine.store.save_intent(IntentRecord(intent_id="am-crash", action="amend", symbol=SYMBOL,
                                                        status="accepted", body=f"amend {SYMBOL} stop_price 59400.0"))
        windows = len(venue.truth.unprotected_intervals(anyio.current_time()))
        async with running_engine(redis_url, venue, clock) as engine:
            await wait_streams_healthy(engine)
            with anyio.move_on_after(30):  # the actor resumes its record as it starts
                while (await engine.store.load_intent("am-crash")).status == "accepted":
                    await anyio.sleep(0.05)
            record = await engine.store.load_record(SYMBOL)
            answer = await engine.store.load_intent("am-crash")

        assert (record.state, record.stop_price, record.amend_intent_id) == (State.PROTECTED, 59_400.0, "")
        assert stop_of(venue, record) == 59_400.0, "the moved stop is live"
        assert (answer.status, answer.outcome) == ("done", "protected"), answer
        assert venue.truth.unprotected_intervals(anyio.current_time())[windows:] == [], "never bare"
        if not attached:
            assert venue.truth.orders[before.stop_client_order_id].status == "cancelled", "the old one, after"
            assert record.replaced_stop_client_order_id == ""


@pytest.mark.parametrize(("attached", "knobs"), SHAPES)
async def test_an_amend_the_venue_refuses_after_a_restart_keeps_the_old_stop(
    clock: IOAwareMockClock, redis_url: str, attached: bool, knobs: FaultKnobs
) -> None:
    """Written ahead, then the crash, then the market moved through the new stop: the restart
    finds the venue refusing it, keeps the old stop, and answers the amend rejected."""
    async with FakeVenue(seed=1718, knobs=knobs, supports_attached_stop=attached) as venue:
        async with running_engine(redis_url, venue, clock) as engine:
            await wait_streams_healthy(engine)
            before = await protected(engine, venue, "am-open7")
            crashed = msgspec.structs.replace(before, stop_price=59_400.0, amend_intent_id="am-crash2",
                                              replaced_stop_client_order_id="" if attached else before.stop_client_order_id)
            await engine.store.save_record(crashed, "amend am-crash2: written ahead (then the process died)")
            await engine.store.save_intent(IntentRecord(intent_id="am-crash2", action="amend", symbol=SYMBOL,
                                                        status="accepted", body=f"amend {SYMBOL} stop_price 59400.0"))
        venue.set_price(SYMBOL, 59_300.0)
        async with running_engine(redis_url, venue, clock) as engine:
            await wait_streams_healthy(engine)
            with anyio.move_on_after(30):
                while (await engine.store.load_intent("am-crash2")).status == "accepted":
                    await anyio.sleep(0.05)
            record = await engine.store.load_record(SYMBOL)
            answer = await engine.store.load_intent("am-crash2")

        assert answer.status == "rejected" and "refused by the venue" in answer.reason, answer
        assert (record.state, record.stop_price, record.stop_client_order_id, record.amend_intent_id) == (
            State.PROTECTED, 58_800.0, before.stop_client_order_id, ""), record
        assert stop_of(venue, record) == 58_800.0
        assert venue.truth.position(SYMBOL) is not None, "not closed: the old stop still guards it"


async def test_an_in_place_amend_whose_answer_is_lost_is_sent_again(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1719, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        await protected(engine, venue, "am-open8")
        calls = watch_coverage(venue)
        venue.fail_next("amend_attached", VenueUnavailable("trading-stop: timeout"), VenueUnavailable("again"))

        reply = await (await engine.submit(amend("am-lost", stop_price=59_400.0))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        assert calls == ["amend_attached"] * 3
        assert venue.truth.position(SYMBOL).stop_price == 59_400.0


@pytest.mark.parametrize(("fields", "refusal"), [
    ({}, "amend: nothing to change"),
    ({"stop_price": 59_000.0, "breakeven": True}, "stop_price, breakeven: give one of them"),
    ({"stop_distance": 0.01, "stop_price": 59_000.0}, "stop_price, stop_distance: give one of them"),
    ({"take_profit": 63_000.0, "remove_take_profit": True}, "take_profit, remove_take_profit: give one of them"),
    ({"stop_price": 1e300}, "stop_price: 1e+300 is not a plausible price"),
])
def test_an_amend_is_checked_at_intake(fields: dict[str, Any], refusal: str) -> None:
    from posguard.actors.intents import IntentRefused, check_amend
    from posguard.streams.simulated import DEFAULT_MARKETS

    rules = {symbol: market for symbol, (_price, market) in DEFAULT_MARKETS.items()}
    with pytest.raises(IntentRefused, match=f"^{re.escape(refusal)}"):
        check_amend(amend("am-bad", **fields), rules)
    assert check_amend(amend("am-ok", stop_price=59_000.04), rules).stop_price == rules[SYMBOL].round_price(59_000.04)


async def test_safe_mode_refuses_entries_but_not_amends(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=1720, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        await protected(engine, venue, "am-open9")
        engine.gate.enter_safe_mode("a test")

        reply = await (await engine.submit(amend("am-safe", stop_price=59_400.0))).wait()

        assert (reply.status, reply.outcome) == ("done", "protected"), reply
        assert venue.truth.position(SYMBOL).stop_price == 59_400.0


async def test_an_in_place_amend_the_venue_never_answers_is_refused_with_what_it_holds(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1721, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        await protected(engine, venue, "am-open10")
        alerts: list[str] = []
        engine.ctx.alerts.append(lambda _symbol, message: alerts.append(message))
        venue.fail_next("amend_attached", *[VenueUnavailable("trading-stop: timeout")] * 50)

        reply = await (await engine.submit(amend("am-silent", stop_price=59_400.0))).wait()

        assert reply.status == "rejected" and "not confirmed (no answer from the venue" in reply.reason, reply
        record = await engine.store.load_record(SYMBOL)
        assert (record.state, record.stop_price, record.amend_intent_id) == (State.PROTECTED, 58_800.0, "")
        assert venue.truth.position(SYMBOL).stop_price == 58_800.0
        assert any("amend am-silent: no answer from the venue" in a for a in alerts), alerts


async def test_a_take_profit_refused_after_the_stop_moved_keeps_the_moved_stop(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Bybit with the attached stop missing (a separate stop order guards the position, the
    take-profit rides on it): the stop is replaced, then the venue refuses the take-profit's
    change in place. The record says what the venue holds: the new stop, the old take-profit."""
    knobs = msgspec.structs.replace(FAST_PUSH, attached_stop_missing_rate=1.0)
    async with FakeVenue(seed=1722, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        before = await protected(engine, venue, "am-open11", take_profit=62_000.0)
        assert before.protection is Protection.STOP_ORDER, before
        check = engine.ctx.amend_check
        assert check is not None

        async def market_moves_after_the_check(intent: AmendIntent, record: PositionRecord) -> Any:
            checked = await check(intent, record)
            venue.set_price(SYMBOL, 61_100.0)  # past the new take-profit, short of the old one
            return checked

        engine.ctx.amend_check = market_moves_after_the_check
        reply = await (await engine.submit(amend("am-half", stop_price=59_400.0, take_profit=61_000.0))).wait()

        assert reply.status == "rejected" and "refused in part" in reply.reason, reply
        record = await engine.store.load_record(SYMBOL)
        assert (record.stop_price, record.take_profit, record.amend_intent_id) == (59_400.0, 62_000.0, ""), record
        assert stop_of(venue, record) == 59_400.0 and venue.truth.position(SYMBOL).take_profit == 62_000.0
        assert venue.truth.orders[before.stop_client_order_id].status == "cancelled"
