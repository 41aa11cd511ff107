"""Risk limits, checked on every entry before anything is sent (I7).

A refused intent is answered with the limit's config key and the numbers, so whoever sent it
can tell which rule said no. Every limit is off by default (0 or empty) except that a stop is
always required, on the right side of the price and inside the liquidation price: those are
checked on every entry, against the freshest known price (`posguard.supervisor.prices`), by the
symbol's actor before it writes the entry ahead (so a slow price read holds up no other symbol).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

import msgspec

from posguard.actors.intents import IntentRefused, OpenIntent, take_profit_beyond
from posguard.actors.lifecycle.stop_fill import stop_crossed
from posguard.actors.liquidation import beyond_liquidation
from posguard.streams.venue.events import OrderSide, position_side_of
from posguard.streams.venue.liquidation import estimated_liquidation_price

__all__ = ["Fraction", "Limit", "RiskLimits", "check_priced", "check_protection", "check_static", "not_markets"]

Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]
Limit = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
"""A size or notional limit: finite (``inf`` is not "no limit"; 0 is)."""


class RiskLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    allowed_symbols: list[str] = []
    """Symbols intents may open (ccxt unified form); empty: any linear perpetual the venue lists."""
    max_qty: dict[str, Annotated[float, msgspec.Meta(gt=0, le=1e15)]] = {}
    """Per symbol, the largest quantity one intent may open."""
    max_notional: Limit = 0.0
    """Largest qty x last price (in the settle currency, USDT) one intent may open; 0: no limit."""
    max_open_positions: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Most live positions the account may hold at once; 0: no limit."""
    min_stop_distance: Fraction = 0.0
    """Closest a stop may be to the last price, as a fraction (0.002 = 0.2 %); 0: no bound."""
    max_stop_distance: Fraction = 0.0
    """Farthest a stop may be from the last price, as a fraction; 0: no bound."""
    price_max_age: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    """Seconds a pushed mark price or a ticker read stays fresh enough to check an entry against."""
    price_deadline: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    """Seconds an entry's price read is retried (a 5xx, a rate limit) before the entry is refused."""
    default_leverage: Annotated[float, msgspec.Meta(ge=1, le=200)] = 10.0
    """Leverage assumed for the liquidation estimate when the venue does not say (`fetch_leverage`)."""
    maintenance_margin: Annotated[float, msgspec.Meta(ge=0, lt=0.5)] = 0.005
    """Maintenance margin rate in the liquidation estimate (Bybit's lowest tier: 0.5 %)."""

    def __post_init__(self) -> None:
        # "field: why" is how a config error names the key (supervisor.config._explain).
        if self.min_stop_distance and self.max_stop_distance and self.min_stop_distance > self.max_stop_distance:
            raise ValueError(f"min_stop_distance: {self.min_stop_distance} is more than max_stop_distance"
                             f" {self.max_stop_distance}; no stop could satisfy both")


def not_markets(limits: RiskLimits, markets: Collection[str]) -> list[str]:
    """The configured symbols (``allowed_symbols``, ``max_qty``) the venue does not list: a
    typo there would refuse every intent for the symbol meant, or cap one that never trades.
    Checked once the markets are loaded, at start-up."""
    named = [*limits.allowed_symbols, *limits.max_qty]
    return sorted({symbol for symbol in named if symbol not in markets}, key=named.index)


def check_static(intent: OpenIntent, limits: RiskLimits) -> None:
    """The limits that need no price and no count."""
    if limits.allowed_symbols and intent.symbol not in limits.allowed_symbols:
        raise IntentRefused(f"risk.allowed_symbols: {intent.symbol} is not in the allowed list")
    cap = limits.max_qty.get(intent.symbol)
    if cap is not None and intent.qty > cap:
        raise IntentRefused(f"risk.max_qty: qty {intent.qty} exceeds the limit {cap} for {intent.symbol}")


def check_protection(side: OrderSide, stop_price: float, take_profit: float, price: float, limits: RiskLimits, *,
                     leverage: float, leverage_from: str, entry_price: float = 0.0) -> None:
    """The stop on the right side of the market and inside the liquidation price (estimated
    from ``leverage``, read from ``leverage_from``), a take-profit (0: none) on the profit side
    of it: the one rule for an entry's stop (`check_priced`) and an amended one's (whose
    liquidation is estimated from the position's ``entry_price``, an entry's from ``price``)."""
    if stop_crossed(side, stop_price, price):
        below = "below" if side == "buy" else "above"
        raise IntentRefused(f"stop_price: {stop_price} must be {below} the last price {price} for a {side}")
    if take_profit and not take_profit_beyond(side, price, take_profit):
        beyond = "above" if side == "buy" else "below"
        raise IntentRefused(f"take_profit: {take_profit} must be {beyond} the last price {price} for a"
                            f" {side}; the venue would fill it at once")
    reference = entry_price or price
    liq = estimated_liquidation_price(position_side_of(side), reference, leverage, limits.maintenance_margin)
    if beyond_liquidation(side, stop_price, liq):
        basis = f"entry price {entry_price}" if entry_price else f"last price {price}"
        raise IntentRefused(
            f"stop_price: {stop_price} is beyond the estimated liquidation price {liq:.6g} ({leverage:g}x"
            f" leverage from {leverage_from}, {basis}): the position would be liquidated before the"
            " stop fires; move the stop closer or lower the leverage"
        )


def check_priced(intent: OpenIntent, price: float, limits: RiskLimits, *, leverage: float, leverage_from: str) -> None:
    """`check_protection`, and the limits that need the last price."""
    check_protection(intent.side, intent.stop_price, intent.take_profit, price, limits, leverage=leverage,
                     leverage_from=leverage_from)
    notional = intent.qty * price
    if limits.max_notional and notional > limits.max_notional:
        raise IntentRefused(
            f"risk.max_notional: notional {notional:.2f} (qty {intent.qty} x {price}) exceeds the limit"
            f" {limits.max_notional:.2f}"
        )
    distance = abs(price - intent.stop_price) / price
    if limits.min_stop_distance and distance < limits.min_stop_distance:
        raise IntentRefused(
            f"risk.min_stop_distance: stop {intent.stop_price} is {distance:.4%} from {price},"
            f" closer than {limits.min_stop_distance:.4%}"
        )
    if limits.max_stop_distance and distance > limits.max_stop_distance:
        raise IntentRefused(
            f"risk.max_stop_distance: stop {intent.stop_price} is {distance:.4%} from {price},"
            f" farther than {limits.max_stop_distance:.4%}"
        )

