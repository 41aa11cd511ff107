"""Issue 12, items 1 and 10: no single intent can stop the intake, and intent bookkeeping.

Every poison entry is sent the way a strategy would (``redis-cli XADD``) to a running engine
and intake; each must be answered, acknowledged, reach nothing on the venue (its ground
truth), and leave the intake serving the next intent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from posguard.actors.intents import INTENT_ID_PATTERN, OpenIntent
from posguard.actors.store.client import open_redis
from posguard.actors.store.intent_stream import GROUP, IntentStream
from posguard.supervisor.intake import BadIntent, parse_intent
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT
from tests.test_intents import KEYS, final_reply, redis_cli, with_intake, xadd

REPO = Path(__file__).resolve().parents[1]
BTC_OPEN = {"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800"}

POISON_NUMBERS = [
    # (field that must be named, overrides of BTC_OPEN)
    ("qty", {"qty": "inf"}),
    ("qty", {"qty": "nan"}),
    ("qty", {"qty": "1e308"}),
    ("qty", {"qty": "2e305"}),
    ("qty", {"qty": "-1"}),
    ("qty", {"qty": "0"}),
    ("qty", {"qty": "501"}),  # above the venue's maximum order size (500 BTC)
    ("stop_price", {"stop_price": "inf"}),
    ("stop_price", {"stop_price": "nan"}),
    ("stop_price", {"stop_price": "1e308"}),
    ("stop_price", {"stop_price": "-5"}),
    ("stop_price", {"stop_price": "0"}),
    ("stop_distance", {"stop_price": None, "stop_distance": "inf"}),
    ("stop_distance", {"stop_price": None, "stop_distance": "nan"}),
    ("stop_distance", {"stop_price": None, "stop_distance": "1e308"}),
    ("stop_distance", {"stop_price": None, "stop_distance": "-0.01"}),
    ("stop_distance", {"stop_price": None, "stop_distance": "0"}),
]


def _fields(overrides: dict[str, str | None]) -> dict[str, str]:
    merged = BTC_OPEN | overrides
    return {k: v for k, v in merged.items() if v is not None}


async def _wait_acked(intake, count: int) -> None:  # noqa: ANN001
    with anyio.fail_after(60):
        while intake.acked < count:
            await anyio.sleep(0.05)


# -- item 1: one intent kills the service ---------------------------------------------------


async def test_non_finite_and_out_of_range_numbers_are_refused_naming_the_field(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        for n, (field, overrides) in enumerate(POISON_NUMBERS):
            xadd(redis_url, intent_id=f"poison-{n}", **_fields(overrides))
        for n, (field, overrides) in enumerate(POISON_NUMBERS):
            reply = await final_reply(engine, f"poison-{n}")
            assert reply["status"] == "rejected" and reply["reason"].startswith(f"{field}:"), (overrides, reply)
        assert venue.calls["create_order"] == 0 and venue.truth.position("BTC/USDT:USDT") is None
        await _wait_acked(intake, len(POISON_NUMBERS))
        assert redis_cli(redis_url, "XPENDING", KEYS.intents, GROUP).splitlines()[0] == "0"
        # The intake is still serving: a good intent after all that is carried out.
        xadd(redis_url, intent_id="good-after-poison", **BTC_OPEN)
        assert (await final_reply(engine, "good-after-poison"))["outcome"] == "protected"
        assert venue.truth.is_protected("BTC/USDT:USDT")


async def test_any_exception_while_handling_one_entry_is_a_rejection_and_the_intake_goes_on(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        real_fetch_price = venue.fetch_price

        async def broken_fetch_price(symbol: str) -> float:
            if symbol == "ETH/USDT:USDT":
                return {}["a bug"]  # a bug-like error, not a venue error
            return await real_fetch_price(symbol)

        venue.fetch_price = broken_fetch_price  # type: ignore[method-assign]
        xadd(redis_url, intent_id="bug-1", action="open", symbol="ETH/USDT:USDT", side="buy", qty="0.1",
             stop_distance="0.02")
        reply = await final_reply(engine, "bug-1")
        assert reply["status"] == "rejected" and reply["reason"].startswith("internal error"), reply
        await _wait_acked(intake, 1)
        assert redis_cli(redis_url, "XPENDING", KEYS.intents, GROUP).splitlines()[0] == "0"
        alerts = redis_cli(redis_url, "XRANGE", KEYS.alerts, "-", "+")
        assert "bug-1" in alerts and "internal error" in alerts
        assert venue.calls["create_order"] == 0
        xadd(redis_url, intent_id="after-bug", action="open", symbol="SOL/USDT:USDT", side="buy", qty="1",
             stop_distance="0.02")
        assert (await final_reply(engine, "after-bug"))["outcome"] == "protected"


async def test_posguard_open_with_a_huge_stop_price_is_refused_cleanly(
    clock: IOAwareMockClock, redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[account]\nname = "{ACCOUNT}"\n[redis]\nurl = "{redis_url}"\n')
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        result = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "posguard", "--config", str(config), "open", "ETH/USDT:USDT", "buy", "0.1",
             "--stop-price", "1e308", "--intent-id", "cli-huge", "--timeout", "60"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        ))
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "rejected" in result.stdout and "stop_price:" in result.stdout, result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        assert venue.calls["create_order"] == 0


# -- item 10: intent bookkeeping ------------------------------------------------------------


def test_the_intent_id_pattern_must_match_the_whole_id() -> None:
    assert INTENT_ID_PATTERN.fullmatch("nl1") and not INTENT_ID_PATTERN.fullmatch("nl1\n")
    for bad in ("nl1\n", "bad id with spaces", "", "x" * 65):
        with pytest.raises(BadIntent, match="^intent_id: must be 1-64 characters"):
            parse_intent({"intent_id": bad, "action": "close", "symbol": "BTC/USDT:USDT"})


async def test_an_intent_id_with_a_trailing_newline_is_refused_and_sends_nothing(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        xadd(redis_url, intent_id="nl1\n", **BTC_OPEN)
        await _wait_acked(intake, 1)
        assert await engine.store.load_intent("nl1") is None
        assert venue.calls["create_order"] == 0 and await engine.store.list_records() == []


async def _blpop(redis_url: str, intent_id: str) -> dict[str, str]:
    raw = await anyio.to_thread.run_sync(
        lambda: redis_cli(redis_url, "BLPOP", KEYS.reply(intent_id), "20").splitlines()
    )
    assert raw, f"no reply for {intent_id} within 20 s"
    return json.loads(raw[-1])


async def test_a_resent_handled_intent_id_is_answered_duplicate_pointing_at_the_first_outcome(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        xadd(redis_url, intent_id="dup-1", **BTC_OPEN)
        assert (await final_reply(engine, "dup-1"))["outcome"] == "protected"
        assert [(await _blpop(redis_url, "dup-1"))["status"] for _ in range(2)] == ["accepted", "done"]
        xadd(redis_url, intent_id="dup-1", **BTC_OPEN)
        again = await _blpop(redis_url, "dup-1")
        assert again["status"] == "duplicate" and again["outcome"] == "protected", again
        assert "done" in again["reason"] and again["client_order_id"], again
        # A refused one, sent again, is a duplicate of its refusal.
        xadd(redis_url, intent_id="dup-2", **_fields({"qty": "0"}))
        assert (await _blpop(redis_url, "dup-2"))["status"] == "rejected"
        xadd(redis_url, intent_id="dup-2", **BTC_OPEN)
        again = await _blpop(redis_url, "dup-2")
        assert again["status"] == "duplicate" and "rejected" in again["reason"], again
        assert venue.calls["create_order"] == 1 and venue.truth.entries_filled["BTC/USDT:USDT"] == 1
        first = await engine.store.load_intent("dup-1")
        assert first is not None and first.status == "done", "the first outcome is kept"


async def test_intent_records_expire(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        xadd(redis_url, intent_id="ttl-1", **BTC_OPEN)
        await final_reply(engine, "ttl-1")
        from posguard.actors.store.positions import INTENT_TTL_SECONDS

        ttl = int(redis_cli(redis_url, "TTL", KEYS.intent("ttl-1")))
        assert 0 < ttl <= INTENT_TTL_SECONDS


async def test_trimming_the_intents_stream_never_drops_a_pending_or_unread_entry(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with open_redis(redis_url) as client:
        stream = IntentStream(client, ACCOUNT)
        await stream.ensure_group()
        ids = [await stream.add({"intent_id": f"t-{n}", "action": "close", "symbol": "BTC/USDT:USDT"})
               for n in range(30)]
        read = await stream.read("c1", ">", count=10, block_ms=None)
        assert [e.entry_id for e in read] == ids[:10]
        for entry_id in ids[3:8]:
            await stream.ack(entry_id)
        await stream.trim(keep=3)
        left = [e.entry_id for e in await stream.entries()]
        assert left == ids, "entries 0-2 are still pending: nothing older than them may go, and nothing newer"
        for entry_id in (*ids[:3], *ids[8:10]):
            await stream.ack(entry_id)
        await stream.trim(keep=3)
        left = [e.entry_id for e in await stream.entries()]
        assert set(ids[10:]) <= set(left), "20 entries not read yet: all kept"
        assert len(left) <= 21
        for entry in await stream.read("c1", ">", count=100, block_ms=None):
            await stream.ack(entry.entry_id)
        await stream.trim(keep=3)
        assert [e.entry_id for e in await stream.entries()] == ids[-3:], "all handled: the newest 3 kept"


async def test_one_pending_entry_never_trims_the_history_below_what_is_kept(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Found by a hostile session: with any entry pending, everything older than it went,
    whatever ``keep`` said (3,000 intents left 1,955 of the documented 10,000)."""
    async with open_redis(redis_url) as client:
        stream = IntentStream(client, ACCOUNT)
        await stream.ensure_group()
        ids = [await stream.add({"intent_id": f"h-{n}", "action": "close", "symbol": "BTC/USDT:USDT"})
               for n in range(25)]
        for entry in await stream.read("c1", ">", count=100, block_ms=None):
            if entry.entry_id != ids[20]:
                await stream.ack(entry.entry_id)
        await stream.trim(keep=10)
        assert [e.entry_id for e in await stream.entries()] == ids[15:], "the newest 10 stay, pending or not"


