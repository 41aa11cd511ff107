"""The emulator's instruments (`posguard.streams.emulators.engine.instruments`) in Bybit's
``/v5/market/instruments-info`` shape."""

from __future__ import annotations

from posguard.streams.emulators.engine.instruments import Instrument

__all__ = ["instrument_payload"]


def instrument_payload(instrument: Instrument) -> dict[str, object]:
    """One instrument as Bybit's ``/v5/market/instruments-info`` lists it."""
    return {
        "symbol": instrument.symbol,
        "contractType": instrument.contract_type,
        "status": "Trading",
        "baseCoin": instrument.base,
        "quoteCoin": instrument.quote,
        "launchTime": "1585526400000",
        "deliveryTime": str(instrument.delivery_ms),
        "deliveryFeeRate": "",
        "priceScale": str(instrument.price_scale),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": instrument.tick, "maxPrice": "1999999.80", "tickSize": instrument.tick},
        "lotSizeFilter": {
            "maxOrderQty": instrument.max_qty,
            "minOrderQty": instrument.min_qty,
            "qtyStep": instrument.step,
            "postOnlyMaxOrderQty": instrument.max_qty,
            "maxMktOrderQty": instrument.max_qty,
            "minNotionalValue": instrument.min_notional,
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": instrument.settle,
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
        "isPreListing": False,
        "preListingInfo": None,
        "symbolType": "",
    }
