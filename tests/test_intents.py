"""Intents over Redis, as any strategy would send them (redis-cli here), and the risk limits."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest

from posguard.actors.intents import (
    CarryOn,
    CloseIntent,
    ConflictingBody,
    Duplicate,
    IntentRecord,
    OpenIntent,
    Run,
    body_of,
    intent_verdict,
)
from posguard.actors.records import State
from posguard.actors.store.keys import Keys
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.engine import Engine
from posguard.supervisor.intake import IntentIntake
from posguard.supervisor.risk import RiskLimits
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, running_engine, wait_streams_healthy

KEYS = Keys(ACCOUNT)
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})


def redis_cli(redis_url: str, *args: str) -> str:
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    host, port = host_port.split(":")
    result = subprocess.run(["redis-cli", "-h", host, "-p", port, *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def xadd(redis_url: str, **fields: str) -> None:
    args = [item for pair in fields.items() for item in pair]
    redis_cli(redis_url, "XADD", KEYS.intents, "*", *args)


@asynccontextmanager
async def with_intake(redis_url: str, clock: IOAwareMockClock, **engine_kwargs: object) -> AsyncIterator[
    tuple[FakeVenue, Engine, IntentIntake]
]:
    async with FakeVenue(seed=60, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, **engine_kwargs
    ) as engine, anyio.create_task_group() as tg:
        intake = IntentIntake(engine.store.client, engine, account=ACCOUNT, block_ms=0)
        await tg.start(intake.run)
        await wait_streams_healthy(engine)
        yield venue, engine, intake
        tg.cancel_scope.cancel()


async def final_reply(engine: Engine, intent_id: str) -> dict[str, str]:
    with anyio.fail_after(60):
        while True:
            intent = await engine.store.load_intent(intent_id)
            if intent is not None and intent.status != "accepted":
                return {"status": intent.status, "reason": intent.reason, "outcome": intent.outcome}
            await anyio.sleep(0.05)


async def test_an_intent_sent_with_redis_cli_reaches_its_actor_and_gets_its_replies(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        xadd(redis_url, intent_id="cli-1", action="open", symbol="BTC/USDT:USDT", side="buy", qty="0.01",
             stop_price="58800")
        assert (await final_reply(engine, "cli-1"))["outcome"] == "protected"
        replies = [json.loads(r) for r in redis_cli(redis_url, "LRANGE", KEYS.reply("cli-1"), "0", "-1").splitlines()]
        assert [r["status"] for r in replies] == ["accepted", "done"]
        assert replies[-1]["outcome"] == "protected"
        assert venue.truth.is_protected("BTC/USDT:USDT") and venue.truth.position("BTC/USDT:USDT") is not None
        with anyio.fail_after(10):
            while intake.acked < 1:
                await anyio.sleep(0.05)
        assert redis_cli(redis_url, "XPENDING", KEYS.intents, "posguard").splitlines()[0] == "0"
        # A close by the same route, with the stop given as a distance in between.
        xadd(redis_url, intent_id="cli-2", action="close", symbol="BTC/USDT:USDT")
        assert (await final_reply(engine, "cli-2"))["outcome"] == "closed"
        xadd(redis_url, intent_id="cli-3", action="open", symbol="ETH/USDT:USDT", side="sell", qty="0.1",
             stop_distance="0.02")
        assert (await final_reply(engine, "cli-3"))["outcome"] == "protected"
        assert (await engine.store.load_record("ETH/USDT:USDT")).stop_price == pytest.approx(3060.0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01"}, "stop_price"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "lots", "stop_price": "1"}, "qty"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "long", "qty": "0.01", "stop_price": "1"}, "side"),
        ({"action": "buy", "symbol": "BTC/USDT:USDT"}, "action"),
        ({"action": "close", "symbol": "BTC/USDT:USDT", "colour": "red"}, "colour"),
        # A take-profit on the wrong side of the stop, of the price (refused by the actor's
        # priced checks), not finite, given twice over, out of range, on a close.
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800",
          "take_profit": "50000"}, "take_profit: 50000 must be above the stop 58800"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800",
          "take_profit": "59000"}, "take_profit: 59000.0 must be above the last price 60000.0"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "sell", "qty": "0.01", "stop_price": "61200",
          "take_profit": "60500"}, "take_profit: 60500.0 must be below the last price 60000.0"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800",
          "take_profit": "inf"}, "take_profit: inf is not a plausible price"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800",
          "take_profit": "nan"}, "take_profit: must be a price above 0"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800",
          "take_profit": "70000", "take_profit_distance": "0.05"}, "take_profit, take_profit_distance: give one"),
        ({"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800",
          "take_profit_distance": "1"}, "take_profit_distance: must be a fraction between 0 and 1"),
        ({"action": "close", "symbol": "BTC/USDT:USDT", "take_profit": "70000"},
         "take_profit: not allowed on a close intent"),
    ],
)
async def test_a_malformed_intent_is_rejected_naming_the_field_and_touches_nothing(
    clock: IOAwareMockClock, redis_url: str, fields: dict[str, str], named: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        xadd(redis_url, intent_id="bad-1", **fields)
        reply = await final_reply(engine, "bad-1")
        assert reply["status"] == "rejected" and reply["reason"].startswith(named if ":" in named else f"{named}:"), reply
        assert sum(venue.calls[m] for m in ("create_order", "place_stop", "cancel_order")) == 0
        assert await engine.store.list_records() == []
        assert redis_cli(redis_url, "XPENDING", KEYS.intents, "posguard").splitlines()[0] == "0"


async def test_an_intent_replayed_under_the_same_id_is_not_executed_twice(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        for _ in range(3):
            xadd(redis_url, intent_id="once", action="open", symbol="SOL/USDT:USDT", side="buy", qty="1",
                 stop_price="145")
        with anyio.fail_after(30):
            while intake.acked < 3:
                await anyio.sleep(0.05)
        assert (await final_reply(engine, "once"))["outcome"] == "protected"
        assert venue.calls["create_order"] == 1
        assert venue.truth.entries_filled["SOL/USDT:USDT"] == 1


async def test_an_intent_read_but_not_owned_before_a_crash_is_delivered_again(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # A previous process read it (pending in the group) and died before its actor owned it.
    redis_cli(redis_url, "XGROUP", "CREATE", KEYS.intents, "posguard", "0", "MKSTREAM")
    xadd(redis_url, intent_id="pending-1", action="open", symbol="BTC/USDT:USDT", side="buy", qty="0.01",
         stop_price="58800")
    redis_cli(redis_url, "XREADGROUP", "GROUP", "posguard", "posguard-1", "COUNT", "10", "STREAMS", KEYS.intents, ">")
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        assert (await final_reply(engine, "pending-1"))["outcome"] == "protected"
        assert venue.truth.entries_filled["BTC/USDT:USDT"] == 1


RISK_CASES = [
    (RiskLimits(allowed_symbols=["ETH/USDT:USDT"]), {}, "risk.allowed_symbols"),
    (RiskLimits(max_qty={"BTC/USDT:USDT": 0.005}), {}, "risk.max_qty"),
    (RiskLimits(max_notional=500.0), {}, "risk.max_notional"),
    (RiskLimits(max_open_positions=1), {"preopen": "1"}, "risk.max_open_positions"),
    (RiskLimits(min_stop_distance=0.05), {}, "risk.min_stop_distance"),
    (RiskLimits(max_stop_distance=0.01), {}, "risk.max_stop_distance"),
    (RiskLimits(max_notional=1e9), {"stop_price": "61000"}, "stop_price: 61000.0 must be below the last price"),
]


@pytest.mark.parametrize(("limits", "extra", "named"), RISK_CASES, ids=[c[2].split(":")[0] for c in RISK_CASES])
async def test_each_risk_limit_refuses_the_intent_naming_the_limit_and_sends_nothing(
    clock: IOAwareMockClock, redis_url: str, limits: RiskLimits, extra: dict[str, str], named: str
) -> None:
    async with with_intake(redis_url, clock, risk=limits) as (venue, engine, intake):
        if extra.pop("preopen", None):
            xadd(redis_url, intent_id="first", action="open", symbol="ETH/USDT:USDT", side="buy", qty="0.01",
                 stop_price="2940")
            assert (await final_reply(engine, "first"))["outcome"] == "protected"
        sent_before = venue.calls["create_order"]
        fields = {"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800"}
        xadd(redis_url, intent_id="limited", **(fields | extra))
        reply = await final_reply(engine, "limited")
        assert reply["status"] == "rejected" and named in reply["reason"], reply
        assert venue.calls["create_order"] == sent_before, "nothing reached the venue"
        assert venue.truth.position("BTC/USDT:USDT") is None
        record = await engine.store.load_record("BTC/USDT:USDT")
        assert record is None or record.state is not State.SUBMITTING


async def test_an_entry_another_consumer_read_and_never_owned_is_reclaimed(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # Another posguard process (consumer "dead-host") read it and died; this one takes it over.
    redis_cli(redis_url, "XGROUP", "CREATE", KEYS.intents, "posguard", "0", "MKSTREAM")
    xadd(redis_url, intent_id="orphaned-entry", action="open", symbol="BTC/USDT:USDT", side="buy", qty="0.01",
         stop_price="58800")
    redis_cli(redis_url, "XREADGROUP", "GROUP", "posguard", "dead-host", "COUNT", "10", "STREAMS", KEYS.intents, ">")
    async with FakeVenue(seed=61, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock
    ) as engine, anyio.create_task_group() as tg:
        intake = IntentIntake(engine.store.client, engine, account=ACCOUNT, block_ms=0, reclaim_after=0.5)
        await tg.start(intake.run)
        await wait_streams_healthy(engine)
        with anyio.fail_after(3600):  # virtual; the reclaim waits on Redis' real idle time
            while (await engine.store.load_intent("orphaned-entry")) is None:
                await anyio.sleep(0.2)
        assert (await final_reply(engine, "orphaned-entry"))["outcome"] == "protected"
        assert venue.truth.entries_filled["BTC/USDT:USDT"] == 1
        tg.cancel_scope.cancel()


async def test_one_intent_id_on_two_symbols_runs_once_and_makes_no_phantom(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Issue 13, defect 4: the same id for ETH and, while that is in flight, for SOL ran twice;
    both derived the same client order id, so SOL's actor found ETH's order and recorded a
    `protected` SOL position the venue does not have. The second body is refused instead."""
    redis_cli(redis_url, "XGROUP", "CREATE", KEYS.intents, "posguard", "0", "MKSTREAM")
    # Both queued before the intake reads: SOL is handed over while ETH waits in its mailbox.
    xadd(redis_url, intent_id="twin", action="open", symbol="ETH/USDT:USDT", side="buy", qty="0.1",
         stop_price="2940")
    xadd(redis_url, intent_id="twin", action="open", symbol="SOL/USDT:USDT", side="buy", qty="1",
         stop_price="145")
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        with anyio.fail_after(60):
            while intake.acked < 2:
                await anyio.sleep(0.05)
        first = await final_reply(engine, "twin")
        assert first["outcome"] == "protected", first
        replies = [json.loads(r) for r in redis_cli(redis_url, "LRANGE", KEYS.reply("twin"), "0", "-1").splitlines()]
        refusals = [r for r in replies if r["symbol"] == "SOL/USDT:USDT"]
        assert [r["status"] for r in refusals] == ["rejected"], replies
        assert "different" in refusals[0]["reason"] and "ETH/USDT:USDT" in refusals[0]["reason"], refusals
        record = await engine.store.load_intent("twin")
        assert record is not None and record.symbol == "ETH/USDT:USDT", "the first intent's record is kept"
        assert await engine.store.load_record("SOL/USDT:USDT") is None, "no phantom SOL position"
        assert venue.truth.position("SOL/USDT:USDT") is None and venue.truth.entries_filled["ETH/USDT:USDT"] == 1
        assert venue.calls["create_order"] == 1


