"""posguard on a Redis Cluster: a local three-master cluster the tests start
(`tests.redis_cluster`), reached through coredis' cluster client (``redis.cluster = true``).

The ground truth is the cluster's own: which slot a key is in (``CLUSTER KEYSLOT``), which
master serves it (``CLUSTER NODES``) and which keys each master holds (``SCAN`` per node).
Two accounts are chosen so that their hash tags land on different masters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from posguard.actors.findings import Finding
from posguard.actors.intents import CloseIntent, IntentRecord
from posguard.actors.records import PositionRecord, Protection, State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import RedisConnection, open_redis
from posguard.actors.store.console import OperatorConsole
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.health import HealthStatus, OperatorRequests, StreamHealth
from posguard.actors.store.intent_stream import IntentStream
from posguard.actors.store.keys import Keys, delete_account_keys
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import Execution, Heartbeat, Order, Position, StreamStatus
from posguard.supervisor import operator
from posguard.supervisor.config import parse_config, redis_connection
from tests.clock import IOAwareMockClock
from tests.redis_cluster import LocalCluster
from tests.support import assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
REPO = Path(__file__).resolve().parents[1]


def connection(cluster: LocalCluster) -> RedisConnection:
    return RedisConnection(url=cluster.url, cluster=True)


def accounts_on_two_masters(cluster: LocalCluster) -> tuple[str, str]:
    """Two account names whose hash tags the cluster serves from two different masters."""
    by_master: dict[int, str] = {}
    for name in ("alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"):
        by_master.setdefault(cluster.master_of_key(Keys(name).journal), name)
        if len(by_master) == 2:
            first, second = by_master.values()
            return first, second
    raise AssertionError("no two of the candidate names land on two masters")


def keys_by_node(cluster: LocalCluster) -> dict[int, set[str]]:
    """Every key each master holds (SCAN on the node itself: the cluster's truth)."""
    return {port: set(filter(None, cluster.cli(port, "--scan").splitlines())) for port in cluster.ports}


async def exercise_every_store_operation(client: Any, account: str) -> dict[str, Any]:
    """Call every operation of every store object once (records, journal, intents stream and
    its consumer group, replies, health hash, event cache, operator reads), as the engine and
    the operator do; returns what was read back."""
    store = RedisStore(client, account)
    stream = IntentStream(client, account)
    cache = RedisEventCache(client, account)
    console = OperatorConsole(client, account)
    record = PositionRecord(symbol=BTC, intent_id=f"{account}-1", state=State.SUBMITTING, side="buy", qty=0.01,
                            stop_price=58_800.0, client_order_id=f"pg{account}-e")
    accepted = IntentRecord(intent_id=f"{account}-1", action="open", symbol=BTC, status="accepted")
    await store.save_intent(accepted)
    record.transition(State.SUBMITTED)
    await store.save_record(record, "sent")
    await store.append_journal(record, "a guard's note")
    done = msgspec.structs.replace(accepted, status="done", outcome="submitted")
    await store.save_record(record, "settled", replies=[done])
    await store.push_reply(msgspec.structs.replace(done, status="duplicate"))
    await store.append_alert(BTC, "look at this")
    await store.append_audit(Finding(symbol=BTC, kind="orphan", seen="a test", action="none"))
    await store.publish_status(HealthStatus(venue="simulated"))
    await store.publish_streams({"positions": StreamHealth(connected=True, last_event_ms=1)})
    await cache.write([
        StreamStatus(topic="orders", connected=True, reason="connected", ts_ms=1),
        Heartbeat(topic="positions", ts_ms=2),
        Position(symbol=BTC, side="long", size=0.01, entry_price=60_000.0, stop_price=58_800.0, ts_ms=3),
        Order(symbol=BTC, order_id="1", client_order_id=f"pg{account}-e", side="buy", kind="market", qty=0.01,
              filled=0.01, avg_price=60_000.0, status="filled", reduce_only=False, stop_price=None, ts_ms=4),
        Execution(symbol=BTC, exec_id="x1", order_id="1", client_order_id=f"pg{account}-e", side="buy", qty=0.01,
                  price=60_000.0, ts_ms=5),
    ])
    created = await stream.ensure_group()
    entry_id = await stream.add({"intent_id": f"{account}-2", "action": "close", "symbol": BTC})
    # A blocking read over the cluster client (XREADGROUP BLOCK): it returns the entry.
    read = await stream.read(f"{account}-consumer", ">", count=10, block_ms=1000)
    pending = await stream.read(f"{account}-consumer", "0", count=10, block_ms=None)
    reclaimed = await stream.reclaim(f"{account}-other", min_idle_ms=0, count=10)
    await stream.ack(entry_id)
    trimmed = await stream.trim(keep=10)
    # BLPOP over the cluster client: the reply list's first reply comes back.
    first_reply = await stream.next_reply(f"{account}-1", timeout_s=1)
    await console.request(OperatorRequests(audit_requested=7))
    return {
        "record": await store.load_record(BTC),
        "records": await store.list_records(),
        "scan": await console.records(),
        "intent": await store.load_intent(f"{account}-1"),
        "accepted": await store.still_accepted([f"{account}-1", "nobody"]),
        "health": await store.read_health(),
        "console_health": await console.health(),
        "findings": await console.audit_findings_since(0),
        "journal": [e async for e in console.tail("journal", count=10, follow=False)],
        "created": created,
        "read": read, "pending": pending, "reclaimed": reclaimed, "trimmed": trimmed,
        "entries": await stream.entries(),
        "first_reply": first_reply,
        "replies_left": await stream.replies_waiting(f"{account}-1"),
    }


@pytest.mark.asyncio_backend
async def test_every_store_operation_stays_in_its_accounts_slot_on_two_masters(redis_cluster: LocalCluster) -> None:
    first, second = accounts_on_two_masters(redis_cluster)
    masters = {name: redis_cluster.master_of_key(Keys(name).journal) for name in (first, second)}
    assert masters[first] != masters[second]
    async with open_redis(connection(redis_cluster)) as client:
        results = {name: await exercise_every_store_operation(client, name) for name in (first, second)}

    for name, got in results.items():
        assert got["record"] is not None and got["record"].state is State.SUBMITTED
        assert [r.symbol for r in got["records"]] == [BTC] and not got["scan"].bad
        assert got["intent"].status == "done" and got["accepted"] == set()
        assert got["health"].status.venue == "simulated" and got["health"].stream("positions").connected is True
        assert got["health"].stream("orders").connected is True  # the event cache's write
        assert [f.fields["kind"] for f in got["findings"]] == ["orphan"]
        assert [e.fields["note"] for e in got["journal"]] == ["sent", "a guard's note", "settled"]
        assert got["created"] is True
        assert [e.fields["intent_id"] for e in got["read"]] == [f"{name}-2"]
        assert [e.entry_id for e in got["pending"]] == [e.entry_id for e in got["read"]]
        assert [e.entry_id for e in got["reclaimed"]] == [e.entry_id for e in got["read"]]
        assert got["trimmed"] == 0 and len(got["entries"]) == 1
        assert got["first_reply"]["status"] == "accepted" and got["replies_left"] == 2

    # The cluster's truth: every key either account wrote is in that account's one slot, on
    # that account's master, and named with its prefix; nothing else was written anywhere.
    held = keys_by_node(redis_cluster)
    for name in (first, second):
        prefix = Keys(name).prefix + ":"
        slot = redis_cluster.keyslot(Keys(name).journal)
        mine = {key for keys in held.values() for key in keys if key.startswith(prefix)}
        assert mine and mine <= held[masters[name]], f"{name}'s keys are not all on its master"
        assert {redis_cluster.keyslot(key) for key in mine} == {slot}
    everything = set().union(*held.values())
    assert all(key.startswith((Keys(first).prefix + ":", Keys(second).prefix + ":")) for key in everything), (
        sorted(k for k in everything if not k.startswith("posguard:{")))

    # delete_account_keys removes one account and leaves the other whole.
    async with open_redis(connection(redis_cluster)) as client:
        removed = await delete_account_keys(client, first)
    after = set().union(*keys_by_node(redis_cluster).values())
    assert removed > 0 and not any(k.startswith(Keys(first).prefix) for k in after)
    assert {k for k in everything if k.startswith(Keys(second).prefix)} == after


@pytest.mark.asyncio_backend
async def test_a_command_that_would_cross_slots_is_refused_not_split(redis_cluster: LocalCluster) -> None:
    """The client is opened with ``non_atomic_cross_slot=False``: a multi-key command over two
    accounts fails loudly instead of being split into per-node commands (the rule the store
    keeps is enforced on every call), and a MULTI over two slots is refused before it is sent."""
    first, second = accounts_on_two_masters(redis_cluster)
    async with open_redis(connection(redis_cluster)) as client:
        with pytest.raises(Exception, match="(?i)slot"):
            await client.delete([Keys(first).health, Keys(second).health])
        with pytest.raises(Exception, match="(?i)slot"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(Keys(first).health, {"a": "1"})
                pipe.hset(Keys(second).health, {"a": "1"})
    assert set().union(*keys_by_node(redis_cluster).values()) == set(), "nothing of the refused MULTI was written"


async def test_an_engine_on_the_cluster_opens_protects_and_closes(
    clock: IOAwareMockClock, redis_cluster: LocalCluster
) -> None:
    first, _second = accounts_on_two_masters(redis_cluster)
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})
    settings = ActorSettings(account=first)
    async with FakeVenue(seed=11, knobs=knobs) as venue, \
            running_engine(connection(redis_cluster), venue, clock, settings=settings) as engine:
        await wait_streams_healthy(engine)
        opened = [await (await engine.submit(open_intent(f"c-{s[:3]}", symbol=s))).wait() for s in (BTC, ETH)]
        assert [r.outcome for r in opened] == ["protected", "protected"]
        for symbol in (BTC, ETH):
            assert venue.truth.position(symbol) is not None and venue.truth.is_protected(symbol)
        closed = await (await engine.submit(CloseIntent(intent_id="c-close", symbol=BTC))).wait()
        assert closed.status == "done" and closed.outcome == "closed"
        with anyio.fail_after(10):
            btc = await engine.store.load_record(BTC)
            eth = await engine.store.load_record(ETH)
        assert btc is not None and btc.state is State.CLOSED
        assert eth is not None and eth.state is State.PROTECTED and eth.protection is Protection.ATTACHED_CONFIRMED
        assert venue.truth.position(BTC) is None and venue.truth.position(ETH) is not None
        assert_never_falsely_closed(btc, venue)

    # Every key it wrote is on its account's master, in its slot.
    held = keys_by_node(redis_cluster)
    master = redis_cluster.master_of_key(Keys(first).journal)
    assert Keys(first).position(BTC) in held[master] and Keys(first).journal in held[master]
    assert all(not keys for port, keys in held.items() if port != master)


