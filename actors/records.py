"""The position record: what posguard believes about one symbol, written before each step.

It is stored as a Redis hash of plain-text fields (see README, "Redis schema"), so that an
operator can read it with ``redis-cli HGETALL``. Empty string means "not known yet".
"""

from __future__ import annotations

import enum
import math
import re
import time
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from posguard.streams.venue.events import OrderSide

__all__ = [
    "BadRecord",
    "CLOSING_STATES",
    "EvidenceSource",
    "IN_FLIGHT_STATES",
    "InvalidTransition",
    "PRESCREEN_DECIMAL",
    "PRESCREEN_WHOLE",
    "PositionRecord",
    "Protection",
    "RETIRED_FIELDS",
    "RecordDefect",
    "State",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "decode_prescreened",
    "decode_record",
    "describe_transitions",
    "is_protected",
    "open_size",
    "utc_now",
]


class State(enum.StrEnum):
    """Lifecycle states (DESIGN.md section 5). `is_live` states may hold a real position."""

    SUBMITTING = "submitting"  # record written, entry order about to be sent (write-ahead)
    SUBMITTED = "submitted"  # the venue acknowledged the entry order
    VERIFYING = "verifying"  # waiting for evidence of the fill
    OPEN = "open"  # filled, stop not yet confirmed
    PROTECTED = "protected"  # filled and a live stop-loss confirmed
    CLOSING = "closing"  # our reduce-only close is in flight
    EMERGENCY_CLOSING = "emergency_closing"  # no stop could be placed; closing instead
    CLOSE_FAILING = "close_failing"  # our close keeps failing; still trying; may be open and bare
    UNVERIFIED = "unverified"  # evidence incomplete: treated as possibly open, protected, audited
    CLOSED = "closed"  # flat after our own close, proven
    CLOSED_EXTERNALLY = "closed_externally"  # filled, then closed by a stop/liquidation, proven
    CLOSED_BY_TAKE_PROFIT = "closed_by_take_profit"  # filled, then closed by its take-profit, proven
    REJECTED = "rejected"  # the entry was confirmed not filled

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        return not self.is_terminal


TERMINAL_STATES = frozenset({State.CLOSED, State.CLOSED_EXTERNALLY, State.CLOSED_BY_TAKE_PROFIT, State.REJECTED})
IN_FLIGHT_STATES = frozenset({State.SUBMITTING, State.SUBMITTED, State.VERIFYING})
CLOSING_STATES = frozenset({State.CLOSING, State.EMERGENCY_CLOSING, State.CLOSE_FAILING})
"""A close of ours is under way: after a restart it is driven on as a close, never as an entry."""

_BY_VENUE = frozenset({State.CLOSED_EXTERNALLY, State.CLOSED_BY_TAKE_PROFIT})
"""The venue's own exits (a stop, a liquidation, the take-profit): wherever one may end a
record, so may the other; which it was is the proof's to say (`proof.Gone.state`)."""
_ENDINGS = frozenset({State.CLOSED}) | _BY_VENUE
TRANSITIONS: dict[State, frozenset[State]] = {
    State.SUBMITTING: frozenset({State.SUBMITTED, State.VERIFYING, State.REJECTED}),
    State.SUBMITTED: frozenset({State.VERIFYING}),
    State.VERIFYING: frozenset({State.OPEN, State.UNVERIFIED, State.REJECTED} | _BY_VENUE),
    State.OPEN: frozenset({State.PROTECTED, State.CLOSING, State.EMERGENCY_CLOSING} | _BY_VENUE),
    State.PROTECTED: frozenset({State.CLOSING, State.EMERGENCY_CLOSING} | _BY_VENUE),
    State.UNVERIFIED: frozenset({State.OPEN, State.PROTECTED, State.CLOSING, State.EMERGENCY_CLOSING,
                                 State.REJECTED} | _BY_VENUE),
    State.CLOSING: frozenset({State.PROTECTED, State.CLOSE_FAILING} | _ENDINGS),
    State.EMERGENCY_CLOSING: frozenset({State.CLOSING, State.CLOSE_FAILING} | _ENDINGS),
    State.CLOSE_FAILING: frozenset({State.CLOSING} | _ENDINGS),
    State.CLOSED: frozenset(),
    State.CLOSED_EXTERNALLY: frozenset(),
    State.CLOSED_BY_TAKE_PROFIT: frozenset(),
    State.REJECTED: frozenset(),
}
"""Every state change a record may make, and no other (the README's lifecycle table is rendered
from this by `describe_transitions`, and a test holds the two equal). A new record starts in
``submitting`` (an intent's entry) or ``open`` (a position the venue holds that posguard adopts);
a terminal state is left only by a new record for a new intent. ``closing -> protected`` is a
partial close done (`PositionRecord.partial_close_qty` set; `PositionRecord.transition` refuses
it for a close of the whole position)."""
assert set(TRANSITIONS) == set(State)


