"""Connecting to Redis with coredis, which runs on trio and asyncio alike (anyio-native).

The URL may carry an ACL user and password and use TLS (``rediss://``); it is never logged
whole: `redact_url` is what goes into messages.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions

__all__ = ["REDIS_CONNECTION_ERRORS", "REFUSAL_CODES", "RedisClient", "is_redis_failure", "open_redis", "redact_url"]

RedisClient = coredis.Redis[str]
"""The client every store object is built on; callers outside the store only pass it along."""

REDIS_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,  # also LOADING (BusyLoadingError) and protocol errors
    coredis.exceptions.ReadOnlyError,  # READONLY: a replica after a failover
    coredis.exceptions.UnblockedError,  # a blocked read cut short (its key deleted, CLIENT UNBLOCK)
    coredis.exceptions.StreamConsumerGroupError,  # NOGROUP: the group is gone (Redis lost data)
    coredis.exceptions.AuthenticationError,  # NOAUTH / WRONGPASS: the ACL changed under us
    coredis.exceptions.AuthorizationError,  # NOPERM
    coredis.exceptions.ClusterDownError,
    coredis.exceptions.TryAgainError,
    TimeoutError,
    OSError,
)
"""Error classes that mean "Redis did not do it, through no fault of ours": wait and retry.
Use `is_redis_failure`, which also knows the refusals coredis raises as a plain
``ResponseError`` (`REFUSAL_CODES`)."""

REFUSAL_CODES = frozenset({"OOM", "MISCONF", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "NOREPLICAS",
                           "NOAUTH", "NOPERM", "CLUSTERDOWN", "TRYAGAIN"})
"""Error codes of a server that refuses for now: out of memory under ``noeviction``, a failed
RDB save (``stop-writes-on-bgsave-error``), a long script, a replica or a loading dataset."""

_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[RedisClient]:
    client: RedisClient = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        yield client


def is_redis_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means "Redis unavailable": unreachable, timed out, or refusing for now
    (`REDIS_CONNECTION_ERRORS`, `REFUSAL_CODES`), as opposed to a bug of ours. A task group's
    ``ExceptionGroup`` counts only if every error in it does.

    The one rule for it: entries pause while it holds, stops on the venue stay, and everything
    resumes by itself when Redis answers (README, "When things go wrong")."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_redis_failure(inner) for inner in exc.exceptions)
    if isinstance(exc, REDIS_CONNECTION_ERRORS):
        return True
    if isinstance(exc, coredis.exceptions.ResponseError) and exc.args:
        message = _PIPELINE_PREFIX.sub("", str(exc.args[0]), count=1)
        return message.split(" ", 1)[0] in REFUSAL_CODES
    return False