def test_one_rule_decides_whether_an_intent_id_may_run() -> None:
    eth = OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_price=2940.0)
    body = body_of(eth)
    sol = body_of(OpenIntent(intent_id="x", symbol="SOL/USDT:USDT", side="buy", qty=0.1, stop_price=2940.0))

    def record(status: str, body: str = body) -> IntentRecord:
        return IntentRecord(intent_id="x", action="open", symbol="ETH/USDT:USDT", status=status, body=body)  # type: ignore[arg-type]

    assert intent_verdict(body, None) == Run()
    assert intent_verdict(body, None, in_flight=body) == CarryOn(), "handed over, nothing in Redis yet"
    assert intent_verdict(body, record("accepted")) == CarryOn(), "begun: its order may be on the venue"
    for status in ("done", "rejected", "stale"):
        first = record(status)  # one object: two would differ in created_at across a millisecond
        assert intent_verdict(body, first) == Duplicate(first=first)
    assert intent_verdict(sol, None, in_flight=body) == ConflictingBody(first_body=body)
    assert intent_verdict(sol, record("accepted")) == ConflictingBody(first_body=body)
    assert intent_verdict(sol, record("done")) == ConflictingBody(first_body=body), "says why, not just duplicate"
    assert intent_verdict(sol, record("rejected", body="")) == Duplicate(first=record("rejected", body="")), (
        "an entry that never decoded has no body to compare: a duplicate, as before")
    # What makes two bodies differ: action, symbol, side, qty, stop; never the expiry.
    for other in (CloseIntent(intent_id="x", symbol="ETH/USDT:USDT"),
                  OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="sell", qty=0.1, stop_price=2940.0),
                  OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.2, stop_price=2940.0),
                  OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_price=2900.0),
                  OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_distance=0.02),
                  OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_price=2940.0,
                             take_profit=3200.0),
                  OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_price=2940.0,
                             take_profit_distance=0.05)):
        assert body_of(other) != body, other
    with_tp = OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_price=2940.0,
                         take_profit=3200.0)
    assert body_of(with_tp) != body_of(msgspec.structs.replace(with_tp, take_profit=3300.0)), (
        "another take-profit under one id is another intent")
    assert body_of(OpenIntent(intent_id="x", symbol="ETH/USDT:USDT", side="buy", qty=0.1, stop_price=2940.0,
                              expires_ms=1)) == body


async def test_a_redelivered_entry_off_the_step_carries_on_and_the_claims_are_released(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The body compared is the one that arrived, not the one admission rounded (0.0123 ->
    0.012) or priced (stop_distance): a redelivery is never taken for another intent."""
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        fields = {"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.0123",
                  "stop_distance": "0.02"}
        xadd(redis_url, intent_id="off-step", **fields)
        assert (await final_reply(engine, "off-step"))["outcome"] == "protected"
        assert (await engine.store.load_intent("off-step")).body == (
            "open BTC/USDT:USDT buy qty 0.0123 stop_distance 0.02"), "the body as sent, for redis-cli readers"
        xadd(redis_url, intent_id="off-step", **fields)
        with anyio.fail_after(30):
            while intake.acked < 2:
                await anyio.sleep(0.05)
        replies = [json.loads(r) for r in redis_cli(redis_url, "LRANGE", KEYS.reply("off-step"), "0", "-1").splitlines()]
        assert [r["status"] for r in replies] == ["accepted", "done", "duplicate"], replies
        assert venue.calls["create_order"] == 1
        assert len(engine.admission.claims) == 0, "every claim is released once its intent is final"