class InvalidTransition(RuntimeError):
    """A step tried a state change the lifecycle does not allow: a bug, never a venue's doing.
    Nothing is written; the actor fails and is restarted, and resumes from the record in Redis."""


def describe_transitions() -> str:
    """The transition table as text, one line per state (README, "How it works")."""
    width = max(len(state) for state in State)
    lines = []
    for state, targets in TRANSITIONS.items():
        ordered = [str(t) for t in State if t in targets]
        lines.append(f"{state:<{width}} -> {', '.join(ordered) if ordered else '(terminal)'}")
    return "\n".join(lines)

EvidenceSource = Literal["", "push", "rest"]


class Protection(enum.StrEnum):
    """What is known about the position's stop-loss: the one stored fact that "is this
    position protected" is read from (`is_protected`). Set only by the step that learned it."""

    NONE = "none"  # no stop known to be live (none asked for, or the one asked for is gone)
    ATTACHED_REQUESTED = "attached_requested"  # the entry was sent with a stop attached; not yet seen
    ATTACHED_CONFIRMED = "attached_confirmed"  # the venue's position shows a stop of its own
    STOP_ORDER = "stop_order"  # a separate reduce-only stop order the venue answered as armed


def open_size(record: PositionRecord) -> float:
    """The position's open size as the record knows it: what the entry filled (or, before any
    fill is known, what it asked for) less what our partial closes took off (`closed_qty`).
    The one home of "how big is the position": every stop, take-profit and close is sized from
    it. The proofs (`posguard.actors.proof`) count exits against the entry's fills instead, so a
    partial close's fills are exits there like any other."""
    return max(0.0, round((record.filled_qty or record.qty) - record.closed_qty, 12))


def is_protected(record: PositionRecord) -> bool:
    """Whether a live stop is known to guard the record's position: the venue showed it. A stop
    asked for (attached to the entry, or an order id written ahead) is not protection yet."""
    return record.protection in (Protection.ATTACHED_CONFIRMED, Protection.STOP_ORDER)