@pytest.mark.asyncio_backend
async def test_posguard_status_reads_the_cluster(redis_cluster: LocalCluster) -> None:
    first, _second = accounts_on_two_masters(redis_cluster)
    config = parse_config(f'[redis]\nurl = "{redis_cluster.url}"\ncluster = true\n[account]\nname = "{first}"\n')
    assert redis_connection(config).cluster is True
    async with open_redis(redis_connection(config)) as client:
        await RedisStore(client, first).save_record(PositionRecord(
            symbol=BTC, intent_id="s-1", state=State.PROTECTED, side="buy", qty=0.01, filled_qty=0.01,
            entry_price=60_000.0, stop_price=58_800.0, client_order_id="pgs-e", protection=Protection.ATTACHED_CONFIRMED,
        ))
    lines: list[str] = []
    assert await operator.status(config, out=lines.append) == 0
    text = "\n".join(lines)
    assert f"account {first}: 1 position records (1 live)" in text
    assert "BTC/USDT:USDT" in text and "protected" in text



def test_every_key_name_of_an_account_is_in_its_one_slot(redis_cluster: LocalCluster) -> None:
    """Walks `Keys`: every key name it can make (each property, each method with an argument)
    hashes, by the cluster's own CLUSTER KEYSLOT, to the account's slot, so no MULTI, pipeline
    or script over one account's keys can cross slots."""
    import inspect

    keys = Keys("walk")
    names: list[str] = []
    for attr, member in inspect.getmembers(type(keys)):
        if attr.startswith("_") or attr == "prefix":
            continue
        if isinstance(member, property):
            names.append(getattr(keys, attr))
        elif inspect.isfunction(member):
            names.append(getattr(keys, attr)("BTC/USDT:USDT{not-a-tag}"))
    assert len(names) >= 12, names  # every key kind of the README's schema
    slot = redis_cluster.keyslot(keys.prefix)
    assert {name: redis_cluster.keyslot(name) for name in names} == {name: slot for name in names}


