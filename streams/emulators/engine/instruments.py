"""The emulators' listed instruments, venue-neutral (each front writes them its own way:
Bybit's ``/v5/market/instruments-info``, Binance's ``exchangeInfo``).

The USDT perpetuals mirror the fake venue's markets (same prices and steps), so a demo or a
test can move between the two. One USDC perpetual and one dated USDT future are listed too,
because Bybit's linear category holds them: an adapter that means "USDT perpetuals" must
filter them out itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = ["DEFAULT_INSTRUMENTS", "Instrument"]


@dataclass(frozen=True)
class Instrument:
    symbol: str  # the venue's id, e.g. BTCUSDT (Bybit and Binance agree)
    base: str
    quote: str
    settle: str
    contract_type: str  # LinearPerpetual | LinearFutures
    price: float  # starting last price
    tick: str
    step: str
    min_qty: str
    max_qty: str
    min_notional: str
    delivery_ms: int = 0

    @property
    def price_scale(self) -> int:
        return max(0, -Decimal(self.tick).as_tuple().exponent)  # type: ignore[operator]


def _perp(base: str, price: float, tick: str, step: str, max_qty: str) -> Instrument:
    return Instrument(
        symbol=f"{base}USDT", base=base, quote="USDT", settle="USDT", contract_type="LinearPerpetual",
        price=price, tick=tick, step=step, min_qty=step, max_qty=max_qty, min_notional="5",
    )


DEFAULT_INSTRUMENTS: tuple[Instrument, ...] = (
    _perp("BTC", 60_000.0, "0.10", "0.001", "500.000"),
    _perp("ETH", 3_000.0, "0.01", "0.01", "5000.00"),
    _perp("SOL", 150.0, "0.01", "0.1", "50000.0"),
    _perp("XRP", 0.6, "0.0001", "1", "5000000"),
    _perp("AVL", 1.5, "0.0001", "1", "1000000"),
    _perp("DOGE", 0.15, "0.00001", "1", "10000000"),
    _perp("LINK", 25.0, "0.001", "0.1", "100000.0"),
    _perp("BNB", 600.0, "0.01", "0.01", "5000.00"),
    Instrument(
        symbol="BTCPERP", base="BTC", quote="USDC", settle="USDC", contract_type="LinearPerpetual",
        price=60_000.0, tick="0.5", step="0.001", min_qty="0.001", max_qty="100.000", min_notional="5",
    ),
    Instrument(
        symbol="BTCUSDT-26JUN26", base="BTC", quote="USDT", settle="USDT", contract_type="LinearFutures",
        price=61_000.0, tick="0.5", step="0.001", min_qty="0.001", max_qty="100.000", min_notional="5",
        delivery_ms=1782460800000,
    ),
)

