"""config.toml, decoded into typed structs; every mistake reported with the key's path.

A trading system must not start on a config it half understood: unknown keys, wrong types and
out-of-range values stop it at once (exit code 2) with the key and what was expected. API keys
and secrets are read from environment variables only, never from the file, and never printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit

import msgspec

from posguard.actors.settings import ActorSettings, ProtectionSettings, VerificationSettings
from posguard.actors.store.client import ClusterUrlRefused, RedisConnection, TlsOptions, cluster_seed
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, ConfigRefused
from posguard.streams.units import Seconds
from posguard.supervisor.risk import RiskLimits
from posguard.supervisor.supervision import AuditSettings, SupervisorSettings

__all__ = [
    "AccountConfig",
    "AccountEntry",
    "FleetConfig",
    "account_credential_envs",
    "select_account",
    "Config",
    "ConfigError",
    "DemoConfig",
    "IntentsConfig",
    "LeaseConfig",
    "LogConfig",
    "MetricsConfig",
    "RedisConfig",
    "StreamsConfig",
    "VenueConfig",
    "ccxt_venue_config",
    "check_config",
    "check_run_venue",
    "credentials_hint",
    "load_config",
    "load_secrets",
    "parse_config",
    "redis_connection",
]

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
SECRET_WORDS = ("key", "secret", "password", "passphrase", "token")


class ConfigError(Exception):
    """Invalid configuration. The message names the key and says what was expected."""


class AccountConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name = "main"


class AccountEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One account of several (``[accounts.NAME]``), run by its own process
    (``posguard run --account NAME``, or ``posguard fleet`` for all of them)."""

    api_key_env: str = ""
    api_secret_env: str = ""
    """Environment variables holding this account's API key and secret; empty: derived from
    the name (`account_credential_envs`), never another account's."""
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """This account's process's metrics port; unset: ``metrics.port`` (which two accounts
    can share only when it is 0, off)."""


def account_credential_envs(name: str, entry: AccountEntry) -> tuple[str, str]:
    """The account's own environment variables: the configured ones, else
    ``POSGUARD_<NAME>_API_KEY`` / ``POSGUARD_<NAME>_API_SECRET`` (upper case, ``-`` as ``_``),
    so that two accounts never read the same variable unless told to in so many words."""
    stem = "POSGUARD_" + name.upper().replace("-", "_")
    return entry.api_key_env or f"{stem}_API_KEY", entry.api_secret_env or f"{stem}_API_SECRET"


class FleetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`posguard fleet`: one ``posguard run --account NAME`` child per ``[accounts.NAME]``."""

    max_accounts: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    """At most this many accounts (children) per fleet; more configured is refused at start."""
    restart_delay: Annotated[float, msgspec.Meta(gt=0, le=600)] = 1.0
    """Seconds before a child that died is started again; doubles at each death in a row."""
    restart_delay_max: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    healthy_after: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    """A child that ran this long before it died starts its next backoff from restart_delay."""

    def __post_init__(self) -> None:
        if self.restart_delay_max < self.restart_delay:
            raise ValueError("restart_delay_max: must be at least restart_delay")


class VenueConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["fake", "bybit", "binanceusdm"] = "fake"
    testnet: bool = True
    rest_url: str = ""
    ws_url: str = ""
    api_key_env: str = "POSGUARD_API_KEY"
    api_secret_env: str = "POSGUARD_API_SECRET"
    resend_grace: Seconds | None = None
    """binanceusdm only (`CcxtVenueConfig.resend_grace`): how long an entry the venue calls
    unknown must go without any trace before it is sent again; at least 60."""


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = ""
    password_env: str = ""
    """Name of an environment variable holding the Redis password (instead of the URL's)."""
    ssl_ca_certs: str = ""
    """For rediss://: a CA bundle (file or directory) to trust instead of the system's."""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    """For rediss://: a client certificate and its key, if the server asks for one."""
    tls_insecure_skip_verify: bool = False
    """For rediss://: check neither the certificate nor the hostname (logged as a warning)."""
    cluster: bool = False
    """redis.url names one node (a seed) of a Redis Cluster; posguard finds the others. Every
    key of an account shares its hash tag (one slot), so an account lives on one master."""


STREAMS_KEYS = frozenset({"listen_key_keepalive", "max_connection_age"})
"""`CcxtVenueConfig` fields that come from ``[streams]``, so a refusal names that section."""


class StreamsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stale_after: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    listen_key_keepalive: Annotated[float, msgspec.Meta(ge=60, le=3000)] = 1800.0
    """binanceusdm: seconds between listen key extensions (`CcxtVenueConfig.listen_key_keepalive`).
    Binance drops a key 60 minutes after its last extension; at most 3000 leaves ten minutes
    for retries, at least 60 keeps the keepalive from flooding the venue."""
    max_connection_age: Annotated[float, msgspec.Meta(ge=0, le=86_400)] | None = None
    """Seconds after which a private stream connection is replaced (reported down and up, then
    the REST sweep) before the venue closes it (`CcxtVenueConfig.max_connection_age`). Unset:
    the venue's own rule (binanceusdm 23 h, Binance closing connections at 24 h; bybit none);
    0: never. On binanceusdm it must be below 86400."""


class IntentsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_age: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    """Seconds an open intent without ``expires_ms`` may wait after Redis received it; an
    older one is refused as ``stale`` before anything is sent (at most a day)."""


class LogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    bind: str = "127.0.0.1"


class LeaseConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One owner per account (`posguard.actors.store.lease`; README, "One owner per account")."""

    ttl: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0
    """Seconds the lease lasts unrenewed: a dead leader's standby takes over after at most this."""
    renew_every: Annotated[float, msgspec.Meta(gt=0, le=100)] = 2.0
    """Seconds between renewals, on a task of their own."""
    margin: Annotated[float, msgspec.Meta(ge=0, le=100)] = 3.0
    """A venue action is sent only while the lease is ours for at least this many more seconds
    (by the local clock, from the last renewal): time for the request to reach the venue."""

    def __post_init__(self) -> None:
        if self.margin >= self.ttl:
            raise msgspec.ValidationError(f"lease.margin: {self.margin:g} must be below lease.ttl ({self.ttl:g})")
        if self.renew_every >= self.ttl - self.margin:
            raise msgspec.ValidationError(
                f"lease.renew_every: {self.renew_every:g} must be below lease.ttl - lease.margin"
                f" ({self.ttl - self.margin:g}), or the lease would be unusable between renewals")


class DemoConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    positions: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    symbols: Annotated[int, msgspec.Meta(ge=1, le=8)] = 5
    seed: int = 42
    hold_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.5


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: AccountConfig = AccountConfig()
    accounts: dict[Name, AccountEntry] = {}
    """Several accounts from one file (``[accounts.NAME]``); empty: the one of ``[account]``."""
    fleet: FleetConfig = FleetConfig()
    venue: VenueConfig = VenueConfig()
    redis: RedisConfig = RedisConfig()
    streams: StreamsConfig = StreamsConfig()
    verification: VerificationSettings = VerificationSettings()
    protection: ProtectionSettings = ProtectionSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    audit: AuditSettings = AuditSettings()
    risk: RiskLimits = RiskLimits()
    intents: IntentsConfig = IntentsConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    lease: LeaseConfig = LeaseConfig()
    demo: DemoConfig = DemoConfig()

    def actor_settings(self) -> ActorSettings:
        return ActorSettings(
            account=self.account.name,
            verification=self.verification,
            protection=self.protection,
        )


_MSGSPEC_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_FIELD_RULE = re.compile(r"^(?P<field>[a-z_.]+): (?P<what>.*)$", re.DOTALL)
"""A settings struct's own cross-field rule (its ``__post_init__``) says ``field: why``."""


def _explain(error: msgspec.ValidationError | msgspec.DecodeError, source: str) -> ConfigError:
    match = _MSGSPEC_PATH.match(str(error))
    what = match.group("what") if match else str(error)
    path = (match.group("path") or "").lstrip(".") if match else ""
    unknown = _UNKNOWN_FIELD.match(what)
    if unknown:
        field = unknown.group("field")
        key = f"{path}.{field}" if path else field
        hint = ""
        if any(word in field.lower() for word in SECRET_WORDS):
            hint = " (secrets are never read from the file: set them in the environment, see venue.api_key_env)"
        return ConfigError(f"{source}: {key}: unknown key{hint}")
    rule = _FIELD_RULE.match(what)
    if rule:
        field = rule.group("field")
        return ConfigError(f"{source}: {path + '.' if path else ''}{field}: {rule.group('what')}")
    what = what[0].lower() + what[1:] if what else what
    choices = _choices_at(path)
    if choices:
        what += f" (expected one of: {', '.join(choices)})"
    return ConfigError(f"{source}: {path or '(top level)'}: {what}")


def _choices_at(path: str) -> list[str]:
    """The allowed values of a Literal-typed key, to say what was expected."""
    kind: object = Config
    for part in path.split(".") if path else []:
        fields = {f.name: f.type for f in msgspec.structs.fields(kind)} if isinstance(kind, type) else {}
        if part not in fields:
            return []
        kind = fields[part]
    return [str(a) for a in get_args(kind)] if get_origin(kind) is Literal else []


def parse_config(text: str, source: str = "config.toml") -> Config:
    try:
        return msgspec.toml.decode(text, type=Config)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        raise _explain(exc, source) from None


def load_config(path: Path | None) -> Config:
    """Read ``path``; None means built-in defaults (the demo needs no file)."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    config = parse_config(text, str(path))
    try:
        check_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def check_config(config: Config) -> None:
    """What a key's type cannot say: whether the URLs are usable. The venue's are judged by
    the adapter's own rule (`ccxt_venue_config`), so there is one rule, not two that drift;
    the built-in fake venue uses no URLs. (Ranges and cross-field rules live with the settings
    structs themselves, so a struct built in code obeys them too.)"""
    if config.venue.kind != "fake":
        ccxt_venue_config(config)
    elif config.venue.resend_grace is not None:
        raise ConfigError("venue.resend_grace: is for binanceusdm only; the simulated venue takes its resend rule"
                          " from the venue it imitates: remove the key")
    _check_redis(config.redis)
    _check_accounts(config)


def _check_accounts(config: Config) -> None:
    """Two accounts never share a credential variable (one account's key must not trade
    another's), and a fleet holds at most ``fleet.max_accounts``."""
    if len(config.accounts) > config.fleet.max_accounts:
        raise ConfigError(f"accounts: {len(config.accounts)} accounts configured, more than fleet.max_accounts ="
                          f" {config.fleet.max_accounts}; raise the maximum or split the file")
    seen: dict[str, str] = {}
    ports: dict[int, str] = {}
    for name in sorted(config.accounts):
        entry = config.accounts[name]
        for variable in account_credential_envs(name, entry):
            if variable in seen:
                raise ConfigError(f"accounts.{name}: reads {variable}, which is account {seen[variable]}'s too; give"
                                  " each account its own api_key_env / api_secret_env")
            seen[variable] = name
        port = config.metrics.port if entry.metrics_port is None else entry.metrics_port
        if port and port in ports:
            raise ConfigError(f"accounts.{name}.metrics_port: {port} is account {ports[port]}'s too (each account is"
                              " its own process); give each account its own metrics_port, or set metrics.port = 0")
        ports[port] = name


_TLS_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "tls_insecure_skip_verify")


def _check_redis(redis: RedisConfig) -> None:
    """The Redis URL and its TLS and password options agree with each other."""
    if redis.url and not re.match(r"^(redis|rediss|unix)://", redis.url):
        raise ConfigError("redis.url: expected a redis://, rediss:// or unix:// URL")
    parts = urlsplit(redis.url)
    if any(name.startswith("ssl_") for name, _value in parse_qsl(parts.query)):
        raise ConfigError("redis.url: TLS options do not go in the URL; use redis.ssl_ca_certs,"
                          " redis.ssl_certfile / ssl_keyfile or redis.tls_insecure_skip_verify")
    if parts.scheme != "rediss":
        for key in _TLS_KEYS:
            if getattr(redis, key):
                raise ConfigError(f"redis.{key}: only used with TLS; make redis.url a rediss:// URL")
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        where = getattr(redis, key)
        if where and not os.path.exists(where):
            raise ConfigError(f"redis.{key}: no such file or directory: {where}")
    if redis.ssl_keyfile and not redis.ssl_certfile:
        raise ConfigError("redis.ssl_keyfile: set redis.ssl_certfile too (the client certificate)")
    if redis.password_env and parts.password:
        raise ConfigError("redis.password_env: redis.url carries a password too; keep one (the environment's)")
    if redis.cluster:
        if not redis.url:
            raise ConfigError("redis.cluster: set redis.url to one node of the cluster (e.g. redis://10.0.0.5:6379)")
        try:
            cluster_seed(redis.url)
        except ClusterUrlRefused as exc:
            raise ConfigError(f"redis.url: with redis.cluster = true, {exc}") from None


def redis_connection(config: Config, environ: Mapping[str, str] | None = None) -> RedisConnection:
    """How to reach the configured Redis: the URL, the password from ``redis.password_env``
    (when set; never from the file), and the TLS options."""
    redis = config.redis
    password = None
    if redis.password_env:
        env = os.environ if environ is None else environ
        password = env.get(redis.password_env, "")
        if not password:
            raise ConfigError(
                f"redis.password_env: environment variable {redis.password_env} is not set; export it with"
                " the Redis password (or clear redis.password_env)"
            )
    tls = TlsOptions(ca_certs=redis.ssl_ca_certs, certfile=redis.ssl_certfile, keyfile=redis.ssl_keyfile,
                     insecure_skip_verify=redis.tls_insecure_skip_verify)
    return RedisConnection(url=redis.url, password=password, tls=tls, cluster=redis.cluster)


def ccxt_venue_config(config: Config) -> CcxtVenueConfig:
    """The adapter's configuration for ``[venue]``; what the adapter refuses is a `ConfigError`
    naming the ``venue.`` key, so the command line stops with exit code 2 like any other
    config mistake."""
    venue = config.venue
    if venue.kind == "fake":
        raise ConfigError("venue.kind: 'fake' is the built-in simulated venue, not a ccxt exchange")
    try:
        return CcxtVenueConfig(
            exchange=venue.kind,
            account=config.account.name,
            environment="testnet" if venue.testnet else "live",
            rest_url=venue.rest_url,
            ws_url=venue.ws_url,
            resend_grace=venue.resend_grace,
            listen_key_keepalive=config.streams.listen_key_keepalive,
            max_connection_age=config.streams.max_connection_age,
        )
    except ConfigRefused as exc:
        section = "streams" if exc.key in STREAMS_KEYS else "venue"
        raise ConfigError(f"{section}.{exc.key}: {exc.reason}") from None


def select_account(config: Config, name: str | None) -> Config:
    """The configuration one process serves: with ``[accounts.NAME]`` tables, the one named by
    ``--account`` (its name in every key, its own credential variables); without them, the
    ``[account]`` of a single-account file, unchanged. Refused: ``--account`` naming an
    account the file does not have, and a multi-account file with no ``--account`` (which
    account a process acts for is never guessed)."""
    if not config.accounts:
        if name is None or name == config.account.name:
            return config
        raise ConfigError(f"--account {name}: the config has no [accounts.{name}] table (its one account is"
                          f" [account] name = {config.account.name!r}); add the table or drop --account")
    if name is None:
        raise ConfigError(f"accounts: {len(config.accounts)} accounts are configured ({', '.join(sorted(config.accounts))});"
                          " name one with --account NAME, or start them all with 'posguard fleet'")
    if name not in config.accounts:
        raise ConfigError(f"--account {name}: no [accounts.{name}] table; configured: {', '.join(sorted(config.accounts))}")
    entry = config.accounts[name]
    key_env, secret_env = account_credential_envs(name, entry)
    venue = msgspec.structs.replace(config.venue, api_key_env=key_env, api_secret_env=secret_env)
    metrics = config.metrics if entry.metrics_port is None else msgspec.structs.replace(config.metrics,
                                                                                        port=entry.metrics_port)
    return msgspec.structs.replace(config, account=AccountConfig(name=name), venue=venue, metrics=metrics)


def check_run_venue(config: Config, *, simulated_venue: bool) -> None:
    """`posguard run` takes real intents from a real stream, so it never falls back to the
    simulated venue (whose positions exist nowhere): ``venue.kind`` must name a real exchange,
    or the operator asks for the simulation in so many words (``--simulated-venue``)."""
    kind = config.venue.kind
    if kind == "fake" and not simulated_venue:
        raise ConfigError(
            "venue.kind: 'posguard run' needs a real venue: set [venue] kind = \"bybit\" or \"binanceusdm\""
            " (to rehearse on the built-in simulated venue, where no order reaches any exchange,"
            " pass --simulated-venue)"
        )
    if kind != "fake" and simulated_venue:
        raise ConfigError(f"venue.kind: is {kind!r} but --simulated-venue was given: remove one of the two")


def credentials_hint(config: Config) -> str:
    """What an operator fixes when the venue refuses the API credentials (names only, never
    the values)."""
    venue = config.venue
    return (f"check the environment variables {venue.api_key_env} and {venue.api_secret_env}"
            " (venue.api_key_env / venue.api_secret_env): the key may be wrong, revoked, expired,"
            f" lack trading permission or belong to another environment (venue.testnet = {str(venue.testnet).lower()})")


def load_secrets(config: Config, environ: dict[str, str] | None = None) -> ApiCredentials | None:
    """API credentials from the environment; None for the fake venue, which needs none."""
    if config.venue.kind == "fake":
        return None
    env = os.environ if environ is None else environ
    values = []
    for key in ("api_key_env", "api_secret_env"):
        name = getattr(config.venue, key)
        value = env.get(name, "")
        if not value:
            raise ConfigError(
                f"venue.{key}: environment variable {name} is not set; export it with your"
                f" {config.venue.kind} API credential (it is never read from the file)"
            )
        values.append(value)
    return ApiCredentials(*values)