@pytest.mark.parametrize(("url", "refusal"), [
    ("unix:///run/redis.sock", "redis.url: with redis.cluster = true, a Redis Cluster is reached over TCP"),
    ("redis://10.0.0.5:6379/2", "redis.url: with redis.cluster = true, a Redis Cluster has only database 0"),
    ("", "redis.cluster: set redis.url to one node of the cluster"),
])
def test_a_cluster_url_that_cannot_work_is_refused_with_the_key(url: str, refusal: str) -> None:
    from posguard.supervisor.config import ConfigError, check_config

    config = parse_config(f'[redis]\nurl = "{url}"\ncluster = true\n')
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    assert str(caught.value).startswith(refusal), caught.value


def test_a_cluster_keeps_the_password_and_tls_rules() -> None:
    """``rediss://`` with the CA options and a password from the environment pass for a cluster
    too, and the connection carries them (TLS checks are `tls_context`'s, unchanged)."""
    config = parse_config('[redis]\nurl = "rediss://10.0.0.5:6380"\ncluster = true\npassword_env = "PG_REDIS_PW"\n'
                          'tls_insecure_skip_verify = false\n')
    from posguard.supervisor.config import check_config

    check_config(config)
    conn = redis_connection(config, {"PG_REDIS_PW": "s3cret"})
    assert conn.cluster and conn.password == "s3cret" and "s3cret" not in repr(conn)


