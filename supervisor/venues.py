"""config.toml's ``[venue]`` section, turned into a ccxt venue adapter.

The one place that knows both shapes: `supervisor.config.VenueConfig` (what an operator
writes) and `streams.ccxt_config.CcxtVenueConfig` (what the adapter needs). A configuration
the adapter refuses (one URL override without the other, a URL with a path) is reported as a
`ConfigError`, so the command line stops with exit code 2 like any other config mistake.
"""

from __future__ import annotations

from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, ConfigRefused
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.supervisor.config import Config, ConfigError, Secrets


def ccxt_venue_config(config: Config) -> CcxtVenueConfig:
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
        raise ConfigError(f"venue: {exc}") from None


def open_ccxt_venue(config: Config, secrets: Secrets) -> CcxtVenue:
    """The adapter for ``config`` (not yet connected: `CcxtVenue.load_markets` does that)."""
    return CcxtVenue(ccxt_venue_config(config), ApiCredentials(secrets.api_key, secrets.api_secret))
