"""The `Venue` protocol on ccxt.pro (Bybit, Binance USD-M): `venue.CcxtVenue` and its parts.

Nothing is re-exported here on purpose: importing a submodule runs this file, and
`posguard.supervisor.config` imports `config` (credentials, the URL rule) without wanting
ccxt loaded; import the names from their modules.
"""

__all__: list[str] = []
