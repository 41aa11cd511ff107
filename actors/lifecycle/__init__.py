"""The per-symbol actor's lifecycle: its mailbox, and the steps it hands each item to.

`actor` is the mailbox and its dispatch; `entry`, `closing`, `recovery` and `repairs` are
the steps (module functions on the `ActorContext` and the record); `replies` answers intents.
"""

from __future__ import annotations

from posguard.actors.lifecycle.actor import SymbolActor
from posguard.actors.lifecycle.mailbox import MailboxFull, Ticket
from posguard.actors.lifecycle.replies import IntentConflict
from posguard.actors.lifecycle.statistics import ActorStatistics

__all__ = ["ActorStatistics", "IntentConflict", "MailboxFull", "SymbolActor", "Ticket"]
