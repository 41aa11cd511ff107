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

A Redis Cluster (``RedisConnection.cluster``) is reached through coredis' cluster client,
seeded by the one node the URL names; the same password and TLS rules hold (the certificate
of every node must name the address that node announces). The client is opened with
``non_atomic_cross_slot=False``: a command that would touch two slots is refused by the
client instead of being split silently, so the rule that every store operation stays in its
account's slot (`keys.Keys`) is enforced on every call, not only in the tests.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions
import msgspec

__all__ = [
    "REDIS_CONNECTION_ERRORS",
    "ClusterUrlRefused",
    "RedisClient",
    "REFUSAL_CODES",
    "RedisConnection",
    "TlsOptions",
    "as_connection",
    "cluster_seed",
    "is_redis_failure",
    "is_redis_refusal",
    "open_redis",
    "ping",
    "redact_url",
    "tls_context",
]

log = logging.getLogger("posguard.redis")

RedisClient = coredis.Redis[str] | coredis.RedisCluster[str]
"""The client every store object is built on (a single server or a cluster: both speak the
same commands); callers outside the store only pass it along."""

REDIS_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,  # also LOADING (BusyLoadingError) and protocol errors
    coredis.exceptions.ReadOnlyError,  # READONLY: a replica after a failover
    coredis.exceptions.UnblockedError,  # a blocked read cut short (its key deleted, CLIENT UNBLOCK)
    coredis.exceptions.StreamConsumerGroupError,  # NOGROUP: the group is gone (Redis lost data)
    coredis.exceptions.AuthenticationError,  # NOAUTH / WRONGPASS: the ACL changed under us
    coredis.exceptions.AuthorizationError,  # NOPERM
    coredis.exceptions.ClusterDownError,
    coredis.exceptions.TryAgainError,
    # A command sent to every master (PING) that some did not answer: a master is down
    # (tests/test_redis_cluster.py); the cluster declares CLUSTERDOWN itself once it notices.
    coredis.exceptions.ClusterResponseError,
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
    cluster: bool = False
    """The URL names one node (a seed) of a Redis Cluster; the client finds the others."""

    def __repr__(self) -> str:  # the password never shows, not even in a traceback's locals
        password = "***" if self.password else None
        return (f"RedisConnection(url={redact_url(self.url)!r}, password={password}, tls={self.tls!r},"
                f" cluster={self.cluster})")

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
    if not connection.cluster:
        single: RedisClient = coredis.Redis.from_url(connection.url, decode_responses=True, **options)
        async with single:
            yield single
        return
    cluster = _cluster_client(connection.url, options)
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(cluster)
        except coredis.exceptions.RedisClusterError as exc:
            # The seed's own error (refused connection, refused password) is what the operator
            # must fix; coredis hides it under "cannot be connected" (`_node_error`).
            node = _node_error(exc)
            if node is exc:
                raise
            raise node from exc
        yield cluster


class ClusterUrlRefused(ValueError):
    """A URL that cannot name a cluster seed node; the message says what to change."""


def cluster_seed(url: str) -> tuple[str, int]:
    """The seed node's host and port. A cluster has one database (0) and no unix sockets:
    anything else in the URL is refused here, the one place that decides it (the config check
    calls this too, so ``posguard`` refuses at start-up with the key's path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ClusterUrlRefused("a Redis Cluster is reached over TCP: use a redis:// or rediss:// URL naming one"
                                " of its nodes")
    if not parts.hostname:
        raise ClusterUrlRefused("name one node of the cluster, e.g. redis://10.0.0.5:6379")
    if parts.path.strip("/") not in ("", "0"):
        raise ClusterUrlRefused(f"a Redis Cluster has only database 0; remove {parts.path!r} from the URL")
    if parts.query:
        raise ClusterUrlRefused("no query options with a cluster URL (TLS options have their own redis.* keys)")
    return parts.hostname, parts.port or 6379


def _cluster_client(url: str, options: dict[str, object]) -> coredis.RedisCluster[str]:
    host, port = cluster_seed(url)
    parts = urlsplit(url)
    password = options.pop("password", None) or parts.password
    ssl_context = options.pop("ssl_context", None)
    return coredis.RedisCluster(
        host, port,
        username=parts.username or None,
        password=password,  # type: ignore[arg-type]
        ssl=ssl_context is not None,
        ssl_context=ssl_context,  # type: ignore[arg-type]
        decode_responses=True,
        non_atomic_cross_slot=False,
    )


def is_redis_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means "Redis unavailable": unreachable, timed out, or refusing for now
    (`REDIS_CONNECTION_ERRORS`, `REFUSAL_CODES`), as opposed to a bug of ours. A task group's
    ``ExceptionGroup`` counts only if every error in it does.

    The one rule for it: entries pause while it holds, stops on the venue stay, and everything
    resumes by itself when Redis answers (README, "When things go wrong")."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_redis_failure(inner) for inner in exc.exceptions)
    exc = _node_error(exc)
    if type(exc) is coredis.exceptions.RedisClusterError:
        return True  # the cluster's layout could not be learnt (not every slot served): unavailable
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
    exc = _node_error(exc)
    return isinstance(exc, (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError))


def _node_error(exc: BaseException) -> BaseException:
    """What a node said, under the cluster client's own wrapping: it reports a seed it could
    not use as "Redis Cluster cannot be connected" with the node's error (a refused password,
    a refused connection) as the cause."""
    while type(exc) is coredis.exceptions.RedisClusterError and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


async def ping(client: RedisClient) -> None:
    """One round trip: raises what connecting or authenticating raises."""
    await client.ping()
