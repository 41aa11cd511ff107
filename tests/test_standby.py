"""Two `posguard run` processes on one account (issue 15): one leads, one stands by.

Real processes (``python -m posguard run``), this suite's redis-server, and the Bybit V5
emulator driven by real ccxt; venue calls are counted at the emulator (its REST request
counter and WebSocket connects), which is the venue's side of the wire. Waits are on events
(a log line, a key in Redis, a reply), each bounded by a timeout, never a sleep to settle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest

from posguard.actors.store.keys import Keys
from posguard.streams.emulators.bybit import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_emulator
from posguard.streams.emulators.bybit.client import run_config
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "standby"
KEYS = Keys(ACCOUNT)
TTL = 3.0
FAST_LEASE = f"[lease]\nttl = {TTL}\nrenew_every = 0.5\nmargin = 1.0\n[audit]\ninterval = 3600\n"
"""A short lease so that a takeover is quick; audits only at start-up and on demand, so that a
leader at rest makes no REST call and the emulator's counter shows who called."""


async def start(config: Path, log: Path) -> Any:
    env = dict(os.environ, POSGUARD_API_KEY=DEFAULT_API_KEY, POSGUARD_API_SECRET=DEFAULT_API_SECRET)
    return await anyio.open_process(
        [sys.executable, "-m", "posguard", "--config", str(config), "run"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )


async def wait_for_line(log: Path, *texts: str, timeout: float = 60) -> str:
    """The first of ``texts`` to appear in the process's log."""
    with anyio.fail_after(timeout):
        while True:
            text = log.read_text(errors="replace")
            for wanted in texts:
                if wanted in text:
                    return wanted
            await anyio.sleep(0.05)


async def open_and_wait(client: coredis.Redis[str], intent_id: str, symbol: str, stop: float,
                        timeout: float) -> dict[str, Any]:
    """Send an open intent and return its final reply (``done``/``rejected``)."""
    await client.xadd(KEYS.intents, {"intent_id": intent_id, "action": "open", "symbol": symbol, "side": "buy",
                                     "qty": "0.01", "stop_price": str(stop)})
    with anyio.fail_after(timeout):
        while True:
            popped = await client.blpop([KEYS.reply(intent_id)], timeout=1)
            if popped:
                reply = json.loads(popped[1])
                if reply["status"] != "accepted":
                    return reply


def venue_calls(emu: Any) -> tuple[int, int]:
    truth = emu.truth()
    return sum(truth["requests"].values()), truth["ws_connects"]


async def stop(process: Any) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()


async def test_a_second_run_stands_by_idle_until_the_leader_is_killed_then_serves(
    redis_url: str, tmp_path: Path
) -> None:
    """Seen failing on main before the lease: the second `run` made its own start-up calls
    (credentials check, markets, streams, audit) beside the first."""
    async with running_emulator() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, ACCOUNT, FAST_LEASE))
        log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
        leader = await start(config, log_a)
        standby = None
        try:
            first = await open_and_wait(client, "sb-1", "BTC/USDT:USDT", 55_000, timeout=60)
            assert first["status"] == "done" and first["outcome"] == "protected", first
            before = venue_calls(emu)
            standby = await start(config, log_b)
            # "posguard is running": what a second run said on main, where both acted.
            said = await wait_for_line(log_b, "standing by", "posguard is running")
            assert venue_calls(emu) == before, "the second run made no venue call (REST or WebSocket)"
            assert said == "standing by"
            from posguard.actors.store.lease import read_lease, read_standbys

            with anyio.fail_after(30):  # its presence, refreshed: it has been waiting a while
                seen: set[str] = set()
                while len(seen) < 3:
                    seen |= {str(await client.zscore(KEYS.standbys, m)) for m in await client.zrange(KEYS.standbys, 0, -1)}
                    await anyio.sleep(0.05)
            assert venue_calls(emu) == before, "the standby made no venue call (REST or WebSocket)"
            standbys = await read_standbys(client, ACCOUNT)
            assert [s.pid for s in standbys] == [standby.pid]
            holder = await read_lease(client, ACCOUNT)
            assert holder is not None and holder.pid == leader.pid
            consumers = await client.xinfo_consumers(KEYS.intents, "posguard")
            assert [c["name"] for c in consumers] == [holder.owner], "only the leader reads the intents"
            status = await anyio.run_process([sys.executable, "-m", "posguard", "--config", str(config), "status"],
                                             cwd=REPO, check=False)
            text = status.stdout.decode()
            assert f"leader: pid {leader.pid}" in text and f"standby: pid {standby.pid}" in text, text

            leader.kill()  # SIGKILL: no release; the standby must wait out the lease
            await leader.wait()
            second = await open_and_wait(client, "sb-2", "ETH/USDT:USDT", 2_900, timeout=TTL + 60)
            assert second["status"] == "done" and second["outcome"] == "protected", second
            holder = await read_lease(client, ACCOUNT)
            assert holder is not None and holder.pid == standby.pid
            assert await read_standbys(client, ACCOUNT) == []
            consumers = await client.xinfo_consumers(KEYS.intents, "posguard")
            assert [c["name"] for c in consumers] == [holder.owner], "the dead leader's consumer is deleted"
            assert set(emu.truth()["positions"]) == {"BTCUSDT", "ETHUSDT"}, emu.truth()["positions"]
        finally:
            if leader.returncode is None:
                leader.kill()
            if standby is not None:
                await stop(standby)


