"""What a `CcxtVenue` needs to know, and where its traffic will go.

The supervisor's ``[venue]`` section maps onto `CcxtVenueConfig` (``kind`` -> ``exchange``,
``testnet`` -> ``environment``); the API key and secret come from the environment and are
passed in as `ApiCredentials`, which never print.

This module is the one rule of which venue URLs are acceptable, in the two moments it can be
judged: `check_overrides` when the config is made (the operator's ``rest_url``/``ws_url``
must be bare base URLs of the right scheme, both or neither), and `check_loopback` once the
venue's dialect has resolved every URL ccxt may use. With ``loopback_only`` set (tests, the
emulator demo) it refuses any configuration that would reach beyond 127.0.0.1, so a missing
override fails at start instead of quietly trading on a real exchange.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from posguard.streams.backoff import Backoff
from posguard.streams.units import ONE_DAY, Seconds
from posguard.streams.venue.protocol import ID_REUSE_GRACE

__all__ = [
    "LOOPBACK_HOSTS",
    "ApiCredentials",
    "CcxtVenueConfig",
    "ConfigRefused",
    "Environment",
    "ExchangeId",
    "check_loopback",
    "check_overrides",
    "host_of",
    "replace_base",
]

ExchangeId = Literal["bybit", "binanceusdm"]
Environment = Literal["live", "testnet", "demo"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

BINANCE_CONNECTION_LIMIT = 24 * 3600.0
"""Binance closes a user-data stream connection 24 hours after it opened."""


class ConfigRefused(ValueError):
    """The adapter cannot start on this configuration; the message says what to change.

    ``key`` is the `CcxtVenueConfig` field to change and ``reason`` what is wrong with it, so
    a caller that maps its own configuration onto this one (the supervisor's ``[venue]``
    section) can name its own key's path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ApiCredentials(msgspec.Struct, frozen=True):
    api_key: str
    api_secret: str

    def __repr__(self) -> str:  # never show them, not even in a traceback's locals
        return "ApiCredentials(api_key=***, api_secret=***)"

    __str__ = __repr__


class CcxtVenueConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    exchange: ExchangeId
    account: str = "main"
    environment: Environment = "testnet"
    """``demo`` is the venue's demo trading (Bybit api-demo, Binance demo-fapi); ``testnet`` its testnet."""
    rest_url: str = ""
    """Base URL (scheme://host[:port]) replacing the venue's REST host; the venue's paths are kept."""
    ws_url: str = ""
    """Base URL (ws[s]://host[:port]) replacing the venue's WebSocket host; paths are kept."""
    loopback_only: bool = False
    """Refuse to start unless every URL the adapter would use is on 127.0.0.1."""
    request_timeout: Seconds = 10.0
    throttle: bool = True
    """ccxt's client-side rate limiter, pacing calls to the venue's published limits. Turn it
    off only against the emulator, which has no limits to respect."""
    keepalive: Seconds = 10.0
    """WebSocket ping interval; two missed pongs drop the connection (ccxt's rule)."""
    heartbeat_interval: Seconds = 5.0
    """How often each topic reports `Heartbeat` while its connection is alive."""
    ready_timeout: Seconds = 15.0
    """How long a (re)connect may take to be authenticated and subscribed before it is retried."""
    gap_margin: Seconds = 5.0
    """Executions this much older than the last moment a stream was known alive are re-read
    after a reconnect, to cover pushes that were in flight when it dropped."""
    reconnect: Backoff = Backoff(initial=0.5, maximum=30.0)
    """Stream reconnects and snapshot retries; the jitter keeps the three topics (or several
    adapters) from redialling a recovering venue in lockstep."""
    listen_key_keepalive: Seconds = 1800.0
    """binanceusdm: seconds between extensions of the user-data stream's listen key, which
    Binance drops 60 minutes after its last extension (ccxt extends it once only)."""
    listen_key_life: Seconds = 3600.0
    """binanceusdm: how long a listen key lives unextended (Binance: 60 minutes). Topics
    heartbeat only while the key is known alive, less `LISTEN_KEY_MARGIN` of this; tests
    shorten it."""
    max_connection_age: Annotated[float, msgspec.Meta(ge=0, le=ONE_DAY)] | None = None
    """Seconds after which a private connection is replaced (reported down and up, followed by
    the REST sweep) before the venue drops it. None: the venue's own rule
    (`Dialect.max_connection_age`: binanceusdm 23 h, as Binance closes a connection at 24 h;
    bybit none); 0: never."""
    resend_grace: Seconds | None = None
    """binanceusdm only: seconds an entry the venue keeps calling unknown must also go without
    a push, a fill or a position before it is sent again (`UnknownOrderRule.entry_grace`);
    at least `ID_REUSE_GRACE`. None: `ID_REUSE_GRACE`. Bybit resends after
    ``verification.lookup_grace`` (a reused id is refused there)."""

    def __post_init__(self) -> None:
        check_overrides(self.rest_url, self.ws_url)
        if self.max_connection_age is not None and self.exchange == "binanceusdm" \
                and self.max_connection_age >= BINANCE_CONNECTION_LIMIT:
            raise ConfigRefused("max_connection_age", f"{self.max_connection_age:g} s is not below Binance's own limit"
                                f" ({BINANCE_CONNECTION_LIMIT:g} s, when it closes the connection itself); leave it"
                                " unset (23 h) or set it lower")
        if self.resend_grace is not None and self.exchange != "binanceusdm":
            raise ConfigRefused("resend_grace", f"is for binanceusdm only; {self.exchange} refuses a reused client"
                                " order id, so it resends after verification.lookup_grace: remove the key")
        if self.resend_grace is not None and self.resend_grace < ID_REUSE_GRACE:
            raise ConfigRefused("resend_grace", f"{self.resend_grace:g} s is below {ID_REUSE_GRACE:g} s: Binance calls"
                                " fresh orders \"does not exist\" for tens of seconds, and a resend of a filled entry"
                                f" opens a second position; set it to {ID_REUSE_GRACE:g} or more")


def check_overrides(rest_url: str, ws_url: str) -> None:
    """Refuse base-URL overrides that would split or garble the adapter's traffic."""
    if bool(rest_url) != bool(ws_url):
        raise ConfigRefused(
            "ws_url" if rest_url else "rest_url",
            "set both rest_url and ws_url, or neither: overriding one alone would send REST"
            " and WebSocket traffic to different places",
        )
    for key, url, schemes in (("rest_url", rest_url, ("http", "https")), ("ws_url", ws_url, ("ws", "wss"))):
        if url:
            parts = urlsplit(url)
            if parts.scheme not in schemes or not parts.hostname or parts.path not in ("", "/"):
                raise ConfigRefused(
                    key,
                    f"must be a bare base URL like {schemes[0]}://127.0.0.1:8080"
                    f" (the venue's paths are appended), got {url!r}",
                )


def check_loopback(urls: Mapping[str, str]) -> None:
    """Refuse to start when any resolved URL (``loopback_only`` set) leaves the machine."""
    outside = sorted({host_of(url) for url in urls.values()} - LOOPBACK_HOSTS)
    if outside:
        raise ConfigRefused(
            "loopback_only",
            f"set, but the venue URLs point at {', '.join(outside)};"
            " set rest_url and ws_url to the emulator (posguard emulator)",
        )


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def replace_base(url: str, base: str) -> str:
    """``url`` with its scheme and host replaced by ``base``'s, path and query kept."""
    parts = urlsplit(url)
    tail = url[len(f"{parts.scheme}://{parts.netloc}"):]
    return base.rstrip("/") + tail
