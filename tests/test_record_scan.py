"""Reading every position hash at once (an audit, a start-up) gives the verdicts that reading
each one with HGETALL and `decode_record` gives: the same usable records, the same defects.

`RedisStore.read_records` takes most hashes through the screened script and
`decode_prescreened` (one msgspec call per record) and only the rest field by field; these
tests hold that fast path to `decode_record`'s rules on poison of every kind, on text the
screen turns away though `decode_record` takes it, and on fuzzed fields. Real redis-server.
"""

from __future__ import annotations

import random

import coredis

from posguard.actors.records import BadRecord, PositionRecord, Protection, State
from posguard.actors.store.keys import Keys
from posguard.actors.store.positions import RecordScan, RedisStore, decode_hash
from tests.test_bad_records import POISON, good_fields

ACCOUNT = "scan"
KEYS = Keys(ACCOUNT)

ACCEPTED_THE_SLOW_WAY = [
    # decode_record takes these; the screen does not vouch for them, so they go field by field.
    {"stop_attempts": "٣"},  # a digit, though not an ASCII one
    {"qty": "+0.1"},
    {"qty": ".5"},
    {"entry_price": "3000."},
    {"filled_qty": ""},  # unknown yet: the default
    {"sent_to_verified_ms": ""},
    {"sent_to_protected_ms": "12.5"},
    {"reason": "text with \"quotes\", a \\ backslash, a / and a\nnewline, ünïcödé"},
    {"evidence": "push", "stop_scope": "whole_position"},
]


def symbol_of(index: int) -> str:
    return f"S{index}/USDT:USDT"


async def scan_both_ways(raw: coredis.Redis[str], hashes: list[dict[str, str]]) -> tuple[RecordScan, RecordScan]:
    """Write ``hashes`` (the i-th under ``symbol_of(i)``, its own ``symbol`` field made that
    unless it sets another), then read them with `read_records` and one by one."""
    await raw.flushall()
    for index, fields in enumerate(hashes):
        symbol = symbol_of(index)
        await raw.hset(KEYS.position(symbol), {"symbol": symbol} | fields)
        await raw.sadd(KEYS.positions, [symbol])
    store = RedisStore(raw, ACCOUNT)
    fast = await store.read_records()
    slow = RecordScan(usable=[], bad=[])
    for symbol in sorted(symbol_of(i) for i in range(len(hashes))):
        try:
            slow.usable.append(decode_hash(KEYS, symbol, dict(await raw.hgetall(KEYS.position(symbol)))))
        except BadRecord as exc:
            slow.bad.append(exc.defect)
    return fast, slow


def assert_same(fast: RecordScan, slow: RecordScan) -> None:
    assert sorted(fast.usable, key=lambda r: r.symbol) == sorted(slow.usable, key=lambda r: r.symbol)
    assert sorted(fast.bad, key=lambda d: d.symbol) == sorted(slow.bad, key=lambda d: d.symbol)


async def test_every_poison_and_every_slow_form_gets_decode_records_verdict(redis_url: str) -> None:
    def fields(**overrides: str) -> dict[str, str]:
        written = good_fields("")
        del written["symbol"]  # the key's own, unless a case sets another
        return written | overrides

    hashes = [fields(**{field: value}) for field, value in POISON]
    hashes += [fields(**overrides) for overrides in ACCEPTED_THE_SLOW_WAY]
    legacy = fields(stop_source="attached", protected_at="2026-11-25T07:32:50.000+00:00")
    del legacy["protection"]  # written before the field existed: read from stop_source
    hashes += [legacy, fields()]
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as raw:
        fast, slow = await scan_both_ways(raw, hashes)
    assert_same(fast, slow)
    assert len(slow.bad) == len(POISON) and len(slow.usable) == len(ACCEPTED_THE_SLOW_WAY) + 2
    legacy_record = next(r for r in fast.usable if r.symbol == symbol_of(len(hashes) - 2))
    assert legacy_record.protection is Protection.ATTACHED_CONFIRMED


async def test_fuzzed_fields_get_decode_records_verdict(redis_url: str) -> None:
    rng = random.Random(16)
    alphabet = "0123456789.eE+-" * 3 + " _xnaIf:T٣"
    numeric = ["qty", "stop_price", "filled_qty", "entry_price", "sent_to_verified_ms", "stop_attempts", "rest_calls",
               "sent_ms", "flat_ms"]
    hashes = []
    for _ in range(600):
        fields = good_fields("")
        del fields["symbol"]
        for name in rng.sample(numeric, rng.randint(1, 3)):
            fields[name] = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        if rng.random() < 0.2:
            fields["updated_at"] = rng.choice(["", "2026-11-25T07:32:49+00:00", "2026-11-25T07:32:49", "2026-13-01T00:00:00+00:00"])
        if rng.random() < 0.1:
            fields["state"] = rng.choice(list(State) + ["", "OPEN"])
        hashes.append(fields)
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as raw:
        fast, slow = await scan_both_ways(raw, hashes)
    assert_same(fast, slow)
    assert slow.usable and slow.bad, "the fuzz reaches both verdicts"


async def test_text_that_is_not_utf8_in_any_field_is_a_defect_not_a_failed_scan(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url) as raw_bytes, coredis.Redis.from_url(
        redis_url, decode_responses=True
    ) as raw:
        await raw.flushall()
        for index, name in enumerate(("reason", "filled_qty", "state")):
            symbol = symbol_of(index)
            fields = {k.encode(): v.encode() for k, v in good_fields(symbol).items()}
            fields[name.encode()] = b"\xff\xfe"
            await raw_bytes.hset(KEYS.position(symbol).encode(), fields)
            await raw_bytes.sadd(KEYS.positions.encode(), [symbol.encode()])
        good = symbol_of(9)
        await raw.hset(KEYS.position(good), good_fields(good))
        await raw.sadd(KEYS.positions, [good])
        scan = await RedisStore(raw, ACCOUNT).read_records()
    assert [r.symbol for r in scan.usable] == [good]
    assert sorted((d.field, d.reason) for d in scan.bad) == [
        ("filled_qty", "not UTF-8 text"), ("reason", "not UTF-8 text"), ("state", "not UTF-8 text")
    ]


async def test_a_thousand_records_read_the_fast_way_are_the_records_written(redis_url: str) -> None:
    records = [
        PositionRecord(symbol=symbol_of(i), intent_id=f"i-{i}", state=State.PROTECTED, side="buy", qty=0.001 * (i + 1),
                       stop_price=58_000.5 + i, client_order_id=f"pg-{i}-e", filled_qty=1e-05 * i, entry_price=60_000.0,
                       protection=Protection.STOP_ORDER, sent_ms=1_764_000_000_000 + i, sent_to_verified_ms=1.25 * i or None,
                       created_at="2026-12-04T02:52:55.123+00:00")
        for i in range(1_000)
    ]
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as raw:
        await raw.flushall()
        store = RedisStore(raw, ACCOUNT)
        for record in records:
            await raw.hset(KEYS.position(record.symbol), record.to_fields())
            await raw.sadd(KEYS.positions, [record.symbol])
        await raw.config_resetstat()
        scan = await store.read_records()
        commands = await raw.info("commandstats")
    assert commands["cmdstat_eval"]["calls"] == 2  # 500 keys per script call
    # Commands a script runs count too: one HGETALL per hash, so none was read a second time
    # field by field: every record posguard wrote is read the fast way.
    assert commands["cmdstat_hgetall"]["calls"] == len(records)
    assert scan.bad == [] and sorted(scan.usable, key=lambda r: r.symbol) == sorted(records, key=lambda r: r.symbol)
