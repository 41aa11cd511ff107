"""Issue 12, item 3: one bad record must not stop everything.

A position hash edited by hand (a trailing space, an unknown state, an empty qty) is
quarantined: the engine keeps running its audits, the hash is left exactly as it is, the
symbol's venue position is protected from the venue's view, intents for it are refused
naming the key, every other symbol opens and closes normally, and `posguard status` shows
it. Trio, mock clock, fake venue, a real redis-server written to with raw HSETs.
"""

from __future__ import annotations

import anyio
import coredis
import pytest

from posguard.actors.intents import CloseIntent
from posguard.actors.records import BadRecord, PositionRecord, Protection, State, decode_record
from posguard.actors.store.keys import Keys
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor import operator
from posguard.supervisor.config import parse_config
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

ETH, XRP, DOGE, SOL, BTC = "ETH/USDT:USDT", "XRP/USDT:USDT", "DOGE/USDT:USDT", "SOL/USDT:USDT", "BTC/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
KEYS = Keys(ACCOUNT)


def good_fields(symbol: str = ETH, **overrides: str) -> dict[str, str]:
    fields = PositionRecord(
        symbol=symbol, intent_id="hand-1", state=State.PROTECTED, side="buy", qty=0.1, filled_qty=0.1,
        entry_price=3000.0, stop_price=2940.0, client_order_id="pgzzzzzzzzzzzzzzzz-e", protection=Protection.STOP_ORDER,
        created_at="2026-11-25T07:32:49.605+00:00", updated_at="2026-11-25T07:32:49.605+00:00",
    ).to_fields()
    fields.update(overrides)
    return fields


POISON: list[tuple[str, str]] = [
    ("filled_qty", "0.1 "),  # the reproduction: a trailing space
    ("filled_qty", " 0.1"),
    ("filled_qty", "1_0"),
    ("filled_qty", "nan"),
    ("stop_price", "inf"),
    ("stop_price", "1e999"),
    ("entry_price", "-3000"),
    ("qty", ""),  # required: empty is not "unknown" here
    ("state", "opened"),
    ("state", "Protected"),
    ("side", "long"),
    ("protection", "manual"),
    ("protection", "order"),
    ("stop_attempts", "1.0"),
    ("sent_ms", "12 "),
    ("sent_to_verified_ms", "fast"),
    ("updated_at", "yesterday"),
    ("symbol", "BTC/USDT:USDT"),  # not the symbol of its key
    ("client_order_id", ""),
]
"""One field's text each that makes a record unusable (also read in bulk: tests/test_record_scan.py)."""


@pytest.mark.parametrize(("field", "value"), POISON)
def test_decode_record_refuses_any_field_that_does_not_parse_exactly(field: str, value: str) -> None:
    with pytest.raises(BadRecord) as caught:
        decode_record(good_fields(**{field: value}), symbol=ETH)
    defect = caught.value.defect
    assert (defect.field, defect.value) == (field, value)
    assert field in str(caught.value) and repr(value) in str(caught.value)


def test_decode_record_round_trips_what_posguard_writes_and_reports_a_missing_field() -> None:
    record = decode_record(good_fields(), symbol=ETH)
    assert decode_record(record.to_fields(), symbol=ETH) == record
    assert record.sent_to_verified_ms is None and record.filled_at == ""
    fields = good_fields()
    del fields["state"]
    with pytest.raises(BadRecord, match="state"):
        decode_record(fields, symbol=ETH)
    huge = "9" * 10_000
    with pytest.raises(BadRecord) as caught:
        decode_record(good_fields(qty=huge + " "), symbol=ETH)
    assert len(str(caught.value)) < 400, "a poison value is shown shortened, not echoed whole"


