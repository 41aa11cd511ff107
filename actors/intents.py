"""Intents: what a strategy asks posguard to do, and their validation (I7).

An intent is checked against the venue's market rules before anything is sent. A refused
intent gets a clear reason, an intent record in state ``rejected``, and disturbs nothing
else: the symbol's position record is left as it was.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from posguard.actors.records import PositionRecord, State, utc_now
from posguard.streams.venue.events import OrderSide
from posguard.streams.venue.markets import QTY_TOLERANCE, MarketRules

__all__ = [
    "AmendIntent",
    "CarryOn",
    "CloseIntent",
    "ConflictingBody",
    "Duplicate",
    "INTENT_ID_PATTERN",
    "Intent",
    "IntentRecord",
    "IntentRefused",
    "IntentStatus",
    "FINAL_STATUSES",
    "MAX_STOP_DISTANCE",
    "OpenIntent",
    "Run",
    "Verdict",
    "action_of",
    "answers",
    "body_of",
    "check_amend",
    "check_close",
    "check_open",
    "check_intent_id",
    "close_size",
    "check_symbol",
    "conflict_of",
    "duplicate_of",
    "intent_verdict",
    "settle_reply",
    "stale_reason",
    "stop_tightens",
    "take_profit_beyond",
]

_INTENT_ID_REGEX = r"\A[A-Za-z0-9_.:-]{1,64}\Z"
INTENT_ID_PATTERN = re.compile(_INTENT_ID_REGEX)
"""What an intent id may be: the whole field (``\\Z``: ``$`` would let ``nl1\\n`` pass)."""

MAX_STOP_DISTANCE = 0.5
"""A stop more than half the price away protects nothing: ``stop_distance`` must be below it."""

# Each field's rule, and its description, which is what a refusal quotes (``qty: must be ...``).
IntentId = Annotated[str, msgspec.Meta(
    pattern=_INTENT_ID_REGEX, description="1-64 characters of letters, digits, '_', '-', '.', ':'"
)]
Side = Annotated[OrderSide, msgspec.Meta(description="buy or sell")]
Qty = Annotated[float, msgspec.Meta(gt=0, description="a number of contracts above 0")]
StopPrice = Annotated[float, msgspec.Meta(gt=0, description="a price above 0")]
StopDistance = Annotated[float, msgspec.Meta(
    gt=0, lt=MAX_STOP_DISTANCE, description=f"a fraction between 0 and {MAX_STOP_DISTANCE} (0.02 = 2 %)"
)]
TakeProfitPrice = Annotated[float, msgspec.Meta(gt=0, description="a price above 0")]
TakeProfitDistance = Annotated[float, msgspec.Meta(
    gt=0, lt=1, description="a fraction between 0 and 1 (0.04 = 4 %)"
)]
"""Below 1: a sell's take-profit one whole price away would be at 0."""
Flag = Annotated[bool, msgspec.Meta(description="true or false")]
CloseFraction = Annotated[float, msgspec.Meta(
    gt=0, le=1, description="a fraction of the open size above 0 and at most 1 (0.5 = half; 1 = all of it)"
)]
ExpiresMs = Annotated[int, msgspec.Meta(gt=0, description="a time in epoch milliseconds")]


class OpenIntent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="action",
                 tag="open"):
    """Open a position. The stop is required: an absolute ``stop_price``, or ``stop_distance``
    as a fraction of the last price (0.02 = 2 %), which the engine turns into a price."""

    intent_id: IntentId
    symbol: str
    side: Side
    qty: Qty
    stop_price: StopPrice = 0.0
    """0: not given (``stop_distance`` is, or `check_open` refuses the intent)."""
    stop_distance: StopDistance | None = None
    take_profit: TakeProfitPrice = 0.0
    """0: none (or ``take_profit_distance`` is given). Optional: a position may have no take-profit."""
    take_profit_distance: TakeProfitDistance | None = None
    """Instead of ``take_profit``: a fraction of the last price in the position's favour, which
    the engine turns into a price (as it does ``stop_distance``)."""
    expires_ms: ExpiresMs = 0
    """Epoch ms after which the intent must not start (`stale_reason`); 0: no limit."""