class PositionRecord(msgspec.Struct, kw_only=True):
    symbol: str
    intent_id: str
    state: State
    side: OrderSide
    qty: float
    stop_price: float
    client_order_id: str
    order_id: str = ""
    filled_qty: float = 0.0
    """What the entry filled, by proven fills (order state, executions); a smaller position
    snapshot never lowers it (a lagging list), a larger one raises it."""
    entry_price: float = 0.0
    evidence: EvidenceSource = ""
    protection: Protection = Protection.NONE
    stop_client_order_id: str = ""
    stop_scope: Literal["", "whole_position"] = ""
    """``whole_position``: the live stop (`stop_client_order_id`) is a whole-position stop
    (Binance closePosition), which covers the position at any size
    (`posguard.actors.coverage.record_stop_covers_any_size`); empty: sized, or none."""
    stop_attempts: int = 0
    take_profit: float = 0.0
    """The take-profit's trigger price; 0: none. Attached to the entry where the venue attaches
    stops (Bybit ``takeProfit``, Full mode), else its own order (`take_profit_client_order_id`),
    placed only once the stop is live."""
    take_profit_client_order_id: str = ""
    """The separate take-profit order's id, written before it is sent; "" where the take-profit
    rides on the entry (or there is none)."""
    amend_intent_id: str = ""
    """The amend intent under way (`lifecycle.amend`), written ahead with the new stop and
    take-profit in ``stop_price``/``take_profit`` before anything is sent (I5); "" once done."""
    replaced_stop_client_order_id: str = ""
    """The stop order an amend replaces, cancelled only once its replacement is live; "" when
    there is none left to cancel."""
    close_client_order_id: str = ""
    close_intent_id: str = ""
    partial_close_qty: float = 0.0
    """The size the close under way asks for (contracts, on the venue's step), written ahead
    with `close_intent_id`: a restart resumes it as the partial close it is. 0: a close of the
    whole position (or none under way). Cleared when the partial close is done."""
    closed_qty: float = 0.0
    """What our partial closes took off the position, proven by their orders' fills; the open
    size is ``filled_qty - closed_qty`` (`open_size`)."""
    reason: str = ""
    rest_calls: int = 0  # REST calls this lifecycle made (the push path makes none)
    sent_ms: int = 0  # venue clock (ms) just before the entry order was sent
    settled_ms: int = 0  # venue clock (ms) when the record reached a terminal state
    flat_ms: int = 0
    """Venue clock (ms) at which the venue was last proven flat on this symbol (`actors.proof`);
    a snapshot older than this that shows a position is lag. 0: never proven."""
    sent_to_verified_ms: float | None = None  # local clock: order sent -> fill evidence in hand
    sent_to_protected_ms: float | None = None  # local clock: order sent -> stop confirmed live
    created_at: str = ""
    updated_at: str = ""
    filled_at: str = ""
    protected_at: str = ""
    closed_at: str = ""

    def transition(self, to: State, reason: str | None = None) -> None:
        """Change state through the one table of allowed changes (`TRANSITIONS`).

        ``reason`` replaces the record's reason when given. A terminal state stamps
        ``closed_at``. Raises `InvalidTransition` for a change the table does not list: the
        record is left as it was.
        """
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(
                f"{self.symbol}: {self.state} -> {to} is not a lifecycle transition (intent {self.intent_id})"
            )
        if self.state is State.CLOSING and to is State.PROTECTED and not self.partial_close_qty:
            raise InvalidTransition(f"{self.symbol}: closing -> protected is only the end of a partial close, and"
                                    f" the close under way ({self.close_intent_id}) is of the whole position")
        self.state = to
        if reason is not None:
            self.reason = reason
        if to.is_terminal:
            self.closed_at = utc_now()

    def to_fields(self) -> dict[str, str]:
        """Plain-text hash fields: numbers in their shortest exact form, unknown as ''."""
        return {
            name: "" if (value := getattr(self, name)) is None else str(value)
            for name in self.__struct_fields__
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str], *, symbol: str | None = None) -> PositionRecord:
        """The record a hash holds; `BadRecord` if it is not usable (see `decode_record`)."""
        return decode_record(fields, symbol=symbol)


class RecordDefect(msgspec.Struct, frozen=True, kw_only=True):
    """Why a position hash is not a usable record: the first field that does not parse."""

    symbol: str
    """The symbol the hash is stored under (its key), whatever its own fields say."""
    field: str
    """The field that does not parse; empty when the hash as a whole is unusable."""
    value: str
    """The field's text as stored, shortened to `SHOWN_VALUE_CHARS` for logs and alerts."""
    reason: str
    key: str = ""
    """The Redis key of the hash (set by the store, which owns key names)."""

    def describe(self) -> str:
        where = self.key or f"the record of {self.symbol}"
        if not self.field:
            return f"{where}: {self.reason}"
        return f"{where}: field {self.field} = {self.value!r}: {self.reason}"


class BadRecord(ValueError):
    """A position hash that is not a usable record. Its symbol is quarantined: the hash is left
    as it is for a person, intents are refused, and the venue's position is guarded."""

    def __init__(self, defect: RecordDefect) -> None:
        super().__init__(defect.describe())
        self.defect = defect


SHOWN_VALUE_CHARS = 80
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"\d+")
_TIMESTAMPS = frozenset({"created_at", "updated_at", "filled_at", "protected_at", "closed_at"})
_NEVER_EMPTY = frozenset({"symbol", "intent_id", "client_order_id"})


