"""Connecting to Redis with coredis, which runs on trio and asyncio alike (anyio-native).

The URL may carry an ACL user and password and use TLS (``rediss://``); it is never logged
whole: `redact_url` is what goes into messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions

__all__ = [
    "REDIS_CONNECTION_ERRORS",
    "RedisClient",
    "is_redis_failure",
    "is_redis_refusal",
    "open_redis",
    "ping",
    "redact_url",
]

RedisClient = coredis.Redis[str]
"""The client every store object is built on; callers outside the store only pass it along."""

REDIS_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (coredis.exceptions.ConnectionError,)
"""What a caller catches when "Redis did not answer" is a reason to wait and retry."""


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
    """Whether ``exc`` means Redis could not be reached (as opposed to a bug of ours)."""
    return isinstance(exc, (*REDIS_CONNECTION_ERRORS, TimeoutError, OSError))


def is_redis_refusal(exc: BaseException) -> bool:
    """Whether Redis answered but refused us: a wrong user or password (``WRONGPASS``), none
    given where one is needed (``NOAUTH``), or an ACL user without the permission (``NOPERM``).
    Waiting does not fix these; the configuration (``redis.url``) does."""
    return isinstance(exc, (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError))


async def ping(client: RedisClient) -> None:
    """One round trip: raises what connecting or authenticating raises."""
    await client.ping()
