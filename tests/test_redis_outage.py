"""Redis restarted mid-run: entries pause, venue stops stay, nothing written before is lost.

Real time on asyncio: while Redis is down the client's own reconnect timers must run, which a
mock clock held still for "I/O in flight" would never let happen.
"""

from __future__ import annotations

import anyio
import pytest

from posguard.actors.records import State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.redis_server import restart_redis_server, start_redis_server
from posguard.supervisor.supervision import SupervisorSettings
from tests.support import open_intent, running_engine, wait_streams_healthy

TOPICS = ("positions", "orders", "executions")


@pytest.mark.asyncio_backend
async def test_redis_restart_pauses_entries_keeps_stops_and_resyncs() -> None:
    server = start_redis_server(appendonly=True)
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
    try:
        async with FakeVenue(seed=50, knobs=knobs) as venue, running_engine(
            server.url, venue, None, supervisor=SupervisorSettings(redis_check_interval=0.2)
        ) as engine:
            await wait_streams_healthy(engine)
            before = await (await engine.submit(open_intent("pre-outage", symbol="BTC/USDT:USDT"))).wait()
            assert before.outcome == "protected"

            server.halt()
            with anyio.fail_after(30):
                while "redis" not in engine.gate.paused:
                    await anyio.sleep(0.25)
            refused = await (await engine.submit(open_intent("during", symbol="ETH/USDT:USDT"))).wait()
            assert refused.status == "rejected" and "Redis unreachable" in refused.reason
            assert venue.truth.position("ETH/USDT:USDT") is None, "nothing sent while Redis is down"
            assert venue.truth.is_protected("BTC/USDT:USDT"), "the venue-side stop stays"
            await anyio.sleep(1.5)  # posguard keeps running through the outage

            server = restart_redis_server(server)
            with anyio.fail_after(60):
                while "redis" in engine.gate.paused:
                    await anyio.sleep(0.25)
            record = await engine.store.load_record("BTC/USDT:USDT")
            assert record is not None and record.state is State.PROTECTED, "written before the outage, kept"
            after = await (await engine.submit(open_intent("post-outage", symbol="ETH/USDT:USDT"))).wait()
            assert after.status == "done" and after.outcome == "protected"
            assert engine.last_audit is not None
    finally:
        server.stop()
