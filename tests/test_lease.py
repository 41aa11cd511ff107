"""The account lease and its fencing token (issue 15), against this suite's real redis-server.

Kleppmann's rule is what is checked: a writer whose token is no longer the account's epoch is
refused by Redis itself, atomically with the write (nothing of the batch lands), and the venue
wrapper refuses actions without the lease and its margin (nothing reaches the venue: the
simulated venue's own ground truth says so).
"""

from __future__ import annotations

import coredis
import pytest

from posguard.actors.records import PositionRecord, State
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import _FENCED_WRITE, _RENEW, Fenced, Lease, read_lease
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue
from posguard.streams.venue.errors import NotPlaced
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor.leased_venue import LeasedVenue, LeaseNotHeld

pytestmark = pytest.mark.asyncio_backend

ACCOUNT = "lease"
KEYS = Keys(ACCOUNT)


def record(symbol: str = "BTC/USDT:USDT") -> PositionRecord:
    return PositionRecord(symbol=symbol, state=State.SUBMITTING, side="buy", qty=0.01,
                          intent_id="i-1", client_order_id="pg-i-1", stop_price=50_000.0)


async def test_acquire_renew_release(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        first, second = Lease(client, ACCOUNT, ttl=10), Lease(client, ACCOUNT, ttl=10)
        assert await first.acquire()
        assert not await second.acquire(), "a held lease is not taken twice"
        holder = await read_lease(client, ACCOUNT)
        assert holder is not None and holder.owner == first.owner and holder.token == first.fence.token
        assert await client.get(KEYS.epoch) == first.fence.token
        assert await first.renew()
        assert not await second.renew(), "renewing a lease one does not hold fails"
        await second.release()
        assert await read_lease(client, ACCOUNT) is not None, "release by a non-holder deletes nothing"
        await first.release()
        assert await read_lease(client, ACCOUNT) is None
        assert await second.acquire()
        assert int(second.fence.token) == int(first.fence.token) + 1, "each acquisition takes a new token"


async def test_a_stale_token_is_refused_atomically(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        old = Lease(client, ACCOUNT, ttl=1)
        assert await old.acquire()
        store = RedisStore(client, ACCOUNT, old.fence)
        await store.save_record(record("ETH/USDT:USDT"))  # while it holds the lease: written
        assert await client.exists([KEYS.position("ETH/USDT:USDT")]) == 1
        await client.delete([KEYS.lease])  # its lease ran out (as after a pause past the ttl) ...
        new = Lease(client, ACCOUNT, ttl=10)
        assert await new.acquire()  # ... and another process took it
        journal_before = await client.xlen(KEYS.journal)
        with pytest.raises(Fenced):
            await store.save_record(record())
        assert await client.exists([KEYS.position("BTC/USDT:USDT")]) == 0, "the refused record is not written"
        assert await client.xlen(KEYS.journal) == journal_before, "nor its journal entry"
        assert await client.sismember(KEYS.positions, "BTC/USDT:USDT") is False
        assert old.fence.is_lost and not old.holds(0)
        with pytest.raises(Fenced):  # every later write too, without asking Redis
            await store.append_alert("*", "x")
        assert not await old.renew(), "the old holder cannot renew the new holder's lease"
        # The new holder writes.
        await RedisStore(client, ACCOUNT, new.fence).save_record(record())
        assert await client.exists([KEYS.position("BTC/USDT:USDT")]) == 1


async def test_the_margin_check_refuses_a_venue_action_and_nothing_reaches_the_venue(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client, FakeVenue(seed=1) as fake:
        lease = Lease(client, ACCOUNT, ttl=5)
        assert await lease.acquire()
        venue = LeasedVenue(fake, lease, margin=5)  # a margin the whole ttl: never enough left
        request = OrderRequest(symbol="BTC/USDT:USDT", side="buy", qty=0.01, client_order_id="pg-margin-1")
        with pytest.raises(LeaseNotHeld) as refused:
            await venue.create_order(request)
        assert isinstance(refused.value, NotPlaced), "a refusal is 'not placed', never an unknown outcome"
        assert venue.refused == 1
        assert fake.truth.orders == {}, "the venue's ground truth: it never saw the order"
        # With enough of the lease left, the same request goes through.
        venue.margin = 1
        await venue.create_order(request)
        assert "pg-margin-1" in fake.truth.orders


async def test_the_token_survives_a_restart_and_redis_data_loss_restarts_it_higher(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        first = Lease(client, ACCOUNT, ttl=10)
        assert await first.acquire()
        await first.release()  # a clean stop: the next process (a restart) takes a higher token
        restarted = Lease(client, ACCOUNT, ttl=10)
        assert await restarted.acquire()
        assert int(restarted.fence.token) > int(first.fence.token)
        await client.flushall()  # Redis loses its data: lease and epoch gone
        store = RedisStore(client, ACCOUNT, restarted.fence)
        told: list[str] = []
        restarted.fence.on_data_lost.append(told.append)
        before = int(restarted.fence.token)
        # The holder is the only owner: its write re-acquires (the normal atomic acquire) and lands.
        await store.save_record(record())
        assert await client.exists([KEYS.position("BTC/USDT:USDT")]) == 1
        holder = await read_lease(client, ACCOUNT)
        assert holder is not None and holder.owner == restarted.owner
        assert holder.token == restarted.fence.token == await client.get(KEYS.epoch)
        assert int(restarted.fence.token) > before, (
            "after a loss the epoch restarts from Redis' clock: above every token handed out before")
        assert len(told) == 1 and not restarted.fence.is_lost, "the data-loss path is told once"
        assert await restarted.renew()
        after = Lease(client, ACCOUNT, ttl=10)
        assert not await after.acquire(), "the re-acquired lease is held"


async def test_the_fenced_script_tells_a_missing_epoch_from_another_token(redis_url: str) -> None:
    """The script's two refusals, told apart atomically by the script itself (no separate read)."""
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        op = ["HSET", "2", "2", "f", "v"]
        key = KEYS.position("X")
        with pytest.raises(coredis.exceptions.ResponseError, match="^EPOCHLOST"):
            await client.eval(_FENCED_WRITE, [KEYS.epoch, key], ["7", *op])
        await client.set(KEYS.epoch, "8")
        with pytest.raises(coredis.exceptions.ResponseError, match="^FENCED"):
            await client.eval(_FENCED_WRITE, [KEYS.epoch, key], ["7", *op])
        assert await client.exists([key]) == 0, "neither refusal writes anything"
        await client.set(KEYS.epoch, "7")
        assert await client.eval(_FENCED_WRITE, [KEYS.epoch, key], ["7", *op]) == 1
        assert await client.hget(key, "f") == "v"


async def test_after_a_data_loss_a_standby_that_took_the_lease_first_fences_the_old_holder(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        old = Lease(client, ACCOUNT, ttl=10)
        assert await old.acquire()
        store = RedisStore(client, ACCOUNT, old.fence)
        await client.flushall()
        standby = Lease(client, ACCOUNT, ttl=10)
        assert await standby.acquire(), "the standby wins the race for the lost lease"
        assert int(standby.fence.token) > int(old.fence.token), "a token is never reused"
        with pytest.raises(Fenced):
            await store.save_record(record())
        assert await client.exists([KEYS.position("BTC/USDT:USDT")]) == 0, "nothing of the old holder lands"
        assert old.fence.is_lost
        assert not await old.renew(), "nor can it renew the standby's lease"
        holder = await read_lease(client, ACCOUNT)
        assert holder is not None and holder.owner == standby.owner and holder.token == standby.fence.token


async def test_a_dead_holder_on_this_host_is_taken_over_and_a_live_one_waited_for(redis_url: str) -> None:
    import subprocess
    import sys

    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            dead = Lease(client, ACCOUNT, ttl=60)
            assert await dead.acquire()
            value = (await client.get(KEYS.lease)).replace(f'"pid": {__import__("os").getpid()}', f'"pid": {child.pid}')
            await client.set(KEYS.lease, value)  # as the child would have written it
            dead.value = value
            successor = Lease(client, ACCOUNT, ttl=60)
            assert not await successor.take_from_dead_holder(), "a live holder (even idle) is waited for"
        finally:
            child.kill()
            child.wait()
        assert await successor.take_from_dead_holder(), "a holder on this host whose process is gone is replaced"
        assert int(successor.fence.token) > int(dead.fence.token)
        with pytest.raises(Fenced):  # whatever the dead one had in flight is fenced
            await RedisStore(client, ACCOUNT, dead.fence).save_record(record())


async def test_audit_asks_the_lease_holder_even_when_its_heartbeat_is_old(redis_url: str) -> None:
    """Issue 15: a long audit stalled the heartbeat and `posguard audit` started a second engine
    beside the service. The leader is judged by its lease now, not by a heartbeat's age."""
    import anyio

    from posguard.actors.store.health import HealthStatus
    from posguard.supervisor import operator
    from posguard.supervisor.config import parse_config

    config = parse_config(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "{ACCOUNT}"\n')
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        leader = Lease(client, ACCOUNT, ttl=60)
        assert await leader.acquire()
        store = RedisStore(client, ACCOUNT, leader.fence)
        await store.publish_status(HealthStatus(heartbeat_ms=1))  # a heartbeat from long ago

        async def answer_as_the_leader() -> None:
            with anyio.fail_after(30):
                while (requested := await client.hget(KEYS.health, "audit_requested")) is None:
                    await anyio.sleep(0.02)
            await store.publish_status(HealthStatus(audit_started=int(requested), audit_done=int(requested)))

        lines: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_as_the_leader)
            assert await operator.audit(config, None, dry_run=False, out=lines.append) == 0
        assert any(line.startswith("asking the running posguard") for line in lines), lines
        assert not any("holding it for one audit here" in line for line in lines), lines
        holder = await read_lease(client, ACCOUNT)
        assert holder is not None and holder.owner == leader.owner, "the leader keeps its lease"


async def test_audit_with_no_leader_holds_the_lease_for_its_run(redis_url: str) -> None:
    from posguard.supervisor import operator
    from posguard.supervisor.config import parse_config

    config = parse_config(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "{ACCOUNT}"\n')
    lines: list[str] = []
    assert await operator.audit(config, None, dry_run=False, out=lines.append) == 0
    assert any("holding it for one audit here" in line for line in lines), lines
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert await read_lease(client, ACCOUNT) is None, "released after the run"
        assert await client.get(KEYS.epoch) is not None, "it took a token: its writes were fenced"


class WriteLandsAfterReacquire:
    """The client, except that the first fenced write (already carrying the old token) is run by
    Redis only after another write of the same process re-acquired the lost lease: the order
    two writes in flight across a data loss can take."""

    def __init__(self, client: coredis.Redis[str], lease: Lease, script: str = _FENCED_WRITE) -> None:
        self.client, self.lease, self.script, self.held = client, lease, script, True

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)

    async def eval(self, script: str, keys: list[str], args: list[str]) -> object:
        if self.held and script == self.script:
            self.held = False
            await self.lease.fence.epoch_lost(self.lease.fence.token)  # the other write's re-acquire
        return await self.client.eval(script, keys, args)


async def test_a_write_in_flight_across_the_reacquire_is_sent_again_not_fenced(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        lease = Lease(client, ACCOUNT, ttl=10)
        assert await lease.acquire()
        before = int(lease.fence.token)
        await client.flushall()
        store = RedisStore(WriteLandsAfterReacquire(client, lease), ACCOUNT, lease.fence)  # type: ignore[arg-type]
        await store.save_record(record())
        assert not lease.fence.is_lost, lease.fence.why
        assert int(lease.fence.token) > before and await client.get(KEYS.epoch) == lease.fence.token
        assert await client.exists([KEYS.position("BTC/USDT:USDT")]) == 1


async def test_a_renew_in_flight_across_the_reacquire_keeps_the_lease(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        lease = Lease(client, ACCOUNT, ttl=10)
        assert await lease.acquire()
        before = int(lease.fence.token)
        await client.flushall()
        lease.client = WriteLandsAfterReacquire(client, lease, _RENEW)  # type: ignore[assignment]
        assert await lease.renew(), "the renew sent under the old token does not count as the lease lost"
        assert int(lease.fence.token) > before and not lease.fence.is_lost
        holder = await read_lease(client, ACCOUNT)
        assert holder is not None and holder.owner == lease.owner and holder.token == lease.fence.token