@pytest.mark.asyncio_backend
async def test_a_master_that_goes_down_is_redis_unavailable_for_its_accounts() -> None:
    """A master of the cluster stops: its accounts' writes fail as "Redis unavailable"
    (`is_redis_failure`: entries pause, stops stay, everything resumes when it answers), and so
    does a whole-cluster round trip (PING, the start-up check), never as a bug of ours. Its own
    cluster: the session's one stays whole."""
    from posguard.actors.store.client import is_redis_failure, ping
    from tests.redis_cluster import start_cluster

    with start_cluster() as cluster:
        first, second = accounts_on_two_masters(cluster)
        victim = next(node for node in cluster.nodes if node.port == cluster.master_of_key(Keys(first).journal))
        async with open_redis(connection(cluster)) as client:
            await RedisStore(client, first).publish_status(HealthStatus(venue="simulated"))
            victim.halt()
            failures: dict[str, BaseException | None] = {}
            for what, call in (("write", lambda: RedisStore(client, first).publish_status(HealthStatus(pid=1))),
                               ("ping", lambda: ping(client))):
                try:
                    with anyio.fail_after(30):
                        await call()
                    failures[what] = None
                except Exception as exc:  # noqa: BLE001 - judged below
                    failures[what] = exc
            try:  # the other master's account: served until the cluster itself says CLUSTERDOWN
                await RedisStore(client, second).publish_status(HealthStatus(pid=2))
            except Exception as exc:  # noqa: BLE001
                assert is_redis_failure(exc), repr(exc)
    assert all(exc is not None for exc in failures.values()), failures
    assert {what: is_redis_failure(exc) for what, exc in failures.items() if exc} == {"write": True, "ping": True}, (
        {what: repr(exc) for what, exc in failures.items()})


