"""Redis losing data or refusing writes (issue 12, item 2), and a busy event loop that is not
Redis (item 11): the engine stays up, answers, and the venue's ground truth stays right.

Each test starts the redis-server it abuses (never the session's), so a `CONFIG SET` or a
`REPLICAOF` cannot leak into other tests.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import coredis.exceptions as redis_errors
import pytest

from posguard.actors.records import State
from posguard.actors.store.client import is_redis_failure
from posguard.actors.store.keys import Keys
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.engine import Engine
from posguard.supervisor.intake import IntentIntake
from posguard.supervisor.redis_server import PrivateRedisServer, restart_redis_server, start_redis_server
from posguard.supervisor.supervision import AuditSettings, SupervisorSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

KEYS = Keys(ACCOUNT)
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})
QUICK_CHECKS = SupervisorSettings(redis_check_interval=0.2)


def redis_cli(server: PrivateRedisServer, *args: str) -> str:
    result = subprocess.run(["redis-cli", "-p", str(server.port), *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def xadd_open(server: PrivateRedisServer, intent_id: str, symbol: str, qty: str, stop: str) -> None:
    redis_cli(server, "XADD", KEYS.intents, "*", "intent_id", intent_id, "action", "open", "symbol", symbol,
              "side", "buy", "qty", qty, "stop_price", stop)


@pytest.fixture
def server() -> Iterator[PrivateRedisServer]:
    started = start_redis_server()
    yield started
    started.stop()


@asynccontextmanager
async def engine_with_intake(
    url: str, venue: FakeVenue, clock: IOAwareMockClock | None, *, block_ms: int = 0
) -> AsyncIterator[tuple[Engine, IntentIntake]]:
    async with running_engine(url, venue, clock, supervisor=QUICK_CHECKS) as engine, \
            anyio.create_task_group() as tg:
        intake = IntentIntake(engine.store.client, engine, account=ACCOUNT, block_ms=block_ms)
        await tg.start(intake.run)
        await wait_streams_healthy(engine)
        yield engine, intake
        tg.cancel_scope.cancel()


async def final_status(engine: Engine, intent_id: str, timeout: float = 60) -> tuple[str, str, str]:
    with anyio.fail_after(timeout):
        while True:
            try:
                intent = await engine.store.load_intent(intent_id)
            except Exception as exc:  # noqa: BLE001 - Redis may be coming back
                if not is_redis_failure(exc):
                    raise
                intent = None
            if intent is not None and intent.status != "accepted":
                return intent.status, intent.outcome, intent.reason
            await anyio.sleep(0.05)


async def wait_until(condition, timeout: float = 60, step: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(step)


async def wait_recovered_from_data_loss(engine: Engine, symbol: str, timeout: float = 60) -> None:
    """The engine noticed the loss, audited (adopting what the venue holds) and resumed."""
    with anyio.fail_after(timeout):
        while True:
            try:
                record = await engine.store.load_record(symbol)
            except Exception as exc:  # noqa: BLE001
                if not is_redis_failure(exc):
                    raise
                record = None
            if record is not None and record.state is State.PROTECTED and not engine.gate.paused:
                return
            await anyio.sleep(0.1)


# -- one rule: what counts as "Redis unavailable" ----------------------------------------------


@pytest.mark.parametrize("exc", [
    redis_errors.ConnectionError("Connection refused"),
    redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
    TimeoutError(),
    ConnectionResetError(),
    redis_errors.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    redis_errors.ResponseError("Command # 1 (HSET k a 1) of pipeline caused error: OOM command not allowed"),
    redis_errors.ReadOnlyError("You can't write against a read only replica."),
    redis_errors.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable"),
    redis_errors.ResponseError("BUSY Redis is busy running a script."),
    redis_errors.ResponseError("LOADING Redis is loading the dataset in memory"),
    redis_errors.ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    redis_errors.UnblockedError("the stream key no longer exists"),
    redis_errors.StreamConsumerGroupError("No such key or consumer group"),
    redis_errors.AuthenticationFailureError("invalid username-password pair"),
    ExceptionGroup("task group", [redis_errors.ConnectionError("x"), TimeoutError()]),
    # A key of ours holding another type: Redis contents edited by hand (a poison input), not
    # a bug of ours; waited out like any refusal until someone fixes the key.
    redis_errors.WrongTypeError("Operation against a key holding the wrong kind of value"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_every_redis_side_error_counts_as_redis_unavailable(exc: BaseException) -> None:
    assert is_redis_failure(exc)


@pytest.mark.parametrize("exc", [
    ValueError("a bug of ours"),
    redis_errors.ResponseError("ERR syntax error"),
    ExceptionGroup("task group", [redis_errors.ConnectionError("x"), KeyError("bug")]),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_a_bug_of_ours_is_not_mistaken_for_redis_unavailable(exc: BaseException) -> None:
    assert not is_redis_failure(exc)


# -- Redis losing data ------------------------------------------------------------------------


async def test_flushall_recreates_the_group_adopts_what_the_venue_holds_and_entries_resume(
    clock: IOAwareMockClock, server: PrivateRedisServer
) -> None:
    async with FakeVenue(seed=61, knobs=FAST_PUSH) as venue, \
            engine_with_intake(server.url, venue, clock) as (engine, intake):
        xadd_open(server, "before-flush", "BTC/USDT:USDT", "0.01", "58800")
        assert (await final_status(engine, "before-flush"))[1] == "protected"
        await wait_until(lambda: intake.acked >= 1)

        redis_cli(server, "FLUSHALL")
        await wait_recovered_from_data_loss(engine, "BTC/USDT:USDT")
        record = await engine.store.load_record("BTC/USDT:USDT")
        assert record is not None and "adopted" in record.reason, "the venue's position is known again"
        alerts = redis_cli(server, "XRANGE", KEYS.alerts, "-", "+")
        assert "Redis lost its data" in alerts, alerts
        health = await engine.store.read_health()
        assert all(health.stream(topic).connected for topic in ("positions", "orders", "executions")), \
            "the streams' state is shown again, not 'unknown' until the next reconnect"

        xadd_open(server, "after-flush", "ETH/USDT:USDT", "0.1", "2940")
        assert (await final_status(engine, "after-flush"))[:2] == ("done", "protected")
        assert venue.truth.is_protected("BTC/USDT:USDT") and venue.truth.is_protected("ETH/USDT:USDT")
        assert venue.truth.entries_filled["BTC/USDT:USDT"] == 1, "nothing was opened twice"


@pytest.mark.asyncio_backend
async def test_redis_restarted_empty_mid_read_recreates_the_group_and_keeps_guarding() -> None:
    # Real time: the intake blocks in XREADGROUP while Redis goes away; coredis' own reconnect
    # timers must run.
    server = start_redis_server()
    try:
        async with FakeVenue(seed=62, knobs=FAST_PUSH) as venue, \
                engine_with_intake(server.url, venue, None, block_ms=500) as (engine, intake):
            xadd_open(server, "before-restart", "BTC/USDT:USDT", "0.01", "58800")
            assert (await final_status(engine, "before-restart"))[1] == "protected"

            server.halt()
            await wait_until(lambda: "redis" in engine.gate.paused, timeout=30)
            server = restart_redis_server(server, appendonly=False)  # comes back empty
            await wait_recovered_from_data_loss(engine, "BTC/USDT:USDT", timeout=60)

            xadd_open(server, "after-restart", "ETH/USDT:USDT", "0.1", "2940")
            assert (await final_status(engine, "after-restart"))[:2] == ("done", "protected")
            assert venue.truth.is_protected("BTC/USDT:USDT") and venue.truth.is_protected("ETH/USDT:USDT")
            assert venue.truth.entries_filled["BTC/USDT:USDT"] == 1
    finally:
        server.stop()


# -- Redis refusing writes --------------------------------------------------------------------


async def test_redis_out_of_memory_pauses_entries_keeps_stops_and_resumes_by_itself(
    clock: IOAwareMockClock, server: PrivateRedisServer
) -> None:
    async with FakeVenue(seed=63, knobs=FAST_PUSH) as venue, \
            engine_with_intake(server.url, venue, clock) as (engine, intake):
        before = await (await engine.submit(open_intent("pre-oom", symbol="BTC/USDT:USDT"))).wait()
        assert before.outcome == "protected"

        redis_cli(server, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis_cli(server, "CONFIG", "SET", "maxmemory", "1")
        await wait_until(lambda: "redis" in engine.gate.paused, timeout=30)
        refused = await (await engine.submit(open_intent("during-oom", symbol="ETH/USDT:USDT"))).wait()
        assert refused.status == "rejected" and "paused" in refused.reason, refused
        await anyio.sleep(5)  # (virtual time) posguard stays up through the refusals
        assert venue.truth.position("ETH/USDT:USDT") is None, "nothing sent while writes are refused"
        assert venue.truth.is_protected("BTC/USDT:USDT"), "the venue-side stop stays"
        assert venue.calls["cancel_order"] == 0

        redis_cli(server, "CONFIG", "SET", "maxmemory", "0")
        await wait_until(lambda: not engine.gate.paused, timeout=60)
        after = await (await engine.submit(open_intent("post-oom", symbol="ETH/USDT:USDT"))).wait()
        assert (after.status, after.outcome) == ("done", "protected")
        assert venue.truth.is_protected("ETH/USDT:USDT")
        record = await engine.store.load_record("BTC/USDT:USDT")
        assert record is not None and record.state is State.PROTECTED


async def test_redis_turned_read_only_replica_pauses_entries_and_resumes_after_failover(
    clock: IOAwareMockClock, server: PrivateRedisServer
) -> None:
    primary = start_redis_server()
    try:
        async with FakeVenue(seed=64, knobs=FAST_PUSH) as venue, \
                engine_with_intake(server.url, venue, clock) as (engine, intake):
            before = await (await engine.submit(open_intent("pre-ro", symbol="BTC/USDT:USDT"))).wait()
            assert before.outcome == "protected"

            redis_cli(server, "REPLICAOF", "127.0.0.1", str(primary.port))  # READONLY from now on
            await wait_until(lambda: "redis" in engine.gate.paused, timeout=30)
            refused = await (await engine.submit(open_intent("during-ro", symbol="ETH/USDT:USDT"))).wait()
            assert refused.status == "rejected" and "paused" in refused.reason, refused
            await anyio.sleep(5)
            assert venue.truth.position("ETH/USDT:USDT") is None
            assert venue.truth.is_protected("BTC/USDT:USDT")

            # Promoted again, it holds the primary's (empty) data set: the data is lost too.
            redis_cli(server, "REPLICAOF", "NO", "ONE")
            await wait_recovered_from_data_loss(engine, "BTC/USDT:USDT")
            after = await (await engine.submit(open_intent("post-ro", symbol="ETH/USDT:USDT"))).wait()
            assert (after.status, after.outcome) == ("done", "protected")
            assert venue.truth.is_protected("BTC/USDT:USDT") and venue.truth.is_protected("ETH/USDT:USDT")
    finally:
        primary.stop()


# -- a busy event loop is not Redis ------------------------------------------------------------


@pytest.mark.asyncio_backend
async def test_a_blocked_event_loop_does_not_pause_entries_or_trigger_audits() -> None:
    server = start_redis_server()
    try:
        async with FakeVenue(seed=65, knobs=FAST_PUSH) as venue, running_engine(
            server.url, venue, None, supervisor=QUICK_CHECKS
        ) as engine:
            await wait_streams_healthy(engine)
            audits = engine.auditor.runs
            paused_seen: list[str] = []

            async def watch_gate() -> None:
                while True:
                    if engine.gate.paused:
                        paused_seen.append("; ".join(engine.gate.paused.values()))
                    await anyio.sleep(0)

            async def busy(until: float) -> None:
                # One of many symbols doing work at once: each turn of the loop takes ~1.5 s.
                while time.monotonic() < until:
                    time.sleep(0.015)
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_gate)
                async with anyio.create_task_group() as load:
                    until = time.monotonic() + 8
                    for _ in range(100):
                        load.start_soon(busy, until)
                ticks = engine.watchdog.statistics().ticks
                await wait_until(lambda: engine.watchdog.statistics().ticks > ticks + 2, timeout=10)
                tg.cancel_scope.cancel()

            assert paused_seen == [], paused_seen
            assert engine.watchdog.statistics().unanswered == 0
            assert engine.auditor.runs == audits, "loop lag triggers no audit"
            assert engine.loop_lag.statistics().worst >= 1.0, engine.loop_lag.statistics()
            assert engine.metrics.registry.get_sample_value("event_loop_lag_seconds") is not None
            done = await (await engine.submit(open_intent("after-lag", symbol="ETH/USDT:USDT"))).wait()
            assert (done.status, done.outcome) == ("done", "protected")
    finally:
        server.stop()


async def test_a_positions_key_of_the_wrong_type_stops_nothing(clock: IOAwareMockClock, redis_url: str) -> None:
    """Found by a hostile session: ``SET 'posguard:{acct}:positions' oops`` ended the engine at
    its next audit (WRONGTYPE), and every start after it."""
    async with FakeVenue(seed=61, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1.0)
    ) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("before-1", symbol="SOL/USDT:USDT"))).wait()
        assert reply.outcome == "protected"
        positions = Keys(ACCOUNT).positions
        await engine.store.client.delete([positions])
        await engine.store.client.set(positions, "oops")
        await anyio.sleep(5.0)  # virtual time: five audit intervals, each audit refused by Redis
        assert venue.truth.is_protected("SOL/USDT:USDT")
        await engine.store.client.delete([positions])
        reply = await (await engine.submit(open_intent("after-1", symbol="BTC/USDT:USDT"))).wait()
        assert reply.status == "done" and venue.truth.is_protected("BTC/USDT:USDT")
