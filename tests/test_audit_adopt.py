"""``posguard audit`` on a database that knows none of the venue's positions (issue 15).

The venue is the simulated one (its ground truth: `FakeVenue.truth` and its REST call
counts); Redis is the session's real redis-server. The command's own code path runs: only
the venue it opens is swapped for one the test holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import pytest

from posguard.actors.records import PositionRecord, State
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import TOPICS
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor import operator, service
from posguard.supervisor.config import Config, parse_config

SYMBOL = "SOL/USDT:USDT"  # the fake venue starts it at 150
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
ACTING = ("create_order", "place_stop", "cancel_order")


def config_for(redis_url: str) -> Config:
    return parse_config(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "ops"\n')


def use_venue(monkeypatch: pytest.MonkeyPatch, venue: FakeVenue) -> None:
    @asynccontextmanager
    async def opened(config: Config, credentials: object) -> AsyncIterator[FakeVenue]:
        yield venue

    monkeypatch.setattr(service, "open_venue", opened)


async def keys_of(redis_url: str) -> list[str]:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        return sorted([k async for k in client.scan_iter(match="posguard:*")])


async def manual_long(venue: FakeVenue, qty: float = 3.0) -> None:
    """Someone opened a position by hand (or another posguard on another database did)."""
    venue.set_price(SYMBOL, 150.0)
    await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=qty, client_order_id="manual-1"))


def acting_calls(venue: FakeVenue) -> dict[str, int]:
    return {m: venue.calls[m] for m in ACTING}


async def test_audit_refuses_on_an_empty_redis_facing_venue_positions(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeVenue(seed=42, knobs=FAST_PUSH) as venue:
        await manual_long(venue)
        use_venue(monkeypatch, venue)
        before, position = acting_calls(venue), venue.truth.position(SYMBOL)
        lines: list[str] = []
        code = await operator.audit(config_for(redis_url), None, dry_run=False, out=lines.append)
        text = "\n".join(lines)
        assert code == operator.EXIT_ADOPT_REFUSED, text
        assert "refused" in text and f"{SYMBOL}  long  3" in text and "--adopt" in text and "redis.url" in text
        # Ground truth: nothing reached the venue, nothing was written.
        assert acting_calls(venue) == before
        assert venue.truth.position(SYMBOL) == position and not venue.truth.is_protected(SYMBOL)
        assert await keys_of(redis_url) == []


async def test_audit_with_adopt_takes_the_position_over(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeVenue(seed=42, knobs=FAST_PUSH) as venue:
        await manual_long(venue)
        use_venue(monkeypatch, venue)
        lines: list[str] = []
        code = await operator.audit(config_for(redis_url), None, dry_run=False, adopt=True, out=lines.append)
        text = "\n".join(lines)
        assert code == 0, text
        assert "adopt it and protect it with a reduce-only stop at 147" in text
        assert venue.truth.is_protected(SYMBOL)
        async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
            record = await RedisStore(client, "ops").load_record(SYMBOL)
        assert record is not None and record.state is State.PROTECTED and record.filled_qty == 3.0


async def test_a_known_position_beside_an_orphan_is_not_refused(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One position Redis knows proves the database: the unknown one is an ordinary orphan."""
    async with FakeVenue(seed=42, knobs=FAST_PUSH) as venue:
        await manual_long(venue)
        venue.set_price("ETH/USDT:USDT", 3000.0)
        await venue.create_order(OrderRequest(symbol="ETH/USDT:USDT", side="buy", qty=0.1, client_order_id="m-2"))
        async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
            await RedisStore(client, "ops").save_record(PositionRecord(
                symbol="ETH/USDT:USDT", intent_id="i-2", state=State.OPEN, side="buy", qty=0.1, filled_qty=0.1,
                entry_price=3000.0, stop_price=2940.0, client_order_id="pgbbbb-e"))
        use_venue(monkeypatch, venue)
        lines: list[str] = []
        assert await operator.audit(config_for(redis_url), None, dry_run=False, out=lines.append) == 0, lines
        assert venue.truth.is_protected(SYMBOL)


async def test_an_adopted_position_past_its_stop_is_announced_before_it_is_closed(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeVenue(seed=42, knobs=FAST_PUSH) as venue:
        await manual_long(venue)
        venue.set_price(SYMBOL, 140.0)  # below the orphan stop 150 * (1 - 0.02) = 147
        use_venue(monkeypatch, venue)
        orders_sent = venue.calls["create_order"]
        seen_at_announcement: list[tuple[int, bool]] = []
        lines: list[str] = []

        def out(line: str) -> None:
            if line.startswith(f"CLOSING {SYMBOL}"):
                position = venue.truth.position(SYMBOL)
                seen_at_announcement.append((venue.calls["create_order"], position is not None and position.is_open))
            lines.append(line)

        code = await operator.audit(config_for(redis_url), None, dry_run=False, adopt=True, out=out)
        text = "\n".join(lines)
        assert code == 0, text
        assert "CLOSE long 3 at market" in text and "past its orphan stop 147" in text
        # The announcement came while no close order had been sent and the position was open ...
        assert seen_at_announcement == [(orders_sent, True)], text
        # ... and the close did reach the venue after it.
        assert venue.calls["create_order"] > orders_sent
        position = venue.truth.position(SYMBOL)
        assert position is None or not position.is_open


async def test_dry_run_prints_the_plan_and_sends_nothing(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeVenue(seed=42, knobs=FAST_PUSH) as venue:
        await manual_long(venue)
        venue.set_price(SYMBOL, 140.0)
        use_venue(monkeypatch, venue)
        before, position = acting_calls(venue), venue.truth.position(SYMBOL)
        lines: list[str] = []
        assert await operator.audit(config_for(redis_url), None, dry_run=True, out=lines.append) == 0
        text = "\n".join(lines)
        assert "would refuse without --adopt" in text
        assert "audit plan (dry run" in text and f"would close {SYMBOL}" in text and "CLOSE long 3" in text
        assert acting_calls(venue) == before and venue.truth.position(SYMBOL) == position
