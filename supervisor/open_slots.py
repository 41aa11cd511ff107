"""How many positions are open or about to be: the home of `risk.max_open_positions`.

The count cannot be read from Redis when an entry arrives: a burst of entries for different
symbols is accepted before any of their actors has written a record (issue 13, defect 5). So
admission *reserves* a slot when it accepts an entry and gives it back when the intent is
answered; a symbol whose record is live holds its slot until the record reaches a terminal
state (every saved transition is seen here). One symbol is one slot, whatever number of
intents it has queued: a venue in one-way mode holds one position per symbol.

An unusable (quarantined) hash may stand for an open position, so it holds a slot too; it
changes without a transition (an operator fixes or deletes it), so that set is taken afresh
from every read of all records (start-up and each audit), not from transitions.
"""

from __future__ import annotations

import msgspec

from posguard.actors.intents import IntentRefused
from posguard.actors.records import PositionRecord
from posguard.actors.store.positions import RecordScan

__all__ = ["OpenSlots", "SlotStatistics"]


class SlotStatistics(msgspec.Struct, frozen=True, kw_only=True):
    limit: int
    """`risk.max_open_positions`; 0: no limit (slots are still counted)."""
    occupied: int
    """Symbols that hold a slot: a live (or unusable) record, or an entry being handled."""
    live: int
    """Symbols whose record is live, or unusable (it may stand for an open position)."""
    reserved: int
    """Entries accepted and not yet answered."""


class OpenSlots:
    """Slots by symbol: the live records' and the accepted entries' (see the module doc)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._live: set[str] = set()
        self._unusable: set[str] = set()
        self._reserved: dict[str, str] = {}  # intent id -> symbol

    def count_existing(self, scan: RecordScan) -> None:
        """At start-up: every live record holds a slot, and so does every unusable one."""
        self._live = {r.symbol for r in scan.usable if r.state.is_live}
        self.count_unusable(scan)

    def count_unusable(self, scan: RecordScan) -> None:
        """A read of every record (an audit's): the unusable hashes now, not when first seen,
        so a hash the operator fixed or deleted gives its slot back."""
        self._unusable = {d.symbol for d in scan.bad}

    def reserve(self, intent_id: str, symbol: str) -> None:
        """Take a slot for an accepted entry, or refuse it naming the limit."""
        occupied = self._occupied()
        if self.limit and symbol not in occupied and len(occupied) >= self.limit:
            raise IntentRefused(
                f"risk.max_open_positions: {len(occupied)} positions already live or being opened,"
                f" the limit is {self.limit}"
            )
        self._reserved[intent_id] = symbol

    def release(self, intent_id: str) -> None:
        """The entry was answered: its symbol keeps a slot only if its record is live."""
        self._reserved.pop(intent_id, None)

    def on_transition(self, record: PositionRecord, note: str) -> None:
        """Every saved record: a live one holds its symbol's slot, a terminal one frees it."""
        if record.state.is_live:
            self._live.add(record.symbol)
        else:
            self._live.discard(record.symbol)

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(limit=self.limit, occupied=len(self._occupied()),
                              live=len(self._live | self._unusable), reserved=len(self._reserved))

    def _occupied(self) -> set[str]:
        return self._live | self._unusable | set(self._reserved.values())