async def test_a_paused_leader_is_fenced_sends_nothing_and_exits_5(redis_url: str, tmp_path: Path) -> None:
    from posguard.actors.store.lease import Lease

    async with running_emulator() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, ACCOUNT, FAST_LEASE))
        log = tmp_path / "a.log"
        leader = await start(config, log)
        try:
            first = await open_and_wait(client, "fz-1", "BTC/USDT:USDT", 55_000, timeout=60)
            assert first["status"] == "done", first
            leader.send_signal(signal.SIGSTOP)
            with anyio.fail_after(TTL + 10):  # its lease runs out in Redis
                while await client.exists([KEYS.lease]):
                    await anyio.sleep(0.05)
            other = Lease(client, ACCOUNT, ttl=60)
            assert await other.acquire(), "another process takes the lease (a new token)"
            await client.xadd(KEYS.intents, {"intent_id": "fz-2", "action": "open", "symbol": "ETH/USDT:USDT",
                                             "side": "buy", "qty": "0.01", "stop_price": "2900"})
            heartbeat = await client.hget(KEYS.health, "heartbeat_ms")
            before = venue_calls(emu)
            orders_before = len(emu.truth()["orders"])
            leader.send_signal(signal.SIGCONT)
            with anyio.fail_after(30):
                code = await leader.wait()
            assert code == 5, log.read_text()[-3000:]
            assert venue_calls(emu) == before, "after SIGCONT the fenced process sent nothing to the venue"
            assert len(emu.truth()["orders"]) == orders_before
            assert await client.hget(KEYS.health, "heartbeat_ms") == heartbeat, "its heartbeat write was refused"
            assert await client.exists([KEYS.position("ETH/USDT:USDT"), KEYS.reply("fz-2"), KEYS.intent("fz-2")]) == 0
            text = log.read_text()
            assert "posguard: fenced:" in text and "Traceback" not in text.split("posguard: fenced:")[-1]
        finally:
            if leader.returncode is None:
                leader.send_signal(signal.SIGCONT)
                leader.kill()


async def test_a_graceful_stop_releases_the_lease_and_exits_0(redis_url: str, tmp_path: Path) -> None:
    from posguard.actors.store.lease import read_lease

    async with running_emulator() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, ACCOUNT, FAST_LEASE.replace(f"ttl = {TTL}", "ttl = 60")))
        log = tmp_path / "a.log"
        leader = await start(config, log)
        try:
            reply = await open_and_wait(client, "gs-1", "BTC/USDT:USDT", 55_000, timeout=60)
            assert reply["status"] == "done", reply
            leader.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await leader.wait()
            assert code == 0, log.read_text()[-3000:]
            assert await read_lease(client, ACCOUNT) is None, "released: a standby need not wait out the 60 s ttl"
        finally:
            if leader.returncode is None:
                leader.kill()


async def wait_for_adoption(client: coredis.Redis[str], symbol: str, timeout: float = 60) -> Any:
    """The record of ``symbol`` written again by the audit after a data loss, protected."""
    from posguard.actors.records import State
    from posguard.actors.store.positions import RedisStore

    store = RedisStore(client, ACCOUNT)  # reads only
    with anyio.fail_after(timeout):
        while True:
            record = await store.load_record(symbol)
            if record is not None and record.state is State.PROTECTED:
                return record
            await anyio.sleep(0.05)