class CloseIntent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="action",
                  tag="close"):
    """Close the position: all of it, or part of it with ``qty`` or ``fraction`` (one of them).
    A part is rounded down to the venue's step (below its minimum: refused); a part that comes
    to the whole open size is an ordinary full close (`close_size`)."""

    intent_id: IntentId
    symbol: str
    qty: Qty | None = None
    """Contracts to close; None: not given."""
    fraction: CloseFraction | None = None
    """A fraction of the open size to close; None: not given."""
    expires_ms: ExpiresMs = 0

    @property
    def is_partial(self) -> bool:
        """Whether it asks for part of the position (which may still come to all of it)."""
        return self.qty is not None or (self.fraction is not None and self.fraction < 1)


class AmendIntent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="action",
                  tag="amend"):
    """Change a protected position's stop and/or take-profit (`check_amend`): the stop as a
    price, a distance from the last price, or ``breakeven`` (the entry price); the take-profit
    as a price or a distance, or ``remove_take_profit``. The position is never bare during the
    change (`posguard.actors.lifecycle.amend`)."""

    intent_id: IntentId
    symbol: str
    stop_price: StopPrice = 0.0
    """0: the stop is not changed (unless ``stop_distance`` or ``breakeven`` is given)."""
    stop_distance: StopDistance | None = None
    breakeven: Flag = False
    """Move the stop to the entry price (rounded to the tick), only where that tightens it."""
    take_profit: TakeProfitPrice = 0.0
    """0: the take-profit is not changed (unless ``take_profit_distance`` or
    ``remove_take_profit`` is given)."""
    take_profit_distance: TakeProfitDistance | None = None
    remove_take_profit: Flag = False
    expires_ms: ExpiresMs = 0

    @property
    def moves_stop(self) -> bool:
        return bool(self.stop_price) or self.stop_distance is not None or self.breakeven

    @property
    def changes_take_profit(self) -> bool:
        return bool(self.take_profit) or self.take_profit_distance is not None or self.remove_take_profit


Intent = OpenIntent | CloseIntent | AmendIntent

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
    body: str = ""
    """What the intent asked (`body_of`), for telling a redelivery from another intent under
    the same id; "" when not known (an entry that did not decode)."""
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
    """Check an open intent against the venue's market rules; returns it with the quantity
    rounded to the step and the stop price to the tick.

    The numbers' own ranges (above 0, not nan) are the types' constraints, checked when the
    intent is decoded; what is left is what depends on the venue: ``inf`` or ``1e308`` fail
    the maximum before any rounding could overflow. Each refusal starts with the field's name.
    """
    check_symbol(intent.symbol, rules)
    market = rules[intent.symbol]
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
    if intent.take_profit and intent.take_profit_distance is not None:
        raise IntentRefused("take_profit, take_profit_distance: give one of them, not both")
    take_profit = intent.take_profit
    if take_profit:
        if take_profit > market.largest_price:
            raise IntentRefused(f"take_profit: {take_profit:g} is not a plausible price for {intent.symbol}")
        take_profit = market.round_price(take_profit)
        if not take_profit > 0:
            raise IntentRefused(f"take_profit: {intent.take_profit:g} rounds to 0 on the tick {market.price_tick:g}"
                                f" of {intent.symbol}")
    if intent.stop_distance is not None:
        return msgspec.structs.replace(intent, qty=qty, take_profit=take_profit)
    if not intent.stop_price:
        raise IntentRefused("stop_price: required for an open intent (or stop_distance); posguard never opens bare")
    if intent.stop_price > market.largest_price:
        raise IntentRefused(f"stop_price: {intent.stop_price:g} is not a plausible price for {intent.symbol}")
    stop = market.round_price(intent.stop_price)
    if take_profit and not take_profit_beyond(intent.side, stop, take_profit):
        beyond = "above" if intent.side == "buy" else "below"
        raise IntentRefused(f"take_profit: {take_profit:g} must be {beyond} the stop {stop:g} for a {intent.side}")
    return msgspec.structs.replace(intent, qty=qty, stop_price=stop, take_profit=take_profit)


