"""Intents: what a strategy asks posguard to do, and their validation (I7).

An intent is checked against the venue's market rules before anything is sent. A refused
intent gets a clear reason, an intent record in state ``rejected``, and disturbs nothing
else: the symbol's position record is left as it was.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import msgspec

from posguard.actors.records import PositionRecord, State, utc_now
from posguard.streams.venue.events import OrderSide
from posguard.streams.venue.markets import MarketRules

__all__ = [
    "CloseIntent",
    "INTENT_ID_PATTERN",
    "Intent",
    "IntentRecord",
    "IntentRefused",
    "IntentStatus",
    "FINAL_STATUSES",
    "MAX_STOP_DISTANCE",
    "OpenIntent",
    "check_common",
    "check_open",
    "duplicate_of",
    "settle_reply",
    "stale_reason",
]

INTENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""What an intent id may be; always used with ``fullmatch`` (``$`` would let ``nl1\\n`` pass)."""

MAX_STOP_DISTANCE = 0.5
"""A stop more than half the price away protects nothing: ``stop_distance`` must be below it."""


class OpenIntent(msgspec.Struct, frozen=True, kw_only=True, tag="open"):
    """Open a position. The stop is required: an absolute ``stop_price``, or ``stop_distance``
    as a fraction of the last price (0.02 = 2 %), which the engine turns into a price."""

    intent_id: str
    symbol: str
    side: OrderSide
    qty: float
    stop_price: float = 0.0
    stop_distance: float | None = None
    expires_ms: int = 0
    """Epoch ms after which the intent must not start (`stale_reason`); 0: no limit."""


class CloseIntent(msgspec.Struct, frozen=True, kw_only=True, tag="close"):
    intent_id: str
    symbol: str
    expires_ms: int = 0


Intent = OpenIntent | CloseIntent

IntentStatus = Literal["accepted", "rejected", "stale", "done", "failed", "duplicate"]
"""``duplicate`` is only ever a reply (the intent record keeps the first answer)."""

FINAL_STATUSES: frozenset[str] = frozenset({"rejected", "stale", "done"})
"""An intent with one of these answers was handled: the same id is never run again."""


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
    """Validate and round an open intent; returns it with the quantity rounded to the step.

    Every number is checked for being finite and in range *before* any arithmetic on it:
    ``inf`` or ``1e308`` would otherwise overflow the rounding (and a refusal that names the
    field is what the sender needs). Each refusal starts with the field's name.
    """
    check_common(intent.intent_id, intent.symbol, rules)
    market = rules[intent.symbol]
    _finite_positive("qty", intent.qty)
    if intent.qty > market.largest_qty:
        limit = f"the venue's maximum order size {market.max_qty:g}" if market.max_qty else "any plausible order size"
        raise IntentRefused(f"qty: {intent.qty:g} is above {limit} for {intent.symbol}")
    qty = market.round_qty(intent.qty)
    if qty < market.min_qty:
        raise IntentRefused(
            f"qty: {intent.qty} is below the venue's minimum {market.min_qty} for {intent.symbol}"
            f" (step {market.qty_step})"
        )
    if intent.stop_price and intent.stop_distance is not None:
        raise IntentRefused("stop_price, stop_distance: give one of them, not both")
    if intent.stop_distance is not None:
        distance = intent.stop_distance
        if not (math.isfinite(distance) and 0 < distance < MAX_STOP_DISTANCE):
            raise IntentRefused(
                f"stop_distance: must be a fraction between 0 and {MAX_STOP_DISTANCE} (0.02 = 2 %), got {distance!r}"
            )
        return msgspec.structs.replace(intent, qty=qty)
    _finite_positive("stop_price", intent.stop_price, " (or give stop_distance: posguard never opens without a stop)")
    if intent.stop_price > market.largest_price:
        raise IntentRefused(f"stop_price: {intent.stop_price:g} is not a plausible price for {intent.symbol}")
    stop = market.round_price(intent.stop_price)
    return msgspec.structs.replace(intent, qty=qty, stop_price=stop)


def _finite_positive(name: str, value: float, hint: str = "") -> None:
    if not (math.isfinite(value) and value > 0):
        raise IntentRefused(f"{name}: must be a finite positive number, got {value!r}{hint}")


def check_common(intent_id: str, symbol: str, rules: dict[str, MarketRules]) -> None:
    if not INTENT_ID_PATTERN.fullmatch(intent_id):
        raise IntentRefused(
            f"intent_id: {intent_id!r} must be 1-64 characters of letters, digits, '_', '-', '.', ':'"
        )
    if symbol not in rules:
        raise IntentRefused(
            f"symbol: unknown symbol {symbol!r}: not a linear perpetual on this venue"
            " (use the ccxt unified form, e.g. BTC/USDT:USDT)"
        )


def stale_reason(intent: Intent, now_ms: int) -> str:
    """Why the intent must not start any more, or "" if it may. The one rule for staleness:
    an intent past its ``expires_ms`` (given by the sender, or set from the configured maximum
    age when it arrived) is refused before anything is sent."""
    if intent.expires_ms and now_ms > intent.expires_ms:
        late = (now_ms - intent.expires_ms) / 1000
        return f"stale: expires_ms {intent.expires_ms} passed {late:.1f} s ago; nothing was sent (send a new intent)"
    return ""


def settle_reply(reply: IntentRecord, record: PositionRecord, *, after_restart: bool = False) -> IntentRecord:
    """Fill in an intent's final answer from the record its step left (and return it).

    ``after_restart``: the step was finished by recovery, not by the run that accepted it."""
    open_ = reply.action == "open"
    reply.status = "rejected" if record.state is State.REJECTED and open_ else "done"
    reply.outcome = str(record.state)
    reply.reason = record.reason
    if after_restart:
        reply.reason = f"finished after a restart: {reply.reason}" if reply.reason else "finished after a restart"
    reply.client_order_id = record.client_order_id if open_ else record.close_client_order_id
    return reply


def duplicate_of(first: IntentRecord) -> IntentRecord:
    """The reply to an intent id sent again after it was handled: it points at the first answer
    (its outcome and client order id) and says it was not run again."""
    detail = f" ({first.reason})" if first.reason else ""
    return IntentRecord(
        intent_id=first.intent_id,
        action=first.action,
        symbol=first.symbol,
        status="duplicate",
        reason=f"already handled: {first.status}{detail}; not executed again (the first answer stays in its intent record)",
        outcome=first.outcome,
        client_order_id=first.client_order_id,
    )
