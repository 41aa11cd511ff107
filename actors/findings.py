"""An audit finding: what the audit saw on one symbol and what was done about it.

Written to the audit stream in Redis (``posguard:{acct}:audit``) field by field.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from posguard.actors.records import RecordDefect
from posguard.streams.venue.events import Position

__all__ = ["Finding", "FindingKind"]

FindingKind = Literal[
    "orphan", "unprotected", "size_mismatch", "unverified", "in_flight", "not_visible", "stale_stop", "bad_record",
    "stop_not_filled",
]


class Finding(msgspec.Struct, kw_only=True):
    symbol: str
    kind: FindingKind
    seen: str
    """What the audit saw, in words an operator can check."""
    action: str = ""
    """What was done about it (or, in a dry run, what would be)."""
    position: Position | None = None
    stop_client_order_id: str = ""
    defect: RecordDefect | None = None
    """For ``bad_record``: which field of the symbol's hash does not parse, and its value."""
    intent_id: str = ""
    """For ``stop_not_filled``: whose position it is about (the symbol's record may have moved on)."""
