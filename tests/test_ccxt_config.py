"""Where the adapter's traffic goes: nothing in the tests may leave 127.0.0.1.

``loopback_only`` makes a missing override fail at construction, before ccxt could open a
socket; the resolved URLs are public (`CcxtVenue.urls`) so an operator can see them too.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, ConfigRefused
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from tests.emulator_fixtures import FAST_STREAMS, loopback_network_only  # noqa: F401

pytestmark = pytest.mark.usefixtures("loopback_network_only")

CREDENTIALS = ApiCredentials("key-123", "secret-456")


@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
@pytest.mark.parametrize("environment", ["live", "testnet", "demo"])
def test_loopback_only_refuses_to_start_without_overrides(exchange: str, environment: str) -> None:
    config = CcxtVenueConfig(exchange=exchange, environment=environment, loopback_only=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigRefused) as refused:
        CcxtVenue(config, CREDENTIALS)
    assert "set rest_url and ws_url" in str(refused.value)


@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
def test_with_overrides_every_url_is_the_emulator(exchange: str) -> None:
    config = CcxtVenueConfig(
        exchange=exchange, rest_url="http://127.0.0.1:8765", ws_url="ws://127.0.0.1:8765", loopback_only=True  # type: ignore[arg-type]
    )
    venue = CcxtVenue(config, CREDENTIALS)
    assert venue.urls
    for name, url in venue.urls.items():
        assert url.startswith(("http://127.0.0.1:8765/", "ws://127.0.0.1:8765/")) or url in (
            "http://127.0.0.1:8765", "ws://127.0.0.1:8765"
        ), f"{name} -> {url}"
    if exchange == "bybit":
        assert venue.urls["ws.private.contract"] == "ws://127.0.0.1:8765/v5/private"
        assert venue.urls["private"] == "http://127.0.0.1:8765"
    else:
        assert venue.urls["fapiPrivate"] == "http://127.0.0.1:8765/fapi/v1"
        assert venue.urls["ws.linear"] == "ws://127.0.0.1:8765/ws"
    asyncio.run(venue.aclose())


def test_the_test_helpers_config_is_loopback_only() -> None:
    from posguard.streams.emulators.bybit.server import EmulatorServer
    from tests.emulator_fixtures import emulator_config

    config = emulator_config(EmulatorServer())
    assert config.loopback_only and config.rest_url.startswith("http://127.0.0.1:")
    assert FAST_STREAMS["reconnect"] == config.reconnect


def test_default_urls_are_the_venues_own() -> None:
    venue = CcxtVenue(CcxtVenueConfig(exchange="bybit", environment="testnet"), CREDENTIALS)
    assert venue.urls["private"] == "https://api-testnet.bybit.com"
    assert venue.urls["ws.private.contract"] == "wss://stream-testnet.bybit.com/v5/private"
    asyncio.run(venue.aclose())


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"rest_url": "http://127.0.0.1:1"}, "both rest_url and ws_url"),
        ({"rest_url": "http://127.0.0.1:1/v5", "ws_url": "ws://127.0.0.1:1"}, "bare base URL"),
        ({"rest_url": "ws://127.0.0.1:1", "ws_url": "ws://127.0.0.1:1"}, "bare base URL"),
        ({"rest_url": "http://127.0.0.1:1", "ws_url": "http://127.0.0.1:1"}, "bare base URL"),
    ],
)
def test_inconsistent_overrides_are_refused(fields: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigRefused, match=words):
        CcxtVenueConfig(exchange="bybit", **fields)  # type: ignore[arg-type]


def test_credentials_never_print() -> None:
    shown = f"{CREDENTIALS} {CREDENTIALS!r} {[CREDENTIALS]}"
    assert "key-123" not in shown and "secret-456" not in shown


def test_the_network_guard_refuses_anything_but_loopback() -> None:
    with pytest.raises(OSError, match="network guard"):
        socket.getaddrinfo("api.bybit.com", 443)
    with socket.socket() as sock, pytest.raises(OSError, match="network guard"):
        sock.connect(("10.255.255.1", 443))
    assert socket.getaddrinfo("127.0.0.1", 80)


def test_the_supervisors_venue_section_maps_onto_the_adapter_config() -> None:
    from posguard.supervisor.config import ConfigError, ccxt_venue_config, parse_config
    from posguard.supervisor.venues import open_ccxt_venue

    config = parse_config(
        '[account]\nname = "acct-1"\n[venue]\nkind = "bybit"\ntestnet = false\n'
        'rest_url = "http://127.0.0.1:8765"\nws_url = "ws://127.0.0.1:8765"\n'
    )
    mapped = ccxt_venue_config(config)
    assert (mapped.exchange, mapped.account, mapped.environment) == ("bybit", "acct-1", "live")
    venue = open_ccxt_venue(config, ApiCredentials("key-123456", "secret-123456"))
    assert venue.urls["ws.private.contract"] == "ws://127.0.0.1:8765/v5/private"
    asyncio.run(venue.aclose())

    half = parse_config('[venue]\nkind = "binanceusdm"\nrest_url = "http://127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="both rest_url and ws_url"):
        ccxt_venue_config(half)
    with pytest.raises(ConfigError, match="simulated venue"):
        ccxt_venue_config(parse_config(""))


@pytest.mark.parametrize(
    ("venue_section", "final", "grace", "silence"),
    [
        ('kind = "bybit"', True, None, False),
        ('kind = "binanceusdm"', False, 60.0, True),
        ('kind = "binanceusdm"\nresend_grace = 90.0', False, 90.0, True),
    ],
    ids=["bybit", "binance-default", "binance-configured"],
)
def test_each_dialect_owns_its_resend_rule(venue_section: str, final: bool, grace: float | None, silence: bool) -> None:
    """Bybit refuses a reused id for good; Binance frees a filled order's id (issue 14)."""
    from posguard.supervisor.config import parse_config
    from posguard.supervisor.venues import open_ccxt_venue

    venue = open_ccxt_venue(parse_config(f"[venue]\n{venue_section}\n"), CREDENTIALS)
    rule = venue.unknown_order_rule
    assert (rule.unknown_is_final, rule.entry_grace, rule.entry_needs_silence) == (final, grace, silence)
    asyncio.run(venue.aclose())
