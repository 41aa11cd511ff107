"""`posguard run`: the production process. The engine, the intents stream, signals.

SIGINT or SIGTERM stops it gracefully: no new intents are taken, in-flight steps get
``supervisor.shutdown_grace`` seconds to finish (so every position they touched is left
protected), anything still in flight resumes from its Redis record at the next start, and the
process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from posguard.actors.store.client import RedisClient, RedisConnection, as_connection, open_redis, redact_url
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.health import HealthStatus
from posguard.actors.store.intent_stream import IntentStream
from posguard.actors.store.lease import Fenced, Lease, LeaseLost, Standby
from posguard.actors.store.positions import RedisStore
from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.config import Config, credentials_hint
from posguard.supervisor.engine import Engine, venue_label
from posguard.supervisor.intake import IntentIntake
from posguard.supervisor.leased_venue import LeasedVenue
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.startup import check_credentials, check_redis, serve_metrics

__all__ = ["EXIT_FENCED", "SIMULATED_VENUE_WARNING", "open_venue", "run_service", "wait_for_lease"]

EXIT_FENCED = 5
"""`posguard run` lost the account's lease or was fenced (another process owns the account
now): it stopped all venue action and exited; the leader carries on (README, exit codes)."""

log = logging.getLogger("posguard.service")

SIMULATED_VENUE_WARNING = (
    "SIMULATED VENUE (--simulated-venue): no order reaches any exchange; every position, fill and stop"
    " exists only inside this process and is gone when it stops. Never point real strategies at it."
)


@asynccontextmanager
async def open_venue(config: Config, credentials: ApiCredentials | None) -> AsyncIterator[Venue]:
    if config.venue.kind == "fake":
        from posguard.streams.simulated import FakeVenue

        async with FakeVenue(seed=config.demo.seed) as venue:
            yield venue
        return
    from posguard.supervisor.venues import open_ccxt_venue

    assert credentials is not None
    venue = open_ccxt_venue(config, credentials)
    try:
        yield venue
    finally:
        await venue.aclose()


async def run_service(config: Config, credentials: ApiCredentials | None, redis: RedisConnection | str) -> int:
    """Check Redis, the metrics port and the API credentials, in that order, then serve.
    Which venue `run` may use is decided before this (`check_run_venue`); a failure comes out
    of the task groups' wrapping at the command line (`explain_start_failure`)."""
    account = config.account.name
    label = venue_label(config.venue.kind)
    connection = as_connection(redis)
    log.warning("posguard run: account %s, venue %s, Redis %s", account, label, redact_url(connection.url))
    if label == "simulated":
        log.critical(SIMULATED_VENUE_WARNING)
    engines: list[Engine] = []
    leases: list[Lease] = []
    fenced: list[BaseException] = []
    try:
        async with anyio.create_task_group() as tg:
            # Signals first: a SIGTERM during the start-up checks stops posguard cleanly too.
            await tg.start(_stop_on_signal, engines, tg.cancel_scope, leases)
            async with open_redis(connection) as client:
                await check_redis(client, config)
                metrics = Metrics(config.venue.kind)
                serve_metrics(metrics, config)
                lease = Lease(client, account, ttl=config.lease.ttl)
                leases.append(lease)
                await wait_for_lease(lease, config)
                try:
                    await _lead(config, credentials, client, lease, metrics, label, engines)
                finally:
                    if not lease.fence.is_lost:
                        await _release(lease)
    except* (Fenced, LeaseLost) as group:
        fenced.append(group.exceptions[0])
    if fenced:
        print(f"posguard: fenced: {fenced[0]}; this process stopped all venue action and exits; the current"
              " leader owns the account (posguard status)", file=sys.stderr)
        return EXIT_FENCED
    log.warning("posguard stopped")
    return 0


