"""Connecting to Redis with coredis, which runs on trio and asyncio alike (anyio-native).

The URL may carry an ACL user and password and use TLS (``rediss://``); it is never logged
whole: `redact_url` is what goes into messages. The password may also come separately (from
the environment, ``redis.password_env``), in `RedisConnection.password`, which no repr shows.

TLS is verified the way a browser does it: the server's certificate must chain to a trusted CA
(the system's, or ``redis.ssl_ca_certs``) *and* name the host in the URL. coredis' own default
checks no hostname, so any certificate a trusted CA signed for any name would be taken, and
with it the password and the power to forge records and intents; `tls_context` is the one
place that decides, and turning the checks off (``redis.tls_insecure_skip_verify``) is said
loudly in the log every time a connection is opened that way.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions
import msgspec

__all__ = [
    "REDIS_CONNECTION_ERRORS",
    "RedisClient",
    "REFUSAL_CODES",
    "RedisConnection",
    "TlsOptions",
    "as_connection",
    "is_redis_failure",
    "is_redis_refusal",
    "open_redis",
    "ping",
    "redact_url",
    "tls_context",
]

log = logging.getLogger("posguard.redis")

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
    coredis.exceptions.WrongTypeError,  # WRONGTYPE: a key of ours holds another type (hand-edited)
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


class TlsOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a ``rediss://`` connection checks the server (and, optionally, shows itself)."""

    ca_certs: str = ""
    """A CA bundle file or directory to trust instead of the system's; empty: the system's."""
    certfile: str = ""
    keyfile: str = ""
    """A client certificate and its key, for servers that ask for one (``tls-auth-clients``)."""
    insecure_skip_verify: bool = False
    """Accept any certificate for any name. Only for a throwaway test setup."""


class RedisConnection(msgspec.Struct, frozen=True, kw_only=True):
    """Where Redis is and how to log in: the URL, a password kept apart from it, TLS options."""

    url: str
    password: str | None = None
    tls: TlsOptions = TlsOptions()

    def __repr__(self) -> str:  # the password never shows, not even in a traceback's locals
        password = "***" if self.password else None
        return f"RedisConnection(url={redact_url(self.url)!r}, password={password}, tls={self.tls!r})"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """The SSL context for a ``rediss://`` connection: certificate and hostname checked,
    unless the configuration explicitly says not to (which is logged as a warning)."""
    context = ssl.create_default_context()
    if tls.ca_certs:
        where = "capath" if os.path.isdir(tls.ca_certs) else "cafile"
        context.load_verify_locations(**{where: tls.ca_certs})
    if tls.certfile:
        context.load_cert_chain(certfile=tls.certfile, keyfile=tls.keyfile or None)
    if tls.insecure_skip_verify:
        log.warning("redis.tls_insecure_skip_verify = true: the Redis server's certificate and hostname are NOT"
                    " checked; anyone on the path can read the password and forge records and intents")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def as_connection(target: RedisConnection | str) -> RedisConnection:
    """A bare URL is a connection with no separate password and the default (verified) TLS."""
    return target if isinstance(target, RedisConnection) else RedisConnection(url=target)


@asynccontextmanager
async def open_redis(target: RedisConnection | str) -> AsyncIterator[RedisClient]:
    """A connected client for ``target`` (see `as_connection`)."""
    connection = as_connection(target)
    options: dict[str, object] = {}
    if connection.password:
        options["password"] = connection.password
    if urlsplit(connection.url).scheme == "rediss":
        options["ssl_context"] = tls_context(connection.tls)
    client: RedisClient = coredis.Redis.from_url(connection.url, decode_responses=True, **options)
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


def is_redis_refusal(exc: BaseException) -> bool:
    """Whether Redis answered but refused us: a wrong user or password (``WRONGPASS``), none
    given where one is needed (``NOAUTH``), or an ACL user without the permission (``NOPERM``).
    Waiting does not fix these; the configuration (``redis.url``) does."""
    return isinstance(exc, (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError))


async def ping(client: RedisClient) -> None:
    """One round trip: raises what connecting or authenticating raises."""
    await client.ping()
