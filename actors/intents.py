"""Intents: what a strategy asks posguard to do, and their validation (I7).

An intent is checked against the venue's market rules before anything is sent. A refused
intent gets a clear reason, an intent record in state ``rejected``, and disturbs nothing
else: the symbol's position record is left as it was.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from posguard.actors.records import utc_now
from posguard.streams.venue.events import OrderSide
from posguard.streams.venue.markets import MarketRules

__all__ = [
    "CloseIntent",
    "INTENT_ID_PATTERN",
    "Intent",
    "IntentRecord",
    "IntentRefused",
    "IntentStatus",
    "OpenIntent",
    "check_common",
    "check_open",
]

INTENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class OpenIntent(msgspec.Struct, frozen=True, kw_only=True, tag="open"):
    """Open a position. The stop is required: an absolute ``stop_price``, or ``stop_distance``
    as a fraction of the last price (0.02 = 2 %), which the engine turns into a price."""

    intent_id: str
    symbol: str
    side: OrderSide
    qty: float
    stop_price: float = 0.0
    stop_distance: float = 0.0


class CloseIntent(msgspec.Struct, frozen=True, kw_only=True, tag="close"):
    intent_id: str
    symbol: str


Intent = OpenIntent | CloseIntent

IntentStatus = Literal["accepted", "rejected", "done", "failed"]


class IntentRecord(msgspec.Struct, kw_only=True):
    """The reply to an intent, stored as a plain-text hash (``posguard:{acct}:intent:<id>``)."""

    intent_id: str
    action: str
    symbol: str
    status: IntentStatus
    reason: str = ""
    outcome: str = ""  # the position record's state when the intent finished
    client_order_id: str = ""
    created_at: str = msgspec.field(default_factory=utc_now)
    updated_at: str = msgspec.field(default_factory=utc_now)

    def to_fields(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in self.__struct_fields__}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> IntentRecord:
        return msgspec.convert(fields, cls, strict=False)


class IntentRefused(ValueError):
    """The intent breaks a rule; nothing was sent. The message says which and what to do."""


def check_open(intent: OpenIntent, rules: dict[str, MarketRules]) -> OpenIntent:
    """Validate and round an open intent; returns it with the quantity rounded to the step."""
    check_common(intent.intent_id, intent.symbol, rules)
    market = rules[intent.symbol]
    if not intent.qty > 0:
        raise IntentRefused(f"qty must be a positive number, got {intent.qty!r}")
    qty = market.round_qty(intent.qty)
    if qty < market.min_qty:
        raise IntentRefused(
            f"qty {intent.qty} is below the venue's minimum {market.min_qty} for {intent.symbol}"
            f" (step {market.qty_step})"
        )
    if intent.stop_price and intent.stop_distance:
        raise IntentRefused("stop_price, stop_distance: give one of them, not both")
    if intent.stop_distance:
        if not 0 < intent.stop_distance < 0.5:
            raise IntentRefused(f"stop_distance must be a fraction between 0 and 0.5, got {intent.stop_distance!r}")
        return msgspec.structs.replace(intent, qty=qty)
    if not intent.stop_price > 0:
        raise IntentRefused(
            f"stop_price must be a positive price, got {intent.stop_price!r}"
            " (or give stop_distance: posguard never opens without a stop)"
        )
    stop = market.round_price(intent.stop_price)
    return msgspec.structs.replace(intent, qty=qty, stop_price=stop)


def check_common(intent_id: str, symbol: str, rules: dict[str, MarketRules]) -> None:
    if not INTENT_ID_PATTERN.match(intent_id):
        raise IntentRefused(
            f"intent_id {intent_id!r} must be 1-64 characters of letters, digits, '_', '-', '.', ':'"
        )
    if symbol not in rules:
        raise IntentRefused(
            f"unknown symbol {symbol!r}: not a linear perpetual on this venue"
            " (use the ccxt unified form, e.g. BTC/USDT:USDT)"
        )
