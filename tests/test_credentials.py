"""API credentials the venue refuses (issue 12, item 4).

At start-up `posguard run` exits (tests/test_startup.py). A key revoked while posguard runs is
found by the audit: entries are refused with that reason, an alert is written, the audit backs
off exponentially (a venue bans a client that hammers it with refused keys) and everything
resumes by itself once the venue accepts the key again.
"""

from __future__ import annotations

import anyio
import ccxt.async_support as ccxt
import pytest

from posguard.actors.store.keys import Keys
from posguard.streams.ccxt_adapter.dialects import DIALECTS
from posguard.streams.ccxt_adapter.errors import translate
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import VenueAuthFailed
from posguard.streams.venue.events import TOPICS
from posguard.supervisor.audit_schedule import CREDENTIALS_BACKOFF
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
REFUSALS = 10


@pytest.mark.parametrize(("exchange", "body"), [
    ("bybit", '{"retCode":10003,"retMsg":"API key is invalid."}'),
    ("bybit", '{"retCode":10004,"retMsg":"Error sign, please check your signature generation algorithm."}'),
    ("bybit", '{"retCode":10005,"retMsg":"Permission denied, please check your API key permissions."}'),
    ("bybit", '{"retCode":33004,"retMsg":"Your api key has expired."}'),
    ("binanceusdm", '{"code":-2014,"msg":"API-key format invalid."}'),
    ("binanceusdm", '{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action."}'),
])
def test_refused_credentials_are_told_apart_by_the_venue_code(exchange: str, body: str) -> None:
    """By code, not only by ccxt's class: ccxt picks Binance's table by hostname, so behind a
    proxy these arrive as a plain ExchangeError."""
    error = translate(ccxt.ExchangeError(f"{exchange} {body}"), DIALECTS[exchange].codes, action="fetch_positions")
    assert isinstance(error, VenueAuthFailed), error
    assert "API credentials" in str(error)


async def test_revoked_credentials_refuse_entries_alert_and_back_off_audits(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=12, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=5.0), credentials_hint="check POSGUARD_API_KEY"
    ) as engine:
        await wait_streams_healthy(engine)
        refused = VenueAuthFailed("fake fetch_positions: API key is invalid. (code 10003)")
        venue.fail_next("fetch_positions", *[refused] * REFUSALS)
        first = venue.calls["fetch_positions"]
        engine.request_audit("test: the key was revoked")
        with anyio.fail_after(30):
            while "API credentials" not in engine.gate.refusal():
                await anyio.sleep(0.05)

        # Entries are refused with the reason, and nothing reaches the venue.
        sent = venue.calls["create_order"]
        reply = await (await engine.submit(open_intent("revoked-1"))).wait()
        assert reply.status == "rejected"
        assert "API credentials" in reply.reason and "POSGUARD_API_KEY" in reply.reason
        assert venue.calls["create_order"] == sent
        alerts = await engine.store.client.xrange(Keys(ACCOUNT).alerts)
        assert any("API credentials" in entry[1]["message"] for entry in alerts), alerts

        # The audit retries with exponential, bounded backoff: not once a second.
        attempts: list[float] = [anyio.current_time()]
        seen = venue.calls["fetch_positions"]
        with anyio.fail_after(REFUSALS * CREDENTIALS_BACKOFF.maximum * 2):
            while venue.calls["fetch_positions"] < first + REFUSALS + 1 or "API credentials" in engine.gate.refusal():
                if venue.calls["fetch_positions"] != seen:
                    seen = venue.calls["fetch_positions"]
                    attempts.append(anyio.current_time())
                await anyio.sleep(0.1)
        gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
        assert gaps[1] > gaps[0] * 1.3 and gaps[2] > gaps[1] * 1.3, gaps
        assert max(gaps) <= CREDENTIALS_BACKOFF.maximum * (1 + CREDENTIALS_BACKOFF.jitter) + 1, gaps
        assert sum(gaps) > 10 * REFUSALS, f"retried too eagerly: {gaps}"

        # Accepted again: entries resume by themselves.
        assert engine.gate.refusal() == ""
        done = await (await engine.submit(open_intent("accepted-again"))).wait()
        assert done.status == "done" and done.outcome == "protected", done
        assert venue.truth.is_protected("BTC/USDT:USDT")


@pytest.mark.asyncio_backend
async def test_the_emulator_refuses_unsigned_or_garbled_requests_like_bybit() -> None:
    """Poison for the emulator's new signature check: whatever the headers hold, the answer is
    Bybit's refusal, never a server error, and nothing is done."""
    import aiohttp

    from posguard.streams.emulators.bybit import DEFAULT_API_KEY, running_emulator

    async with running_emulator() as emu, aiohttp.ClientSession() as http:
        for headers, code in [
            ({"X-BAPI-API-KEY": "not-the-key"}, 10003),
            ({"X-BAPI-API-KEY": DEFAULT_API_KEY}, 10004),
            ({"X-BAPI-API-KEY": DEFAULT_API_KEY, "X-BAPI-TIMESTAMP": "1", "X-BAPI-SIGN": "\xff\xfezz"}, 10004),
            ({"X-BAPI-API-KEY": DEFAULT_API_KEY, "X-BAPI-TIMESTAMP": "", "X-BAPI-SIGN": "0" * 64}, 10004),
        ]:
            async with http.post(f"{emu.rest_url}/v5/order/create", headers=headers, data=b"\xff{") as response:
                assert response.status == 200
                assert (await response.json())["retCode"] == code, headers
        assert emu.truth()["orders"] == []
