"""What `posguard run` checks before it takes any intent, and how a failure is told: one line,
with the exit code the command line documents, never a traceback.

Start-up failures used to surface as a 100-line ``ExceptionGroup`` from anyio's task groups
(coredis raises from its own). `explain_start_failure` finds the one error inside and says
what to fix, naming the config key or environment variable:

* a wrong Redis user or password, a metrics port in use: bad configuration, `ConfigError`
  (exit 2), naming ``redis.url`` / ``metrics.port``;
* Redis unreachable, or the venue refusing the API credentials: `ServiceUnavailable`
  (exit 3), naming ``redis.url`` / the credentials' environment variables.

The credentials are checked with one private call (the position list, which the audit needs
anyway) before the engine starts: a wrong key must stop posguard at once, not leave a process
that reports itself running and retries its audit forever.
"""

from __future__ import annotations

import errno
import logging
import random

import anyio

from posguard.actors.store.client import (
    REDIS_CONNECTION_ERRORS,
    RedisClient,
    is_redis_refusal,
    ping,
    redact_url,
)
from posguard.streams.backoff import Backoff
from posguard.streams.venue.errors import VenueAuthFailed, VenueUnavailable
from posguard.streams.venue.protocol import Venue
from posguard.supervisor.config import Config, ConfigError, credentials_hint
from posguard.supervisor.metrics import Metrics

__all__ = [
    "REDIS_CHECK_TIMEOUT",
    "ServiceUnavailable",
    "check_credentials",
    "check_redis",
    "explain_start_failure",
    "innermost",
    "serve_metrics",
]

log = logging.getLogger("posguard.service")

REDIS_CHECK_TIMEOUT = 10.0
"""Seconds the first Redis round trip may take before Redis counts as unreachable."""
_VENUE_RETRY = Backoff(initial=1.0, maximum=30.0)


class ServiceUnavailable(Exception):
    """A service posguard needs is missing, unreachable or refuses us (exit code 3). The
    message says what to fix and never carries a secret."""


def innermost(exc: BaseException) -> BaseException:
    """The error inside nested exception groups (the first, when several failed at once)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def explain_start_failure(exc: BaseException, config: Config) -> BaseException:
    """The error to report for ``exc``: a one-line `ConfigError` or `ServiceUnavailable` for
    what this module recognises, otherwise the innermost error itself."""
    leaf = innermost(exc)
    url = redact_url(config.redis.url)
    if isinstance(leaf, (ConfigError, ServiceUnavailable, BrokenPipeError)):
        return leaf  # a broken pipe is our reader leaving (``| head``), not Redis
    if isinstance(leaf, VenueAuthFailed):
        return ServiceUnavailable(f"{leaf}; {credentials_hint(config)}")
    if is_redis_refusal(leaf):
        return ConfigError(f"redis.url: Redis at {url} refused us ({leaf}); fix the user and password in redis.url")
    if isinstance(leaf, REDIS_CONNECTION_ERRORS):
        return _redis_unreachable(leaf, url)
    return leaf


def _redis_unreachable(leaf: BaseException, url: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"Redis at {url} is unreachable ({leaf or type(leaf).__name__}): "
                                  "start it, or fix redis.url")


async def check_redis(client: RedisClient, config: Config) -> None:
    """One round trip to Redis, bounded: connecting and authenticating fail here, not later
    inside the engine's task group."""
    try:
        with anyio.fail_after(REDIS_CHECK_TIMEOUT):
            await ping(client)
    except Exception as exc:  # noqa: BLE001 - coredis raises groups from its own task group
        leaf = innermost(exc)
        if isinstance(leaf, (TimeoutError, OSError)):  # here, and only here, these are Redis's
            raise _redis_unreachable(leaf, redact_url(config.redis.url)) from None
        raise explain_start_failure(exc, config) from None


def serve_metrics(metrics: Metrics, config: Config) -> None:
    """Start the metrics endpoint if configured; a port that cannot be bound is the config's."""
    port, bind = config.metrics.port, config.metrics.bind
    if not port:
        return
    try:
        metrics.serve(port, bind)
    except OSError as exc:
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise ConfigError(f"metrics.port: {bind}:{port} {why}; choose another port (0 turns the endpoint off)"
                          " or stop what holds it") from None


async def check_credentials(venue: Venue, config: Config, rng: random.Random | None = None) -> None:
    """One private call before anything else: refused credentials stop the start
    (`ServiceUnavailable`, naming the environment variables); a venue that does not answer is
    asked again with backoff, as the markets are."""
    delays = _VENUE_RETRY.delays(rng or random.Random())
    while True:
        try:
            await venue.fetch_positions()
            return
        except VenueAuthFailed as exc:
            raise ServiceUnavailable(f"{exc}; {credentials_hint(config)}") from None
        except VenueUnavailable as exc:
            delay = next(delays)
            log.warning("checking the API credentials: the venue did not answer (%s); retrying in %.1f s", exc, delay)
            await anyio.sleep(delay)
