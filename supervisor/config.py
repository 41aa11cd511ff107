"""config.toml, decoded into typed structs; every mistake reported with the key's path.

A trading system must not start on a config it half understood: unknown keys, wrong types and
out-of-range values stop it at once (exit code 2) with the key and what was expected. API keys
and secrets are read from environment variables only, never from the file, and never printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import msgspec

from posguard.actors.settings import ActorSettings, ProtectionSettings, VerificationSettings
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, ConfigRefused
from posguard.streams.units import Seconds
from posguard.supervisor.risk import RiskLimits
from posguard.supervisor.supervision import AuditSettings, SupervisorSettings

__all__ = [
    "AccountConfig",
    "Config",
    "ConfigError",
    "DemoConfig",
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
]

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
SECRET_WORDS = ("key", "secret", "password", "passphrase", "token")


class ConfigError(Exception):
    """Invalid configuration. The message names the key and says what was expected."""


class AccountConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name = "main"


class VenueConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["fake", "bybit", "binanceusdm"] = "fake"
    testnet: bool = True
    rest_url: str = ""
    ws_url: str = ""
    api_key_env: str = "POSGUARD_API_KEY"
    api_secret_env: str = "POSGUARD_API_SECRET"


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = ""


class StreamsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stale_after: Seconds = 15.0


class LogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    bind: str = "127.0.0.1"


class DemoConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    positions: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    symbols: Annotated[int, msgspec.Meta(ge=1, le=8)] = 5
    seed: int = 42
    hold_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.5


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: AccountConfig = AccountConfig()
    venue: VenueConfig = VenueConfig()
    redis: RedisConfig = RedisConfig()
    streams: StreamsConfig = StreamsConfig()
    verification: VerificationSettings = VerificationSettings()
    protection: ProtectionSettings = ProtectionSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    audit: AuditSettings = AuditSettings()
    risk: RiskLimits = RiskLimits()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    demo: DemoConfig = DemoConfig()

    def actor_settings(self) -> ActorSettings:
        return ActorSettings(
            account=self.account.name,
            verification=self.verification,
            protection=self.protection,
        )


_MSGSPEC_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")


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
    check_config(config)
    return config


def check_config(config: Config) -> None:
    """What a key's type cannot say: whether the URLs are usable. The venue's are judged by
    the adapter's own rule (`ccxt_venue_config`), so there is one rule, not two that drift;
    the built-in fake venue uses no URLs."""
    if config.venue.kind != "fake":
        ccxt_venue_config(config)
    if config.redis.url and not re.match(r"^(redis|rediss|unix)://", config.redis.url):
        raise ConfigError("redis.url: expected a redis://, rediss:// or unix:// URL")


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
        )
    except ConfigRefused as exc:
        raise ConfigError(f"venue.{exc.key}: {exc.reason}") from None


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
