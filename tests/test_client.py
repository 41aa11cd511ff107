"""`posguard.client`, the strategies' client: against a real redis-server and a real engine and
intake on the simulated venue, as a strategy would use it (and its sync form, from a thread)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import anyio
import msgspec
import pytest

from posguard.actors.intents import INTENT_ID_PATTERN, CloseIntent, IntentRecord, IntentStatus
from posguard.actors.store.client import RedisConnection, is_redis_failure
from posguard.actors.store.keys import Keys
from posguard.client import (
    Accepted,
    AnyReply,
    AsyncClient,
    BadIntent,
    Client,
    Done,
    Duplicate,
    NoAnswer,
    Rejected,
    Reply,
    Stale,
    fields_of,
)
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor.engine import Engine
from posguard.supervisor.intake import IntentIntake
from tests.clock import IOAwareMockClock
from tests.redis_cluster import LocalCluster
from tests.support import ACCOUNT, running_engine, wait_streams_healthy

KEYS = Keys(ACCOUNT)
BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})


def redis_cli(redis_url: str, *args: str) -> str:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    result = subprocess.run(["redis-cli", "-h", host, "-p", port, *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@asynccontextmanager
async def posguard_running(redis_url: str | RedisConnection, clock: IOAwareMockClock) -> AsyncIterator[
    tuple[FakeVenue, Engine]
]:
    """What ``posguard run --simulated-venue`` runs: the engine and the intents intake."""
    async with FakeVenue(seed=17, knobs=FAST_PUSH) as venue, running_engine(
        redis_url, venue, clock
    ) as engine, anyio.create_task_group() as tg:
        await tg.start(IntentIntake(engine.store.client, engine, account=ACCOUNT, block_ms=0).run)
        await wait_streams_healthy(engine)
        yield venue, engine
        tg.cancel_scope.cancel()


async def test_open_then_close_answered_with_typed_replies(clock: IOAwareMockClock, redis_url: str) -> None:
    async with posguard_running(redis_url, clock) as (venue, engine), AsyncClient(redis_url, ACCOUNT) as client:
        ticket = await client.open(BTC, "buy", 0.01, stop_distance=0.02)
        assert INTENT_ID_PATTERN.fullmatch(ticket.intent_id) and ticket.intent_id.startswith("py-")
        first = await ticket.answer()
        assert isinstance(first, Accepted) and first.status == "accepted", first
        done = await ticket.result()
        assert isinstance(done, Done) and done.outcome == "protected" and done.client_order_id, done
        assert await ticket.answer() is first, "the first answer is kept, not taken again"
        assert venue.truth.is_protected(BTC) and venue.truth.position(BTC) is not None
        record = await engine.store.load_record(BTC)
        assert record is not None and record.stop_price == pytest.approx(58_800.0)

        closed = await (await client.close(BTC, intent_id="close-1")).result()
        assert isinstance(closed, Done) and closed.outcome == "closed", closed
        assert venue.truth.position(BTC) is None


async def test_amend_moves_the_stop_and_a_malformed_one_is_refused_before_sending(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with posguard_running(redis_url, clock) as (venue, engine), AsyncClient(redis_url, ACCOUNT) as client:
        assert (await (await client.open(BTC, "buy", 0.01, stop_price=58_800)).result()).outcome == "protected"
        moved = await (await client.amend(BTC, stop_price=59_400, intent_id="amend-1")).result()
        assert isinstance(moved, Done) and moved.outcome == "protected", moved
        assert venue.truth.position(BTC).stop_price == 59_400.0, "moved on the venue (in place)"
        assert (await engine.store.load_record(BTC)).stop_price == 59_400.0
        with pytest.raises(BadIntent, match="stop_distance: must be"):
            await client.amend(BTC, stop_distance=0.7)
        nothing = await (await client.amend(BTC)).result()
        assert isinstance(nothing, Rejected) and "nothing to change" in nothing.reason, nothing


async def test_a_partial_close_through_the_client_and_the_stream(clock: IOAwareMockClock, redis_url: str) -> None:
    async with posguard_running(redis_url, clock) as (venue, engine), AsyncClient(redis_url, ACCOUNT) as client:
        assert (await (await client.open(BTC, "buy", 0.01, stop_distance=0.02)).result()).outcome == "protected"

        part = await (await client.close(BTC, qty=0.004, intent_id="part-1")).result()

        assert isinstance(part, Done) and part.outcome == "protected" and "0.006 open" in part.reason, part
        assert venue.truth.position(BTC).size == pytest.approx(0.006) and venue.truth.is_protected(BTC)
        half = await (await client.close(BTC, fraction=0.5, intent_id="part-2")).result()
        assert isinstance(half, Done) and half.outcome == "protected", half
        assert venue.truth.position(BTC).size == pytest.approx(0.003)
        assert (await (await client.close(BTC)).result()).outcome == "closed"
        assert venue.truth.position(BTC) is None


async def test_an_id_sent_again_is_a_duplicate_and_another_body_under_it_is_refused(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with posguard_running(redis_url, clock) as (venue, engine), AsyncClient(redis_url, ACCOUNT) as client:
        # The first use by hand, its replies left unread on the list: the client must skip them.
        redis_cli(redis_url, "XADD", KEYS.intents, "*", "intent_id", "sig-1", "action", "open", "symbol", ETH,
                  "side", "sell", "qty", "0.1", "stop_price", "3060")
        with anyio.fail_after(60):
            while (first := await engine.store.load_intent("sig-1")) is None or first.status != "done":
                await anyio.sleep(0.05)
        assert redis_cli(redis_url, "LLEN", KEYS.reply("sig-1")) == "2"

        again = await client.open(ETH, "sell", 0.1, stop_price=3060, intent_id="sig-1")
        reply = await again.result()
        assert isinstance(reply, Duplicate) and reply.outcome == "protected", reply
        assert reply.client_order_id == first.client_order_id and "done" in reply.reason, reply
        assert again.first is reply, "a duplicate is the first answer and the last"

        other = await (await client.open(ETH, "sell", 0.2, stop_price=3060, intent_id="sig-1")).result()
        assert isinstance(other, Rejected) and "already used by a different intent" in other.reason, other
        assert venue.calls["create_order"] == 1 and venue.truth.entries_filled[ETH] == 1


@pytest.mark.parametrize(("options", "named"), [
    ({"qty": 0, "stop_price": 58_800}, "qty"),
    ({"qty": float("nan"), "stop_price": 58_800}, "qty"),
    ({"qty": 0.01, "stop_distance": 0.7}, "stop_distance"),
    ({"qty": 0.01, "stop_price": 58_800, "intent_id": "nl1\n"}, "intent_id"),
    ({"qty": 0.01, "stop_price": 58_800, "intent_id": ""}, "intent_id"),
    ({"qty": 0.01, "stop_price": 58_800, "expires_ms": -5}, "expires_ms"),
])
async def test_a_malformed_intent_is_refused_before_sending_with_the_services_own_message(
    clock: IOAwareMockClock, redis_url: str, options: dict[str, object], named: str
) -> None:
    options = {"intent_id": "bad-1", **options}
    async with AsyncClient(redis_url, ACCOUNT) as client:
        with pytest.raises(BadIntent, match=f"^{named}:") as refused:
            await client.open(BTC, "buy", **options)  # type: ignore[arg-type]
    assert redis_cli(redis_url, "EXISTS", KEYS.intents) == "0", "nothing may reach the stream"

    # The same fields sent by hand get the same words from the service.
    fields = {"intent_id": "bad-1", "action": "open", "symbol": BTC, "side": "buy"}
    fields |= {name: str(value) for name, value in options.items() if name != "intent_id"}
    if named == "intent_id":
        return  # answered under invalid-<entry id> there; the words are checked in the intake's tests
    async with posguard_running(redis_url, clock) as (venue, engine):
        redis_cli(redis_url, "XADD", KEYS.intents, "*", *[item for pair in fields.items() for item in pair])
        popped = await anyio.to_thread.run_sync(lambda: redis_cli(redis_url, "BLPOP", KEYS.reply("bad-1"), "20"))
        assert popped, "the service did not answer"
        assert json.loads(popped.splitlines()[-1])["reason"] == str(refused.value)


async def test_what_only_the_service_can_check_comes_back_as_a_refusal(clock: IOAwareMockClock, redis_url: str) -> None:
    async with posguard_running(redis_url, clock) as (venue, engine), AsyncClient(redis_url, ACCOUNT) as client:
        # Checked by the symbol's actor, after the intake's `accepted` (README, "Intents").
        unknown = await (await client.open("NOPE/USDT:USDT", "buy", 100, stop_distance=0.02)).result()
        assert isinstance(unknown, Rejected) and unknown.reason.startswith("symbol: unknown symbol"), unknown
        both = await (await client.open(BTC, "buy", 0.01, stop_price=58_800, stop_distance=0.02)).result()
        assert isinstance(both, Rejected) and both.reason.startswith("stop_price, stop_distance:"), both
        late = await (await client.open(BTC, "buy", 0.01, stop_price=58_800,
                                        expires_ms=int(time.time() * 1000) - 5_000)).result()
        assert isinstance(late, Stale) and "nothing was sent" in late.reason, late
        assert venue.calls["create_order"] == 0 and await engine.store.list_records() == []


async def test_no_posguard_running_is_a_timeout_that_says_what_to_do(clock: IOAwareMockClock, redis_url: str) -> None:
    """The wait is Redis' own (its BLPOP timeout, real seconds), so this one takes 2 s."""
    async with AsyncClient(redis_url, ACCOUNT, timeout=1) as client:
        ticket = await client.close(BTC, intent_id="nobody-home")
        with pytest.raises(NoAnswer) as waited:
            await ticket.answer()
        message = str(waited.value)
        assert KEYS.intents in message and "posguard run" in message and "1 s" in message, message
        assert waited.value.ticket is ticket
        assert redis_cli(redis_url, "XLEN", KEYS.intents) == "1", "the intent is left in the stream"

        # Accepted, then nothing more: the message says it is under way, not that nobody runs.
        accepted = IntentRecord(intent_id="nobody-home", action="close", symbol=BTC, status="accepted",
                                body=ticket.body)
        redis_cli(redis_url, "RPUSH", KEYS.reply("nobody-home"), msgspec.json.encode(accepted).decode())
        with pytest.raises(NoAnswer, match="was accepted but has no final answer within 1 s"):
            await ticket.result(timeout=1)
        assert isinstance(ticket.first, Accepted) and ticket.final is None