async def test_bad_records_are_quarantined_and_every_other_symbol_goes_on(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    bad = {
        ETH: good_fields(ETH, filled_qty="0.1 "),
        XRP: good_fields(XRP, state="opened"),
        DOGE: good_fields(DOGE, qty=""),
    }
    async with FakeVenue(seed=50, knobs=FAST_PUSH, supports_attached_stop=False) as venue, coredis.Redis.from_url(
        redis_url, decode_responses=True
    ) as raw:
        # Someone holds ETH on the venue with no stop, and its record in Redis is unusable.
        await venue.create_order(OrderRequest(symbol=ETH, side="buy", qty=0.1, client_order_id="manual-eth"))
        assert not venue.truth.is_protected(ETH)
        for symbol, fields in bad.items():
            await raw.hset(KEYS.position(symbol), fields)
            await raw.sadd(KEYS.positions, [symbol])
        # The engine starts with the bad records in Redis (before: `posguard run` never started).
        async with running_engine(redis_url, venue, clock, audit=AuditSettings(interval=10.0)) as engine:
            await wait_streams_healthy(engine)
            report = engine.last_audit
            assert report is not None
            kinds = {f.symbol: f.kind for f in report.findings}
            assert kinds == {ETH: "bad_record", XRP: "bad_record", DOGE: "bad_record"}, report.findings
            eth = next(f for f in report.findings if f.symbol == ETH)
            assert KEYS.position(ETH) in eth.seen and "filled_qty" in eth.seen and "'0.1 '" in eth.seen
            # The venue's position without a usable record is protected like an orphan.
            with anyio.fail_after(60):
                while not venue.truth.is_protected(ETH):
                    await anyio.sleep(0.5)
            [stop] = venue.truth.open_stops(ETH)
            assert stop.qty == pytest.approx(0.1) and stop.stop_price == pytest.approx(3000.0 * 0.98)
            # Evidence untouched: every bad hash is exactly what was written.
            for symbol, fields in bad.items():
                assert dict(await raw.hgetall(KEYS.position(symbol))) == fields, symbol
            alerts = [e.field_values for e in await raw.xrange(KEYS.alerts)]
            assert any(a["symbol"] == ETH and KEYS.position(ETH) in a["message"] and "filled_qty" in a["message"]
                       and "'0.1 '" in a["message"] for a in alerts), alerts

            # Every other symbol opens and closes normally.
            reply = await (await engine.submit(open_intent("ok-btc", symbol=BTC))).wait()
            assert (reply.status, reply.outcome) == ("done", "protected"), reply
            assert venue.truth.is_protected(BTC)
            reply = await (await engine.submit(CloseIntent(intent_id="ok-btc-close", symbol=BTC))).wait()
            assert (reply.status, reply.outcome) == ("done", "closed"), reply
            assert venue.truth.position(BTC) is None

            # The reproduction on a running service: a live record edited by hand.
            reply = await (await engine.submit(open_intent("sol-1", symbol=SOL))).wait()
            assert (reply.status, reply.outcome) == ("done", "protected"), reply
            [sol_stop] = venue.truth.open_stops(SOL)
            await raw.hset(KEYS.position(SOL), {"filled_qty": "0.1 "})
            report = await engine.audit_now()
            assert report is not None
            assert [f.kind for f in report.findings if f.symbol == SOL] == ["bad_record"]
            assert venue.truth.orders[sol_stop.client_order_id].status == "open", "the bad record's stop stays"
            assert venue.truth.is_protected(SOL)

            # Intents for a quarantined symbol are refused, naming the record.
            reply = await (await engine.submit(open_intent("eth-1", symbol=ETH))).wait()
            assert reply.status == "rejected" and KEYS.position(ETH) in reply.reason and "filled_qty" in reply.reason
            reply = await (await engine.submit(CloseIntent(intent_id="sol-close", symbol=SOL))).wait()
            assert reply.status == "rejected" and KEYS.position(SOL) in reply.reason, reply
            assert venue.truth.entries_filled[ETH] == 1, "nothing new was sent for ETH"

            # The periodic audits go on.
            runs = engine.auditor.runs
            with anyio.fail_after(60):
                while engine.auditor.runs < runs + 2:
                    await anyio.sleep(0.5)
            assert venue.truth.unprotected_now() == []
            alerts = [e.field_values for e in await raw.xrange(KEYS.alerts)]
            assert sum(a["symbol"] == ETH and "bad record" in a["message"] for a in alerts) == 1, "one alert per defect"

            # `posguard status` shows them and exits 0.
            lines: list[str] = []
            config = parse_config(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "{ACCOUNT}"\n')
            assert await operator.status(config, out=lines.append) == 0
            text = "\n".join(lines)
            assert f"bad record {KEYS.position(ETH)}: field filled_qty = '0.1 '" in text, text
            assert f"bad record {KEYS.position(XRP)}: field state = 'opened'" in text, text
            assert f"bad record {KEYS.position(DOGE)}: field qty = ''" in text, text
            assert "BTC/USDT:USDT" in text and "closed" in text


async def test_a_fixed_record_is_taken_over_by_the_next_audit(clock: IOAwareMockClock, redis_url: str) -> None:
    async with FakeVenue(seed=51, knobs=FAST_PUSH, supports_attached_stop=False) as venue, coredis.Redis.from_url(
        redis_url, decode_responses=True
    ) as raw, running_engine(redis_url, venue, clock, audit=AuditSettings(interval=1000.0)) as engine:
        await wait_streams_healthy(engine)
        await venue.create_order(OrderRequest(symbol=ETH, side="buy", qty=0.1, client_order_id="manual-eth"))
        await raw.hset(KEYS.position(ETH), good_fields(ETH, filled_qty="0.1 "))
        await raw.sadd(KEYS.positions, [ETH])
        await engine.audit_now()
        [guard] = venue.truth.open_stops(ETH)
        # A person fixes the field: the record is the symbol's again, with a stop of its own.
        await raw.hset(KEYS.position(ETH), {"filled_qty": "0.1"})
        report = await engine.audit_now()
        assert report is not None and {f.kind for f in report.findings} == {"stale_stop", "unprotected"}
        assert venue.truth.orders[guard.client_order_id].status == "cancelled"
        assert venue.truth.is_protected(ETH)
        record = await engine.store.load_record(ETH)
        assert record is not None and record.state is State.PROTECTED and record.stop_client_order_id
        assert venue.truth.orders[record.stop_client_order_id].status == "open"
        assert venue.truth.entries_filled[ETH] == 1


async def test_bytes_that_are_not_text_or_a_key_that_is_not_a_hash_stop_nothing(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    link = "LINK/USDT:USDT"
    async with FakeVenue(seed=52, knobs=FAST_PUSH) as venue, coredis.Redis.from_url(redis_url) as raw_bytes:
        fields = {k.encode(): v.encode() for k, v in good_fields(link).items()}
        fields[b"filled_qty"] = b"\xff\xfe"
        await raw_bytes.hset(KEYS.position(link).encode(), fields)
        await raw_bytes.sadd(KEYS.positions.encode(), [link.encode(), b"\xff", DOGE.encode()])
        await raw_bytes.set(KEYS.position(DOGE).encode(), b"a string, not a hash")
        async with running_engine(redis_url, venue, clock, audit=AuditSettings(interval=10.0)) as engine:
            await wait_streams_healthy(engine)
            report = engine.last_audit
            assert report is not None
            kinds = sorted((f.symbol, f.kind) for f in report.findings)
            assert kinds == [(DOGE, "bad_record"), (link, "bad_record")], report.findings
            seen = {f.symbol: f.seen for f in report.findings}
            assert "filled_qty" in seen[link] and "not UTF-8 text" in seen[link]
            assert "not a hash" in seen[DOGE]
            reply = await (await engine.submit(open_intent("doge-1", symbol=DOGE))).wait()
            assert reply.status == "rejected" and "not a hash" in reply.reason, reply
            reply = await (await engine.submit(open_intent("ok-btc", symbol=BTC))).wait()
            assert (reply.status, reply.outcome) == ("done", "protected"), reply
            lines: list[str] = []
            config = parse_config(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "{ACCOUNT}"\n')
            assert await operator.status(config, out=lines.append) == 0
            assert any(line.startswith(f"bad record {KEYS.position(link)}: field filled_qty") for line in lines), lines
