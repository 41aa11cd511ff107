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

from posguard.actors.store.client import RedisConnection, as_connection, open_redis, redact_url
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.positions import RedisStore
from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.config import Config, ConfigError
from posguard.supervisor.engine import Engine
from posguard.supervisor.intake import IntentIntake
from posguard.supervisor.metrics import Metrics

__all__ = ["open_venue", "run_service"]

log = logging.getLogger("posguard.service")


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
    """Run until a signal. A configuration the venue refuses at start (``risk`` symbols that
    are no market) is raised as the one `ConfigError`, not inside the task groups' wrapping,
    so the command line can say it in one line with exit code 2."""
    try:
        return await _serve(config, credentials, as_connection(redis))
    except BaseExceptionGroup as group:
        refused = _first(group, ConfigError)
        if refused is not None:
            raise refused from None
        raise


def _first(group: BaseExceptionGroup, kind: type[ConfigError]) -> ConfigError | None:
    for inner in group.exceptions:
        found = _first(inner, kind) if isinstance(inner, BaseExceptionGroup) else inner
        if isinstance(found, kind):
            return found
    return None


async def _serve(config: Config, credentials: ApiCredentials | None, redis: RedisConnection) -> int:
    account = config.account.name
    log.warning("posguard run: account %s, venue %s, Redis %s", account, config.venue.kind, redact_url(redis.url))
    async with open_venue(config, credentials) as venue, open_redis(redis) as client:
        metrics = Metrics(venue.name)
        if config.metrics.port:
            metrics.serve(config.metrics.port, config.metrics.bind)
        engine = Engine(
            venue=venue,
            store=RedisStore(client, account),
            cache=RedisEventCache(client, account),
            settings=config.actor_settings(),
            supervisor=config.supervisor,
            audit=config.audit,
            risk=config.risk,
            metrics=metrics,
            stale_after=config.streams.stale_after,
        )
        intake = IntentIntake(client, engine, account=account, consumer=f"{socket.gethostname()}-{account}",
                              max_age=config.intents.max_age)
        async with anyio.create_task_group() as tg:
            await tg.start(engine.run)
            await tg.start(intake.run)
            tg.start_soon(_stop_on_signal, engine, tg.cancel_scope)
            log.warning("posguard is running (pid %d); intents from %s", os.getpid(), intake.stream.keys.intents)
    log.warning("posguard stopped")
    return 0


async def _stop_on_signal(engine: Engine, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("%s received: stopping gracefully", signal.Signals(signum).name)
            await engine.stop()
            scope.cancel()
            return
