"""The symbols the simulated venue lists, with their prices and rules.

`DEFAULT_MARKETS` is a handful of real-looking perpetuals for the demo and most tests;
`synthetic_markets` makes as many made-up ones as a scale test or benchmark needs.
"""

from __future__ import annotations

from posguard.streams.venue.markets import MarketRules

__all__ = ["DEFAULT_MARKETS", "synthetic_markets"]

DEFAULT_MARKETS: dict[str, tuple[float, MarketRules]] = {
    rules.symbol: (price, rules)
    for price, rules in [
        (60_000.0, MarketRules(symbol="BTC/USDT:USDT", qty_step=0.001, min_qty=0.001, price_tick=0.1, min_notional=5,
                                  max_qty=500)),
        (3_000.0, MarketRules(symbol="ETH/USDT:USDT", qty_step=0.01, min_qty=0.01, price_tick=0.01, min_notional=5,
                                  max_qty=5000)),
        (150.0, MarketRules(symbol="SOL/USDT:USDT", qty_step=0.1, min_qty=0.1, price_tick=0.01, min_notional=5,
                                  max_qty=50_000)),
        (0.6, MarketRules(symbol="XRP/USDT:USDT", qty_step=1, min_qty=1, price_tick=0.0001, min_notional=5,
                                  max_qty=5_000_000)),
        (1.5, MarketRules(symbol="AVL/USDT:USDT", qty_step=1, min_qty=1, price_tick=0.0001, min_notional=5,
                                  max_qty=1_000_000)),
        (0.15, MarketRules(symbol="DOGE/USDT:USDT", qty_step=1, min_qty=1, price_tick=0.00001, min_notional=5,
                                  max_qty=10_000_000)),
        (25.0, MarketRules(symbol="LINK/USDT:USDT", qty_step=0.1, min_qty=0.1, price_tick=0.001, min_notional=5,
                                  max_qty=100_000)),
        (600.0, MarketRules(symbol="BNB/USDT:USDT", qty_step=0.01, min_qty=0.01, price_tick=0.01, min_notional=5,
                                  max_qty=5000)),
    ]
}
"""Symbol -> (starting price, rules); the maximum order sizes are the emulator's
(`posguard.streams.emulators.bybit.instruments`), so the two venues refuse the same sizes."""


def synthetic_markets(count: int) -> dict[str, tuple[float, MarketRules]]:
    """``count`` made-up symbols (S0001/USDT:USDT ...) for scale tests and benchmarks."""
    return {
        f"S{i:04d}/USDT:USDT": (
            10.0,
            MarketRules(symbol=f"S{i:04d}/USDT:USDT", qty_step=0.1, min_qty=0.1, price_tick=0.001,
                        max_qty=1_000_000),
        )
        for i in range(count)
    }
