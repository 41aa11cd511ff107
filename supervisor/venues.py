"""config.toml's ``[venue]`` section, turned into a connected-to-be ccxt venue adapter.

Kept apart from `posguard.supervisor.config` so that reading a config file never imports ccxt: the
mapping of ``[venue]`` onto the adapter's `CcxtVenueConfig` (and with it the adapter's one
URL rule) lives in `posguard.supervisor.config.ccxt_venue_config`; this module only builds the venue.
"""

from __future__ import annotations

from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.supervisor.config import Config, ccxt_venue_config

__all__ = ["open_ccxt_venue"]


def open_ccxt_venue(config: Config, credentials: ApiCredentials) -> CcxtVenue:
    """The adapter for ``config`` (not yet connected: `CcxtVenue.load_markets` does that)."""
    return CcxtVenue(ccxt_venue_config(config), credentials)