def _field_parser(name: str, kind: Any, required: bool) -> Callable[[str], Any]:
    """How one field's value is read from its text, exactly as `PositionRecord.to_fields`
    writes it (built once per field: decoding runs for every record at every audit).

    The parser raises ValueError with the reason. No stripping, no lenient parsing: text
    posguard did not write is not guessed at.
    """
    optional = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is str:
        never_empty, timestamp = name in _NEVER_EMPTY, name in _TIMESTAMPS

        def parse_text(text: str) -> Any:
            if never_empty and text == "":
                raise ValueError("must not be empty")
            if timestamp and text != "" and (reason := _timestamp_defect(text)):
                raise ValueError(reason)
            return text

        return _or_none(parse_text) if optional else parse_text
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        allowed: list[Any] | None = [m.value for m in kind]
        convert: Callable[[str], Any] = kind
    else:
        allowed = list(typing.get_args(kind)) if typing.get_origin(kind) is Literal else None
        convert = str
    if allowed is not None:
        members, listed = frozenset(allowed), ", ".join(repr(a) for a in allowed)

        def parse_choice(text: str) -> Any:
            if text not in members:
                raise ValueError(f"not one of {listed}")
            return convert(text)

        return _or_none(parse_choice) if optional else parse_choice
    if kind is int:
        def parse_number(text: str) -> Any:
            if not _INTEGER.fullmatch(text):
                raise ValueError("not a whole number >= 0 (digits only)")
            return int(text)
    elif kind is float:
        def parse_number(text: str) -> Any:
            if not _DECIMAL.fullmatch(text):
                raise ValueError("not a decimal number (digits, one '.', an optional exponent; no spaces)")
            value = float(text)
            if not math.isfinite(value) or value < 0:
                raise ValueError("not a finite number >= 0")
            return value
    else:  # pragma: no cover
        raise AssertionError(f"PositionRecord.{name}: no parser for {kind!r}")
    if optional:
        return _or_none(parse_number)
    if not required:
        return lambda text: msgspec.NODEFAULT if text == "" else parse_number(text)  # empty: not known yet
    return parse_number