async def test_the_intake_trims_the_intents_stream_as_it_goes(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        intake.keep_entries = 2
        for n in range(6):
            xadd(redis_url, intent_id=f"trim-{n}", action="close", symbol="BTC/USDT:USDT")
        await _wait_acked(intake, 6)
        with anyio.fail_after(3 * intake.trim_interval):
            while int(redis_cli(redis_url, "XLEN", KEYS.intents)) > 2:
                await anyio.sleep(1)
        left = redis_cli(redis_url, "XRANGE", KEYS.intents, "-", "+")
        assert "trim-5" in left and "trim-4" in left and "trim-3" not in left, "the newest two are kept"


async def test_a_stale_open_is_refused_as_stale_before_anything_is_sent(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    redis_cli(redis_url, "XGROUP", "CREATE", KEYS.intents, GROUP, "0", "MKSTREAM")
    # Queued long ago (the entry id is Redis' arrival time): older than the default maximum age.
    old_ms = int(time.time() * 1000) - 3_600_000
    redis_cli(redis_url, "XADD", KEYS.intents, f"{old_ms}-0", "intent_id", "old-1",
              *[x for kv in BTC_OPEN.items() for x in kv])
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        reply = await final_reply(engine, "old-1")
        assert reply["status"] == "stale" and reply["reason"].startswith("stale:"), reply
        # An explicit expiry in the past, on a fresh entry.
        xadd(redis_url, intent_id="old-2", expires_ms=str(int(time.time() * 1000) - 1), **BTC_OPEN)
        reply = await final_reply(engine, "old-2")
        assert reply["status"] == "stale" and "expires_ms" in reply["reason"], reply
        # A fresh one with its expiry ahead goes through.
        xadd(redis_url, intent_id="fresh-1", expires_ms=str(int(time.time() * 1000) + 600_000), **BTC_OPEN)
        assert (await final_reply(engine, "fresh-1"))["outcome"] == "protected"
        assert venue.calls["create_order"] == 1 and venue.truth.entries_filled["BTC/USDT:USDT"] == 1
        await _wait_acked(intake, 3)


async def test_an_open_that_went_stale_waiting_in_the_mailbox_is_not_sent(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        expired = OpenIntent(intent_id="late-1", symbol="BTC/USDT:USDT", side="buy", qty=0.01, stop_price=58_800.0,
                             expires_ms=int(time.time() * 1000) - 1)
        reply = await (await engine.submit(expired)).wait()
        assert reply.status == "stale", reply
        assert venue.calls["create_order"] == 0 and await engine.store.load_record("BTC/USDT:USDT") is None


def test_a_malformed_expiry_is_refused_naming_the_field() -> None:
    with pytest.raises(BadIntent, match="^expires_ms:"):
        parse_intent({"intent_id": "x", "action": "close", "symbol": "BTC/USDT:USDT", "expires_ms": "soon"})


# -- found by a hostile session: bytes and keys of the wrong type ----------------------------


def _redis_cli_raw(redis_url: str, command: bytes) -> None:
    """A command with bytes that are not UTF-8, as ``printf ... | redis-cli`` sends them."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    result = subprocess.run(["redis-cli", "-h", host, "-p", port], input=command, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr


async def test_fields_that_are_not_utf8_are_refused_and_the_intake_goes_on(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        key = KEYS.intents.encode()
        _redis_cli_raw(redis_url, b'XADD ' + key + b' * intent_id "\\xff\\xfe" action close symbol BTC/USDT:USDT\n')
        _redis_cli_raw(redis_url, b'XADD ' + key + b' * intent_id bytes-2 action open symbol "\\xff" side buy'
                                  b' qty 0.01 stop_price 58800\n')
        xadd(redis_url, intent_id="good-after-bytes", **BTC_OPEN)
        assert (await final_reply(engine, "good-after-bytes"))["outcome"] == "protected"
        assert (await final_reply(engine, "bytes-2"))["status"] == "rejected"
        await _wait_acked(intake, 3)
        assert redis_cli(redis_url, "XPENDING", KEYS.intents, GROUP).splitlines()[0] == "0"
        assert venue.calls["create_order"] == 1


async def test_an_intents_key_of_the_wrong_type_stops_nothing(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        redis_cli(redis_url, "DEL", KEYS.intents)
        redis_cli(redis_url, "SET", KEYS.intents, "oops")
        with anyio.fail_after(30):
            while intake.read_failures < 2:  # the reads fail with WRONGTYPE, and are retried
                await anyio.sleep(0.05)
        redis_cli(redis_url, "DEL", KEYS.intents)
        xadd(redis_url, intent_id="good-after-wrongtype", **BTC_OPEN)
        assert (await final_reply(engine, "good-after-wrongtype"))["outcome"] == "protected"


async def test_an_entry_giving_a_field_twice_is_refused_naming_the_field(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """XADD accepts ``intent_id a ... intent_id b``; such an entry was answered under the last
    value. The id is ambiguous: it is refused under ``invalid-<entry id>``; another field given
    twice is refused under the intent's id. Nothing is sent either way."""
    async with with_intake(redis_url, clock) as (venue, engine, intake):
        twice_id = redis_cli(redis_url, "XADD", KEYS.intents, "*", "intent_id", "twice-a", "action", "close",
                             "symbol", "BTC/USDT:USDT", "intent_id", "twice-b")
        twice_qty = [*[x for kv in BTC_OPEN.items() for x in kv], "qty", "5"]
        redis_cli(redis_url, "XADD", KEYS.intents, "*", "intent_id", "twice-qty", *twice_qty)
        reply = await final_reply(engine, f"invalid-{twice_id}")
        assert reply["status"] == "rejected" and reply["reason"].startswith("intent_id:"), reply
        assert "twice" in reply["reason"], reply
        reply = await final_reply(engine, "twice-qty")
        assert reply["status"] == "rejected" and reply["reason"].startswith("qty:") and "twice" in reply["reason"]
        await _wait_acked(intake, 2)
        for intent_id in ("twice-a", "twice-b"):
            assert await engine.store.load_intent(intent_id) is None
        assert venue.calls["create_order"] == 0 and await engine.store.list_records() == []
