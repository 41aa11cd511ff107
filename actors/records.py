"""The position record: what posguard believes about one symbol, written before each step.

It is stored as a Redis hash of plain-text fields (see README, "Redis schema"), so that an
operator can read it with ``redis-cli HGETALL``. Empty string means "not known yet".
"""

from __future__ import annotations

import enum
import time
from datetime import UTC, datetime
from typing import Literal

import msgspec

from posguard.streams.venue.events import OrderSide

__all__ = [
    "EvidenceSource",
    "IN_FLIGHT_STATES",
    "PositionRecord",
    "State",
    "StopSource",
    "TERMINAL_STATES",
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
    UNVERIFIED = "unverified"  # evidence incomplete: treated as possibly open, protected, audited
    CLOSED = "closed"  # flat after our own close, proven
    CLOSED_EXTERNALLY = "closed_externally"  # filled, then closed by a stop/liquidation, proven
    REJECTED = "rejected"  # the entry was confirmed not filled

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        return not self.is_terminal


TERMINAL_STATES = frozenset({State.CLOSED, State.CLOSED_EXTERNALLY, State.REJECTED})
IN_FLIGHT_STATES = frozenset({State.SUBMITTING, State.SUBMITTED, State.VERIFYING})

EvidenceSource = Literal["", "push", "rest"]
StopSource = Literal["", "attached", "order"]


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
    entry_price: float = 0.0
    evidence: EvidenceSource = ""
    stop_source: StopSource = ""
    stop_client_order_id: str = ""
    stop_attempts: int = 0
    close_client_order_id: str = ""
    close_intent_id: str = ""
    reason: str = ""
    rest_calls: int = 0  # REST calls this lifecycle made (the push path makes none)
    sent_ms: int = 0  # venue clock (ms) just before the entry order was sent
    settled_ms: int = 0  # venue clock (ms) when the record reached a terminal state
    sent_to_verified_ms: float | None = None  # local clock: order sent -> fill evidence in hand
    sent_to_protected_ms: float | None = None  # local clock: order sent -> stop confirmed live
    created_at: str = ""
    updated_at: str = ""
    filled_at: str = ""
    protected_at: str = ""
    closed_at: str = ""

    def to_fields(self) -> dict[str, str]:
        """Plain-text hash fields: numbers in their shortest exact form, unknown as ''."""
        return {
            name: "" if (value := getattr(self, name)) is None else str(value)
            for name in self.__struct_fields__
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> PositionRecord:
        # Empty text means "unknown": leave the field at its default rather than parse "".
        present = {k: v for k, v in fields.items() if v != "" or k in _TEXT_FIELDS}
        return msgspec.convert(present, cls, strict=False)


_TEXT_FIELDS = frozenset(
    f.name for f in msgspec.structs.fields(PositionRecord) if f.type is str or f.name in {"evidence", "stop_source"}
)


def utc_now() -> str:
    """Wall-clock UTC time for humans reading the record (not used for any decision)."""
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
