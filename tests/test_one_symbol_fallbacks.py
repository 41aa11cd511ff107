"""An actor's REST fallbacks ask the venue for its own symbol's position, never the account's.

Each fallback (verification when the push is late, the attached stop's confirmation, the
symbol's own audit after a crash) used to list every position of the account to look at one:
with thousands of positions opening at once that is quadratic. Observed on the fake venue's own
log of what each position-list call asked for (`FakeVenue.position_lists`), not on a mock. The
account-wide list is the full audit's alone. Trio, mock clock, real Redis.
"""

from __future__ import annotations

import anyio

from posguard.actors.records import Protection, State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.simulated.venue import ACCOUNT
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine, wait_streams_healthy
from tests.test_supervisor import CrashingStore, supervisor_settings

SYMBOL = "ETH/USDT:USDT"
TOPICS = ("positions", "orders", "executions")


async def test_verification_and_the_stop_confirmation_ask_for_their_symbol_alone(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # Every push is lost: the entry is verified over REST, and its attached stop is confirmed
    # over REST once the push deadline for it has passed.
    knobs = FaultKnobs(position_lag=Lag.fixed(0.5), push_drop={t: 1.0 for t in TOPICS})
    async with FakeVenue(seed=161, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        account_lists, audits = venue.position_lists[ACCOUNT], engine.auditor.runs
        reply = await (await engine.submit(open_intent("one-1", symbol=SYMBOL))).wait()
        record = await engine.store.load_record(SYMBOL)

        assert reply.status == "done" and record.state is State.PROTECTED and record.evidence == "rest"
        assert record.protection is Protection.ATTACHED_CONFIRMED, "the REST list showed the attached stop"
        assert engine.ctx.rest_calls["fetch_positions"] >= 1
        assert venue.position_lists[SYMBOL] == engine.ctx.rest_calls["fetch_positions"], venue.position_lists
        assert venue.position_lists[ACCOUNT] - account_lists == engine.auditor.runs - audits == 0, \
            "no fallback listed the whole account"


async def test_the_symbols_own_audit_after_a_crash_asks_for_that_symbol(clock: IOAwareMockClock, redis_url: str) -> None:
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
    async with FakeVenue(seed=162, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, supervisor=supervisor_settings(max_restarts=10)
    ) as engine:
        store = CrashingStore(engine.store)
        engine.ctx.store = store  # type: ignore[assignment]
        await wait_streams_healthy(engine)
        account_lists, audits = venue.position_lists[ACCOUNT], engine.auditor.runs
        store.crash_when = "protected"  # the first write after the entry filled
        await (await engine.submit(open_intent("one-2", symbol=SYMBOL))).wait()
        while not store.crash_times:
            await anyio.sleep(0.01)
        store.crash_when = None
        with anyio.fail_after(30):
            while (await engine.store.load_record(SYMBOL)).state is not State.PROTECTED:
                await anyio.sleep(0.05)
            while engine.auditor.runs == audits:  # the account's audit a crash asks for
                await anyio.sleep(0.05)

        assert venue.position_lists[SYMBOL] >= 1, "the restarted actor audited its symbol with a one-symbol list"
        assert venue.position_lists[ACCOUNT] - account_lists == engine.auditor.runs - audits, \
            f"only full audits list the account: {venue.position_lists}"