def _timestamp_defect(text: str) -> str:
    """Why ``text`` is not a timestamp field's value ("" if it is): ISO 8601 with its offset."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return "not an ISO 8601 timestamp"
    return "" if stamp.tzinfo is not None else "a timestamp without its UTC offset"


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text == "" else parse(text)


def decode_record(fields: Mapping[str, str | bytes], *, symbol: str | None = None) -> PositionRecord:
    """The one decision of what a usable position record is; raises `BadRecord` otherwise.

    Strict on purpose: a field that does not parse exactly as posguard writes it (a stray
    space, an unknown state, an empty required number) makes the whole record unusable,
    because acting on a guessed value could mean a wrong size, side or stop on the venue.
    ``symbol`` is the symbol of the key the hash was read from; the record must agree.
    Fields posguard does not know are ignored; a missing optional field takes its default.
    """
    values: dict[str, Any] = {}
    for name, required, parse in _PARSERS:
        text = fields.get(name)
        if text is None:
            if required:
                raise _bad(fields, symbol, name, "<missing>", "the field is missing")
            continue
        if not isinstance(text, str):  # bytes that are not UTF-8 (the client could not decode them)
            raise _bad(fields, symbol, name, repr(text), "not UTF-8 text")
        try:
            value = parse(text)
        except ValueError as exc:
            raise _bad(fields, symbol, name, text, str(exc)) from None
        if value is not msgspec.NODEFAULT:
            values[name] = value
    if symbol is not None and values["symbol"] != symbol:
        raise _bad(fields, symbol, "symbol", values["symbol"], f"not the symbol of its key ({symbol})")
    if "protection" not in fields:
        values["protection"] = _protection_before_the_field(fields, symbol, confirmed=bool(values.get("protected_at")))
    return PositionRecord(**values)


RETIRED_FIELDS = ("stop_source",)
"""Fields an earlier version wrote and this one only reads (the store removes them on write)."""
_STOP_SOURCES = {"": Protection.NONE, "attached": Protection.ATTACHED_REQUESTED, "order": Protection.STOP_ORDER}


def _protection_before_the_field(fields: Mapping[str, str | bytes], symbol: str | None, *,
                                 confirmed: bool) -> Protection:
    """A record written before `protection` existed, read as that version read it: its
    ``stop_source`` said ``attached`` from the moment the entry was sent, and only a set
    ``protected_at`` told that the attached stop had been seen on the venue."""
    text = fields.get("stop_source", "")
    if not isinstance(text, str) or text not in _STOP_SOURCES:
        raise _bad(fields, symbol, "stop_source", text if isinstance(text, str) else repr(text),
                   "not one of '', 'attached', 'order'")
    protection = _STOP_SOURCES[text]
    if protection is Protection.ATTACHED_REQUESTED and confirmed:
        return Protection.ATTACHED_CONFIRMED
    return protection


def _bad(fields: Mapping[str, str | bytes], symbol: str | None, name: str, text: str, reason: str) -> BadRecord:
    shown = text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS] + f"... ({len(text)} chars)"
    own = fields.get("symbol", "")
    own_symbol = (own if isinstance(own, str) else repr(own))[:SHOWN_VALUE_CHARS]
    return BadRecord(RecordDefect(symbol=symbol or own_symbol, field=name, value=shown, reason=reason))


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(PositionRecord)
_PARSERS: list[tuple[str, bool, Callable[[str], Any]]] = [
    (info.name, info.required, _field_parser(info.name, _FIELD_TYPES[info.name], info.required))
    for info in msgspec.structs.fields(PositionRecord)
]


_NUMBER_KINDS: dict[str, Any] = {
    name: next((a for a in typing.get_args(kind) if a is not type(None)), kind) for name, kind in _FIELD_TYPES.items()
}
PRESCREEN_WHOLE = tuple(name for name, kind in _NUMBER_KINDS.items() if kind is int)
PRESCREEN_DECIMAL = tuple(name for name, kind in _NUMBER_KINDS.items() if kind is float)
"""The numeric fields of a record, by kind, for `decode_prescreened`'s screen: a whole-number
field's text must be ASCII digits only, a decimal's an ASCII digit then only digits and
``.eE+-``; an empty one is left out (its default, as `decode_record` reads "")."""
_PRESCREENED = msgspec.json.Decoder(PositionRecord, strict=False)


def decode_prescreened(document: str | bytes, *, symbol: str) -> PositionRecord | None:
    """The record a screened JSON copy of a position hash holds, or None where this fast path
    cannot vouch for it: then `decode_record` reads the hash and decides. The fast path reads a
    whole record in one msgspec call (an audit or a start-up reads every record, 10,000 of
    them on a large account), where `decode_record` spends Python work on every field.

    ``document`` is a JSON object of the hash's fields as strings (never a guess: any field
    that was not text posguard could have written is a reason to return None), without the
    empty numeric fields and only where every numeric field passed the screen
    (`PRESCREEN_WHOLE`, `PRESCREEN_DECIMAL`) and ``protection`` is present (an older record's
    is read from ``stop_source`` by `decode_record`). msgspec's lax mode then turns numeric
    text into numbers; on screened text it accepts only what `decode_record`'s parsers
    accept, with the same values (no leading sign, no inf or nan, no ``null``: the screen lets
    none through; tests/test_record_scan.py fuzzes it against `decode_record`), and whatever
    it refuses goes to `decode_record`, so the verdicts never differ. Its checks that msgspec cannot make
    (never-empty text, timestamps, the key's symbol) are made here by the same rules. So the
    contract: a record returned here is the one `decode_record` would return for the hash."""
    try:
        record = _PRESCREENED.decode(document)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if record.symbol != symbol or not record.intent_id or not record.client_order_id:
        return None
    for name in _TIMESTAMPS:
        text = getattr(record, name)
        if text and _timestamp_defect(text):
            return None
    return record


def utc_now() -> str:
    """Wall-clock UTC time for humans reading the record (not used for any decision)."""
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