async def wait_for_lease(lease: Lease, config: Config) -> None:
    """Be a hot standby until the lease is free, then take it. Meanwhile the only write is this
    process's own presence (`Standby`); the venue is not even connected."""
    if await lease.acquire() or await lease.take_from_dead_holder():
        return
    standby = Standby(lease.client, lease.keys.account, lease.owner)
    log.warning("account %s is led by another process: standing by for its lease (%s)", lease.keys.account,
                lease.keys.lease)
    try:
        while not (await lease.acquire() or await lease.take_from_dead_holder()):
            await standby.announce(config.lease.ttl)
            await anyio.sleep(min(config.lease.renew_every, 0.5))
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await standby.withdraw()
            except Exception as exc:  # noqa: BLE001 - its presence expires by itself
                log.warning("could not withdraw the standby presence (%s); it expires by itself", exc)


async def _release(lease: Lease) -> None:
    """Give the lease up at a graceful stop, so that a standby takes over at once. Best effort:
    a stop may have cut a Redis connection mid-command (a blocking read cancelled), and a lease
    not released only makes the standby wait out its ttl; it must not turn exit 0 into an error."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        try:
            await lease.release()
            return
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("could not release the lease (%s); a standby takes over when it expires", exc)


async def _lead(config: Config, credentials: ApiCredentials | None, client: RedisClient, lease: Lease,
                metrics: Metrics, label: str, engines: list[Engine]) -> None:
    """Holding the lease: keep it on a task of its own, and serve through the leased venue.
    `LeaseLost` or `Fenced` from the keeper ends everything here (no further venue action)."""
    log.warning("leading account %s since %s (fencing token %s)", lease.keys.account, time.strftime("%H:%M:%S"),
                lease.fence.token)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: lease.keep(renew_every=config.lease.renew_every))
        async with open_venue(config, credentials) as raw:
            venue = LeasedVenue(raw, lease, margin=config.lease.margin)
            await check_credentials(venue, config)  # type: ignore[arg-type]
            await _serve(config, venue, client, metrics, label, engines, lease)  # type: ignore[arg-type]
        tg.cancel_scope.cancel()


async def _serve(config: Config, venue: Venue, client: RedisClient, metrics: Metrics, label: str,
                 engines: list[Engine], lease: Lease) -> None:
    account = config.account.name
    store = RedisStore(client, account, lease.fence)
    await store.publish_status(HealthStatus(venue=label))
    engine = Engine(
        venue=venue,
        store=store,
        cache=RedisEventCache(client, account, lease.fence),
        settings=config.actor_settings(),
        supervisor=config.supervisor,
        audit=config.audit,
        risk=config.risk,
        metrics=metrics,
        stale_after=config.streams.stale_after,
        credentials_hint=credentials_hint(config),
    )
    intake = IntentIntake(client, engine, account=account, consumer=lease.owner,
                          max_age=config.intents.max_age, stream=IntentStream(client, account, lease.fence),
                          take_over=True)
    engines.append(engine)
    # Redis lost its data (the epoch gone, so the lease re-acquired by the fenced write path):
    # the same pause, alert and full audit as any data loss (README, "When things go wrong").
    lease.fence.on_data_lost.append(engine.watchdog.data_lost)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        await tg.start(intake.run)
        log.warning("posguard is running (pid %d); intents from %s", os.getpid(), intake.stream.keys.intents)


async def _stop_on_signal(engines: list[Engine], scope: anyio.CancelScope, leases: list[Lease], *,
                          task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """On SIGINT/SIGTERM: let the engine (once there is one) stop gracefully, then end."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.warning("%s received: stopping gracefully", signal.Signals(signum).name)
            for engine in engines:
                await engine.stop()
            # Released before the task groups are cancelled (which cuts Redis connections), so
            # that a standby takes over at once rather than after the ttl.
            for lease in leases:
                if not lease.fence.is_lost:
                    await _release(lease)
                    lease.value = ""  # released: the fallback in run_service has nothing left to do
            scope.cancel()
            return