async def test_a_leader_survives_flushall_audits_adopts_and_serves_under_a_higher_token(
    redis_url: str, tmp_path: Path
) -> None:
    """Issue 15 follow-up. Seen failing on main: the leader's next fenced write after the
    FLUSHALL was refused (the epoch gone with the data) and `posguard run` exited 5."""
    from posguard.actors.store.lease import read_lease
    from posguard.streams.emulators.engine.truth import is_protected

    async with running_emulator() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, ACCOUNT, FAST_LEASE))
        log = tmp_path / "a.log"
        leader = await start(config, log)
        try:
            first = await open_and_wait(client, "dl-1", "BTC/USDT:USDT", 55_000, timeout=60)
            assert first["status"] == "done" and first["outcome"] == "protected", first
            holder = await read_lease(client, ACCOUNT)
            assert holder is not None and holder.pid == leader.pid
            old_token = int(holder.token)

            await client.flushall()  # Redis loses its data: lease, epoch, records, the intents group
            record = await wait_for_adoption(client, "BTC/USDT:USDT")
            assert "adopted" in record.reason, record
            assert leader.returncode is None, log.read_text()[-3000:]
            holder = await read_lease(client, ACCOUNT)
            assert holder is not None and holder.pid == leader.pid, "the leader holds the lease again"
            assert int(holder.token) > old_token, "a fresh token, above every earlier one (never reused)"
            assert await client.get(KEYS.epoch) == holder.token
            alerts = await client.xrange(KEYS.alerts, "-", "+")
            assert any("Redis lost its data" in json.dumps(entry) for entry in alerts), alerts

            second = await open_and_wait(client, "dl-2", "ETH/USDT:USDT", 2_900, timeout=60)
            assert second["status"] == "done" and second["outcome"] == "protected", second
            truth = emu.truth()
            assert set(truth["positions"]) == {"BTCUSDT", "ETHUSDT"}, truth["positions"]
            assert truth["positions"]["BTCUSDT"]["size"] == 0.01, "nothing was opened twice"
            assert is_protected(truth, "BTCUSDT") and is_protected(truth, "ETHUSDT"), truth["orders"]
            assert leader.returncode is None
        finally:
            await stop(leader)
        assert leader.returncode == 0, log.read_text()[-3000:]


async def test_flushall_then_a_standby_takes_the_lease_first_the_old_leader_is_fenced(
    redis_url: str, tmp_path: Path
) -> None:
    """The race after a data loss: another process acquires the lost lease before the old
    leader writes again (it is stopped meanwhile, so the order is certain): the old leader's
    write finds a token that is not its own, not a missing epoch, so it is fenced (exit 5)
    and sends nothing to the venue after."""
    from posguard.actors.store.lease import Lease

    async with running_emulator() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, ACCOUNT, FAST_LEASE))
        log = tmp_path / "a.log"
        leader = await start(config, log)
        try:
            first = await open_and_wait(client, "dr-1", "BTC/USDT:USDT", 55_000, timeout=60)
            assert first["status"] == "done", first
            leader.send_signal(signal.SIGSTOP)
            await client.flushall()
            other = Lease(client, ACCOUNT, ttl=60)
            assert await other.acquire(), "the standby wins the lost lease"
            await client.xadd(KEYS.intents, {"intent_id": "dr-2", "action": "open", "symbol": "ETH/USDT:USDT",
                                             "side": "buy", "qty": "0.01", "stop_price": "2900"})
            before = venue_calls(emu)
            orders_before = len(emu.truth()["orders"])
            leader.send_signal(signal.SIGCONT)
            with anyio.fail_after(30):
                code = await leader.wait()
            assert code == 5, log.read_text()[-3000:]
            assert venue_calls(emu) == before, "after SIGCONT the fenced process sent nothing to the venue"
            assert len(emu.truth()["orders"]) == orders_before
            assert await client.exists([KEYS.health, KEYS.position("BTC/USDT:USDT"), KEYS.reply("dr-2")]) == 0, \
                "none of its writes landed"
            assert await client.get(KEYS.epoch) == other.fence.token
        finally:
            if leader.returncode is None:
                leader.send_signal(signal.SIGCONT)
                leader.kill()