async def test_an_error_leaves_the_client_block_as_raised(clock: IOAwareMockClock, redis_url: str) -> None:
    """Not wrapped in the Redis client's exception group: ``except NoAnswer`` around the block works."""
    with pytest.raises(NoAnswer):
        async with AsyncClient(redis_url, ACCOUNT, timeout=0.01) as client:
            await (await client.close(BTC)).answer()

    def blocking() -> None:
        with Client(redis_url, ACCOUNT, timeout=0.01) as client:
            client.close(BTC).answer()

    with pytest.raises(NoAnswer):
        await anyio.to_thread.run_sync(blocking)


async def test_a_redis_that_does_not_answer_fails_at_connect_saying_so(clock: IOAwareMockClock) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"redis://user:secret@127.0.0.1:{unused.getsockname()[1]}/0"
    with pytest.raises(Exception) as failed:  # noqa: PT011 - which one is coredis' business; see the next line
        async with AsyncClient(url, ACCOUNT):
            pytest.fail("entered with no Redis")
    assert is_redis_failure(failed.value) and not isinstance(failed.value, BaseExceptionGroup), failed.value
    notes = getattr(failed.value, "__notes__", [])
    assert notes == [f"posguard.client: Redis at {url.replace('secret', '***')} is unreachable: start it, or fix the"
                     " URL"], notes