def check_amend(intent: AmendIntent, rules: dict[str, MarketRules]) -> AmendIntent:
    """What an amend must pass at intake, with nothing awaited: it asks for something, one way
    each for the stop and the take-profit, plausible prices; returns it with its prices on the
    tick. Where the stop and take-profit lie against the market and the position is the
    actor's to check (`supervisor.risk.check_protection`), with the price and the record."""
    check_symbol(intent.symbol, rules)
    market = rules[intent.symbol]
    stops = [name for name, given in (("stop_price", bool(intent.stop_price)),
                                      ("stop_distance", intent.stop_distance is not None),
                                      ("breakeven", intent.breakeven)) if given]
    if len(stops) > 1:
        raise IntentRefused(f"{', '.join(stops)}: give one of them, not several")
    profits = [name for name, given in (("take_profit", bool(intent.take_profit)),
                                        ("take_profit_distance", intent.take_profit_distance is not None),
                                        ("remove_take_profit", intent.remove_take_profit)) if given]
    if len(profits) > 1:
        raise IntentRefused(f"{', '.join(profits)}: give one of them, not several")
    if not stops and not profits:
        raise IntentRefused("amend: nothing to change: give stop_price, stop_distance or breakeven, and/or"
                            " take_profit, take_profit_distance or remove_take_profit")
    stop, take_profit = intent.stop_price, intent.take_profit
    for name, value in (("stop_price", stop), ("take_profit", take_profit)):
        if value > market.largest_price:
            raise IntentRefused(f"{name}: {value:g} is not a plausible price for {intent.symbol}")
    if stop:
        stop = market.round_price(stop)
    if take_profit:
        take_profit = market.round_price(take_profit)
        if not take_profit > 0:
            raise IntentRefused(f"take_profit: {intent.take_profit:g} rounds to 0 on the tick {market.price_tick:g}"
                                f" of {intent.symbol}")
    return msgspec.structs.replace(intent, stop_price=stop, take_profit=take_profit)
def check_close(intent: CloseIntent, rules: dict[str, MarketRules]) -> CloseIntent:
    """Check a close intent against the venue's market rules, before its actor sees it: the
    symbol, one of ``qty``/``fraction``, and a ``qty`` that rounds down to at least the
    venue's minimum (a ``fraction`` is sized by the actor, from the open size: `close_size`)."""
    check_symbol(intent.symbol, rules)
    if intent.qty is not None and intent.fraction is not None:
        raise IntentRefused("qty, fraction: give one of them (or neither, to close it all), not both")
    if intent.qty is not None:
        market = rules[intent.symbol]
        if market.round_qty(min(intent.qty, market.largest_qty)) < market.min_qty:
            raise IntentRefused(f"qty: {intent.qty:g} is below the venue's minimum {market.min_qty:g} for"
                                f" {intent.symbol} (step {market.qty_step:g}); nothing was sent")
    return intent