@pytest.mark.asyncio_backend
async def test_a_cluster_with_a_password_takes_it_from_the_connection_and_refuses_without() -> None:
    """The password rules hold on a cluster: the one kept apart from the URL
    (``redis.password_env``) logs every node in; none, or a wrong one, is a refusal
    (`is_redis_refusal`: exit 2 naming redis.url at start), not an outage."""
    from posguard.actors.store.client import is_redis_refusal, ping
    from posguard.supervisor.startup import innermost
    from tests.redis_cluster import start_cluster

    with start_cluster(password="cluster-pw-81") as cluster:
        first, second = accounts_on_two_masters(cluster)
        async with open_redis(RedisConnection(url=cluster.url, password="cluster-pw-81", cluster=True)) as client:
            await ping(client)
            for name in (first, second):  # both masters, so every node took the password
                await RedisStore(client, name).publish_status(HealthStatus(venue="simulated"))
                assert (await RedisStore(client, name).read_health()).status.venue == "simulated"
        for password in (None, "wrong"):
            with pytest.raises(Exception) as caught:  # noqa: PT011 - judged below
                with anyio.fail_after(30):
                    async with open_redis(RedisConnection(url=cluster.url, password=password, cluster=True)) as client:
                        await ping(client)
            assert is_redis_refusal(innermost(caught.value)), repr(caught.value)


def test_posguard_status_on_a_cluster_it_cannot_use_says_why_in_one_line(tmp_path: Path) -> None:
    """Unreachable seed: exit 3 "unreachable"; a refused password: exit 2 naming redis.url.
    Never coredis' "Redis Cluster cannot be connected" traceback (seen before `_node_error`)."""
    from posguard.supervisor.redis_server import free_port
    from tests.redis_cluster import start_cluster

    def status(url: str, env: dict[str, str]) -> tuple[int, list[str]]:
        config = tmp_path / "config.toml"
        config.write_text(f'[redis]\nurl = "{url}"\ncluster = true\npassword_env = "PG_TEST_REDIS_PW"\n')
        done = subprocess.run([sys.executable, "-m", "posguard", "--config", str(config), "status"],
                              cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        return done.returncode, [line for line in done.stderr.splitlines() if "Retry attempt" not in line]

    code, lines = status(f"redis://127.0.0.1:{free_port()}", {"PG_TEST_REDIS_PW": "x"})
    assert code == 3 and len(lines) == 1 and "is unreachable" in lines[0] and "redis.url" in lines[0], lines
    with start_cluster(password="cluster-pw-82") as cluster:
        code, lines = status(cluster.url, {"PG_TEST_REDIS_PW": "wrong-pw-5"})
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("posguard: invalid configuration: redis.url: Redis at") and "refused us" in lines[0]
        assert "wrong-pw-5" not in lines[0]
        code, lines = status(cluster.url, {"PG_TEST_REDIS_PW": "cluster-pw-82"})
        assert code == 0 and lines == [], lines


async def test_the_lease_and_its_fenced_writes_work_on_the_cluster(redis_cluster: LocalCluster) -> None:
    """The fencing script runs where the account's slot lives: a holder writes, and once another
    process took the lease the stale holder's write is refused with nothing of it landing."""
    from posguard.actors.store.lease import Fenced, Lease, read_lease

    account = "fenced"
    keys = Keys(account)
    record = PositionRecord(symbol="BTC/USDT:USDT", state=State.SUBMITTING, side="buy", qty=0.01,
                            intent_id="i-1", client_order_id="pg-i-1", stop_price=50_000.0)
    async with open_redis(connection(redis_cluster)) as client:
        old = Lease(client, account, ttl=10)
        assert await old.acquire()
        holder = await read_lease(client, account)
        assert holder is not None and holder.token == old.fence.token
        await RedisStore(client, account, old.fence).save_record(record)
        assert await client.exists([keys.position(record.symbol)]) == 1
        await client.delete([keys.lease])  # its lease ran out ...
        new = Lease(client, account, ttl=10)
        assert await new.acquire()  # ... and another process took it, with a higher token
        assert int(new.fence.token) > int(old.fence.token)
        journal_before = await client.xlen(keys.journal)
        with pytest.raises(Fenced):
            await RedisStore(client, account, old.fence).save_record(
                PositionRecord(symbol="ETH/USDT:USDT", state=State.SUBMITTING, side="buy", qty=0.1,
                               intent_id="i-2", client_order_id="pg-i-2", stop_price=2_000.0))
        assert await client.exists([keys.position("ETH/USDT:USDT")]) == 0
        assert await client.xlen(keys.journal) == journal_before
        assert await new.renew() and not await old.renew()
        await new.release()
        assert await read_lease(client, account) is None