async def test_the_sync_client_from_a_thread(clock: IOAwareMockClock, redis_url: str) -> None:
    def strategy() -> list[AnyReply]:
        with Client(redis_url, ACCOUNT, id_prefix="sync") as client:
            ticket = client.open("SOL/USDT:USDT", "buy", 1, stop_distance=0.03)
            assert ticket.intent_id.startswith("sync-")
            replies = [ticket.answer(), ticket.result(timeout=60)]
            replies.append(client.close("SOL/USDT:USDT").result(timeout=60))
            with pytest.raises(BadIntent, match="^qty:"):
                client.open("SOL/USDT:USDT", "buy", -1, stop_distance=0.03)
            return replies

    async with posguard_running(redis_url, clock) as (venue, engine):
        replies = await anyio.to_thread.run_sync(strategy)
        assert [(r.status, r.outcome) for r in replies] == [("accepted", ""), ("done", "protected"), ("done", "closed")]
        assert venue.truth.position("SOL/USDT:USDT") is None and venue.truth.entries_filled["SOL/USDT:USDT"] == 1


async def test_the_client_on_a_redis_cluster(clock: IOAwareMockClock, redis_cluster: LocalCluster) -> None:
    """Every command the client sends stays in the account's slot (`Keys`' hash tag)."""
    cluster = RedisConnection(url=redis_cluster.url, cluster=True)
    async with posguard_running(cluster, clock) as (venue, engine), AsyncClient(cluster, ACCOUNT) as client:
        done = await (await client.open(BTC, "buy", 0.01, stop_price=58_800)).result()
        assert isinstance(done, Done) and done.outcome == "protected", done
        assert venue.truth.is_protected(BTC)