def close_size(intent: CloseIntent, open_qty: float, market: MarketRules | None) -> float:
    """How much a close intent closes of a position ``open_qty`` big: 0 for all of it (no
    ``qty``/``fraction``, ``fraction`` 1, or a part that comes to the whole open size), else
    the part rounded down to the venue's step. The one rule of a partial close's size.
    Raises `IntentRefused` for a part below the venue's minimum (nothing is sent)."""
    if not intent.is_partial:
        return 0.0
    asked = intent.qty if intent.qty is not None else open_qty * (intent.fraction or 0.0)
    if asked >= open_qty - QTY_TOLERANCE:
        return 0.0
    if market is None:
        return asked
    size = market.round_qty(asked)
    if size < market.min_qty:
        given = f"qty {intent.qty:g}" if intent.qty is not None else f"fraction {intent.fraction:g} of {open_qty:g}"
        raise IntentRefused(f"{'qty' if intent.qty is not None else 'fraction'}: {given} comes to {size:g}, below the"
                            f" venue's minimum {market.min_qty:g} for {intent.symbol} (step {market.qty_step:g});"
                            " nothing was sent")
    return 0.0 if size >= open_qty - QTY_TOLERANCE else size


def take_profit_beyond(side: OrderSide, reference: float, take_profit: float) -> bool:
    """Whether ``take_profit`` lies on the profit side of ``reference`` (a price or the stop)
    for an entry on ``side``: above it for a buy, below it for a sell. The one rule of a
    take-profit's side, for the intake (against the stop) and the priced checks (against the
    last price)."""
    return take_profit > reference if side == "buy" else take_profit < reference


def stop_tightens(side: OrderSide, old_stop: float, new_stop: float) -> bool:
    """Whether ``new_stop`` is closer to the market than ``old_stop`` for an entry on ``side``
    (higher for a buy, lower for a sell): the one rule for "tightens" (``breakeven`` moves the
    stop only so)."""
    return new_stop > old_stop if side == "buy" else new_stop < old_stop


def check_intent_id(intent_id: str) -> None:
    """The id's pattern, for an intent that did not come through the decoder (built in code):
    an id outside it could be one posguard gives its own work (`ids.internal_intent_id`)."""
    if not INTENT_ID_PATTERN.fullmatch(intent_id):
        raise IntentRefused(f"intent_id: {intent_id!r} must be 1-64 characters of letters, digits, '_', '-', '.', ':'")


def check_symbol(symbol: str, rules: dict[str, MarketRules]) -> None:
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


def answers(record: PositionRecord, reply: IntentRecord) -> bool:
    """Whether ``record``, as it is about to be written, is the final answer to the intent
    ``reply`` is for: the one rule for when an intent is done. Any intent is answered by its
    record's end (a terminal state); an open also by its position protected, which is all it
    asked for (what happens to the position afterwards is the record's story, not the
    intent's). A close is also answered by its record back in ``protected`` with what remains:
    a partial close done (`PositionRecord.partial_close_qty`; the only way from ``closing`` back
    to ``protected``)."""
    if record.state.is_terminal:
        return True
    if record.state is not State.PROTECTED:
        return False
    if reply.action == "amend":
        # Done once the record is protected again with no amend under way (`amend`): it was
        # this one's (an amend is served to its end before the next intent starts).
        return not record.amend_intent_id
    if reply.action == "close":
        return record.close_intent_id == reply.intent_id and not record.partial_close_qty
    return reply.action == "open" and record.intent_id == reply.intent_id


def settle_reply(reply: IntentRecord, record: PositionRecord, *, after_restart: bool = False) -> IntentRecord:
    """Fill in an intent's final answer from the record its step left (and return it).

    ``after_restart``: the step was finished by recovery, not by the run that accepted it."""
    open_ = reply.action == "open"
    reply.status = "rejected" if record.state is State.REJECTED and open_ else "done"
    reply.outcome = str(record.state)
    reply.reason = record.reason
    if after_restart:
        reply.reason = f"finished after a restart: {reply.reason}" if reply.reason else "finished after a restart"
    reply.client_order_id = (record.client_order_id if open_ else record.stop_client_order_id
                             if reply.action == "amend" else record.close_client_order_id)
    return reply


def action_of(intent: Intent) -> str:
    """The intent's ``action`` field: its tag in the union (``open`` or ``close``)."""
    return str(type(intent).__struct_config__.tag)


