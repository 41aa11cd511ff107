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
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from posguard.actors.store.client import RedisClient, RedisConnection, as_connection, open_redis, redact_url
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.health import HealthStatus
from posguard.actors.store.positions import RedisStore
from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.config import Config, credentials_hint
from posguard.supervisor.engine import Engine, venue_label
from posguard.supervisor.intake import IntentIntake
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.startup import check_credentials, check_redis, serve_metrics

__all__ = ["SIMULATED_VENUE_WARNING", "open_venue", "run_service"]

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
    async with anyio.create_task_group() as tg:
        # Signals first: a SIGTERM during the start-up checks stops posguard cleanly too.
        await tg.start(_stop_on_signal, engines, tg.cancel_scope)
        async with open_redis(connection) as client:
            await check_redis(client, config)
            metrics = Metrics(config.venue.kind)
            serve_metrics(metrics, config)
            async with open_venue(config, credentials) as venue:
                await check_credentials(venue, config)
                await _serve(config, venue, client, metrics, label, engines)
    log.warning("posguard stopped")
    return 0


async def _serve(config: Config, venue: Venue, client: RedisClient, metrics: Metrics, label: str,
                 engines: list[Engine]) -> None:
    account = config.account.name
    store = RedisStore(client, account)
    await store.publish_status(HealthStatus(venue=label))
    engine = Engine(
        venue=venue,
        store=store,
        cache=RedisEventCache(client, account),
        settings=config.actor_settings(),
        supervisor=config.supervisor,
        audit=config.audit,
        risk=config.risk,
        metrics=metrics,
        stale_after=config.streams.stale_after,
        credentials_hint=credentials_hint(config),
    )
    intake = IntentIntake(client, engine, account=account, consumer=f"{socket.gethostname()}-{account}",
                          max_age=config.intents.max_age)
    engines.append(engine)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        await tg.start(intake.run)
        log.warning("posguard is running (pid %d); intents from %s", os.getpid(), intake.stream.keys.intents)


async def _stop_on_signal(engines: list[Engine], scope: anyio.CancelScope, *,
                          task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """On SIGINT/SIGTERM: let the engine (once there is one) stop gracefully, then end."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.warning("%s received: stopping gracefully", signal.Signals(signum).name)
            for engine in engines:
                await engine.stop()
            scope.cancel()
            return
