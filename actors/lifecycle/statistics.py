"""A snapshot of one actor's mailbox, for whoever must wait on it or report it.

Benchmarks and the supervisor's callers ask "is this actor done with its work?" without
reaching into the mailbox's streams; the answer is a value, so it can be logged or compared.
"""

from __future__ import annotations

import msgspec

__all__ = ["ActorStatistics"]


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    queued: int
    """Mailbox items waiting to be served (intents, nudges, audit repairs)."""
    senders_waiting: int
    """Audit repairs blocked on a full mailbox (intents and nudges never wait)."""
    waiting_for_work: bool
    """The actor's task is parked on its empty mailbox."""
    nudge_pending: bool
    """A nudge is queued and not yet served (a further nudge is dropped as redundant)."""
    busy: bool
    """A step is running (resuming, reconciling, or serving a mailbox item)."""
    serving: str
    """The id of the intent being served, or "" when no intent is."""