# -- idempotency: one rule for "may this intent run" ----------------------------------------


def body_of(intent: Intent) -> str:
    """What an intent asks, as plain text (the intent record's ``body``). Two intents under one
    id are the same intent only if this is equal: their client order ids are equal (derived
    from the id), so a second body would find the first one's orders (issue 13, defect 4).
    Taken from the intent as it arrived, before rounding or pricing a ``stop_distance``, so
    that a redelivered entry always has the body it had the first time."""
    if isinstance(intent, CloseIntent):
        # A part only when given, so a close of it all keeps the body it had before partial closes.
        part = (f" qty {intent.qty!r}" if intent.qty is not None else
                f" fraction {intent.fraction!r}" if intent.fraction is not None else "")
        return f"{action_of(intent)} {intent.symbol}{part}"
    if isinstance(intent, AmendIntent):
        parts = [action_of(intent), intent.symbol]
        for name in ("stop_price", "stop_distance", "breakeven", "take_profit", "take_profit_distance",
                     "remove_take_profit"):
            value = getattr(intent, name)
            if value not in (0.0, None, False):
                parts.append(f"{name} {value!r}")
        return " ".join(parts)
    stop = f"stop_distance {intent.stop_distance!r}" if intent.stop_distance is not None else (
        f"stop_price {intent.stop_price!r}")
    body = f"{action_of(intent)} {intent.symbol} {intent.side} qty {intent.qty!r} {stop}"
    # Only when given, so an intent without one keeps the body it had before take-profits.
    if intent.take_profit_distance is not None:
        body += f" take_profit_distance {intent.take_profit_distance!r}"
    elif intent.take_profit:
        body += f" take_profit {intent.take_profit!r}"
    return body


class Run(msgspec.Struct, frozen=True, tag=True):
    """Never begun: it may start (if it is not stale)."""


class CarryOn(msgspec.Struct, frozen=True, tag=True):
    """Begun under this body (accepted, or being handed to its actor): carry it on, however
    old it is; its order may already be on the venue, and looking it up is the way on."""


class Duplicate(msgspec.Struct, frozen=True, tag=True):
    """Handled already: answered ``duplicate``, pointing at ``first``; nothing runs."""

    first: IntentRecord


class ConflictingBody(msgspec.Struct, frozen=True, tag=True):
    """The id belongs to another intent (``first_body``): refused, nothing runs, and the first
    intent's record is left as it is."""

    first_body: str


Verdict = Run | CarryOn | Duplicate | ConflictingBody


def intent_verdict(body: str, first: IntentRecord | None, in_flight: str = "") -> Verdict:
    """The one rule for an intent id seen again (the intake before the hand-off, the actor
    before it writes the intent ahead). ``first``: the id's intent record in Redis;
    ``in_flight``: the body the id was handed over with and not finished yet, which Redis may
    not show yet (the intent can wait in its actor's mailbox before anything is written)."""
    first_body = in_flight or (first.body if first is not None else "")
    if first_body and first_body != body:
        return ConflictingBody(first_body=first_body)
    if first is not None and first.status in FINAL_STATUSES:
        return Duplicate(first=first)
    if first is not None or in_flight:
        return CarryOn()
    return Run()


def conflict_of(intent: Intent, first_body: str) -> IntentRecord:
    """The reply to an intent under an id that another intent holds: refused; the first
    intent's record is not touched (this is only pushed to the reply list)."""
    body = body_of(intent)
    return IntentRecord(
        intent_id=intent.intent_id,
        action=action_of(intent),
        symbol=intent.symbol,
        status="rejected",
        reason=(f"intent_id: {intent.intent_id!r} is already used by a different intent ({first_body}); this one"
                f" ({body}) was not executed, nothing was sent: send it under a new intent_id"),
        body=body,
    )


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
        body=first.body,
    )