async def test_the_readme_example_runs(clock: IOAwareMockClock, redis_url: str) -> None:
    """README, "From Python: posguard.client", as printed (only the URL and account swapped)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("#### From Python")[1].split("```python\n")[1].split("```")[0]
    block = block.replace("redis://127.0.0.1:6379/0", redis_url).replace('"main"', repr(ACCOUNT))
    imports, rest = block.split("\n\n", 1)
    async_part, sync_part = rest.split("\nwith Client")
    namespace: dict[str, Any] = {}
    exec(imports + "\nasync def example():\n" + textwrap.indent(async_part, "    ")  # noqa: S102
         + "\n    return first, reply, moved, closed\n", namespace)
    async with posguard_running(redis_url, clock) as (venue, engine):
        first, reply, moved, closed = await namespace["example"]()
        assert (first.status, reply.outcome, moved.outcome, closed.outcome) == (
            "accepted", "protected", "protected", "closed"), moved
        await anyio.to_thread.run_sync(exec, "with Client" + sync_part, namespace)  # noqa: S102
        assert isinstance(namespace["reply"], Done) and namespace["reply"].outcome == "protected"
        assert venue.truth.is_protected(ETH)


async def test_posguard_open_amend_and_close_send_through_the_client(
    clock: IOAwareMockClock, redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[account]\nname = "{ACCOUNT}"\n[redis]\nurl = "{redis_url}"\n')

    def posguard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "posguard", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    refused = posguard("open", BTC, "buy", "nan", "--stop-price", "58800")
    assert refused.returncode == 1 and refused.stdout.splitlines()[-1].startswith("rejected (not sent) qty:"), refused
    assert redis_cli(redis_url, "EXISTS", KEYS.intents) == "0"
    nobody = posguard("close", BTC, "--intent-id", "cli-alone", "--timeout", "1")
    assert nobody.returncode == 4 and KEYS.intents in nobody.stdout and "posguard run" in nobody.stdout, nobody
    redis_cli(redis_url, "DEL", KEYS.intents)  # that close would otherwise run first

    async with posguard_running(redis_url, clock) as (venue, engine):
        opened = await anyio.to_thread.run_sync(posguard, "open", BTC, "buy", "0.01", "--stop-distance", "0.02")
        assert opened.returncode == 0, opened
        lines = opened.stdout.splitlines()
        assert lines[-2] == "accepted" and lines[-1].startswith("done outcome=protected client_order_id=pg"), lines
        assert any(re.fullmatch(r"intent cli-[0-9a-f]{16} sent", line) for line in lines), lines
        amended = await anyio.to_thread.run_sync(posguard, "amend", BTC, "--stop-price", "59400")
        assert amended.returncode == 0 and "done outcome=protected" in amended.stdout, amended
        assert venue.truth.position(BTC).stop_price == 59_400.0
        closed = await anyio.to_thread.run_sync(posguard, "close", BTC)
        assert closed.returncode == 0 and "done outcome=closed" in closed.stdout, closed
        assert venue.truth.position(BTC) is None


def test_the_replies_are_the_intent_record_tagged_by_status() -> None:
    """The reply Structs hold `IntentRecord`'s fields (its ``status`` as their tag), one class
    per status: a field or a status added to the service's record must be added here."""
    assert set(Reply.__struct_fields__) == set(IntentRecord.__struct_fields__) - {"status"}
    assert {cls.__struct_config__.tag for cls in get_args(AnyReply)} == set(get_args(IntentStatus))
    record = IntentRecord(intent_id="x", action="open", symbol=BTC, status="done", outcome="protected", body="b")
    reply = msgspec.json.decode(msgspec.json.encode(record), type=AnyReply)
    assert isinstance(reply, Done) and msgspec.structs.asdict(reply) == {
        k: v for k, v in msgspec.structs.asdict(record).items() if k != "status"}


def test_an_intent_as_stream_fields_leaves_defaults_out() -> None:
    assert fields_of(CloseIntent(intent_id="c-1", symbol=BTC)) == {"action": "close", "intent_id": "c-1", "symbol": BTC}
