"""A symbol whose position hash is not a usable record: quarantined, and guarded from the venue.

posguard cannot act on a record it cannot read (a wrong size, side or stop would be worse
than none), and must not overwrite it either: the hash is evidence of whatever wrote it, so
it is left exactly as it is for a person. Meanwhile the symbol is guarded from the venue's
own view, like an orphan but **without adopting it**: a venue position that no stop covers
gets a reduce-only stop at `ProtectionSettings.orphan_stop_distance` (closed reduce-only if
no stop can be placed, I2). Every step of that guard is written ahead to the journal only
(`Store.append_journal`), never to the hash. Intents for the symbol are refused, naming the
hash, until it is fixed or deleted (`replies.bad_record_refusal`); the next audit after that takes the symbol over (the
guard's stop is then cancelled as stale and the record's own protection applies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.coverage import covered_qty, covers
from posguard.actors.findings import Finding
from posguard.actors.intents import IntentRecord
from posguard.actors.lifecycle.protection import (
    describe_outcome,
    orphan_stop_price,
    protect,
    record_for_venue_position,
)
from posguard.actors.records import BadRecord, PositionRecord, RecordDefect
from posguard.actors.store.positions import Store
from posguard.streams.venue.events import Order, Position

__all__ = ["assess_quarantined", "guard"]


def assess_quarantined(symbol: str, defect: RecordDefect, position: Position | None, stops: Sequence[Order]) -> Finding:
    """The audit's one finding for a quarantined symbol. ``position`` is kept on the finding
    only when the stops do not cover it (`posguard.actors.coverage`): that is what `guard`
    must protect."""
    if position is None:
        venue, action, bare = "venue lists no position", "leave the hash for a person; nothing on the venue to guard", None
    else:
        venue = f"venue holds {position.side} {position.size} at {position.entry_price}, stops cover {covered_qty(position, stops)}"
        if covers(position, stops):
            action, bare = "leave the hash for a person; the venue position is covered by stops", None
        else:
            action, bare = "leave the hash for a person; protect the venue position with a stop (not adopted)", position
    return Finding(symbol=symbol, kind="bad_record", defect=defect, position=bare,
                   seen=f"record unusable: {defect.describe()}; {venue}", action=action)


async def guard(ctx: ActorContext, finding: Finding, *, alert: bool) -> str:
    """Carry out a ``bad_record`` finding inside the symbol's actor; returns what was done."""
    try:
        await ctx.store.load_record(finding.symbol)
    except BadRecord as exc:
        defect = exc.defect
    else:
        return "the record is usable again (or gone); the next audit takes the symbol over"
    if alert:
        await ctx.alert(finding.symbol, f"bad record {defect.describe()}: quarantined; the hash is left as it is,"
                        " intents are refused and the venue position is guarded until a person fixes or deletes it")
    position = finding.position
    if position is None:
        return "left as it is for a person; nothing to protect"
    guard_record = record_for_venue_position(
        ctx, position, intent_id=ids.internal_intent_id("quarantine", position.ts_ms), stop_price=orphan_stop_price(ctx, position),
        reason=f"guarding a venue position whose record is unusable ({defect.key})",
    )
    guard_ctx = dataclasses.replace(ctx, store=_JournalOnly(ctx.store), observers=[])
    await guard_ctx.save(guard_record, f"quarantine: guarding {position.side} {position.size} (record unusable)")
    outcome = await protect(guard_ctx, guard_record, position.size, position, anyio.current_time())
    return (f"left as it is for a person; venue position {describe_outcome(outcome)}"
            f" (stop {guard_record.stop_client_order_id or 'none'} at {guard_record.stop_price})")


class _JournalOnly:
    """The store as a quarantined symbol's guard sees it: its steps go to the journal, the
    unusable hash is never written."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def save_record(self, record: PositionRecord, note: str = "", *, replies: Sequence[IntentRecord] = ()) -> None:
        await self._inner.append_journal(record, note)
