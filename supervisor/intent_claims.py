"""Intent ids handed over and not finished yet, with the body each was handed over with.

Redis' intent record is written by the actor, when it starts the intent; until then the intent
may wait in its actor's mailbox with nothing in Redis. A second intent under the same id for
another symbol, arriving in that window, would run too, with the same client order ids (issue
13, defect 4). So the id is claimed here, in memory, before the hand-off, and released when
the intent is finished; from its first write on, and after a restart, the Redis record holds
the body. Whether an id may run is decided by `intent_verdict` alone; this only remembers.
"""

from __future__ import annotations

from posguard.actors.intents import CarryOn, Intent, IntentRecord, Run, Verdict, intent_verdict

__all__ = ["IntentClaims"]


class IntentClaims:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, int]] = {}
        """intent id -> (body, how many hand-overs of it are not finished)."""

    def claim(self, intent: Intent, body: str, first: IntentRecord | None) -> Verdict:
        """The verdict for ``intent`` (``first``: its id's record in Redis); an intent that may
        go on holds its id until `release`. Synchronous, so no other claim comes between the
        decision and the hold."""
        held_body, holders = self._held.get(intent.intent_id, ("", 0))
        verdict = intent_verdict(body, first, held_body)
        if isinstance(verdict, Run | CarryOn):
            self._held[intent.intent_id] = (body, holders + 1)
        return verdict

    def release(self, intent_id: str) -> None:
        body, holders = self._held.pop(intent_id)
        if holders > 1:
            self._held[intent_id] = (body, holders - 1)

    def __len__(self) -> int:
        return len(self._held)
