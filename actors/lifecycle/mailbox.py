"""What an actor's mailbox carries: intents (as tickets), nudges from the venue, audit repairs.

One mailbox per symbol, served in order, is what makes the actor the symbol's one owner (I4).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from posguard.actors.findings import Finding
from posguard.actors.intents import Intent, IntentRecord

__all__ = ["MailboxFull", "MailboxItem", "Nudge", "Repair", "Ticket"]


class MailboxFull(RuntimeError):
    pass


class Ticket:
    """A caller's handle on a submitted intent: wait for `done`, then read `result`."""

    def __init__(self, intent: Intent, body: str) -> None:
        self.intent = intent
        self.body = body
        """What the intent asked as it arrived (`body_of`), before admission rounded its qty or
        priced its ``stop_distance``: the intent record keeps this one."""
        self.owned = anyio.Event()
        """Set once the actor has written the intent ahead: from then on a crash is
        recovered from Redis, so a queue may forget the intent (acknowledge it)."""
        self.done = anyio.Event()
        self.result: IntentRecord | None = None
        self._on_finish: list[Callable[[IntentRecord], None]] = []

    def on_finish(self, callback: Callable[[IntentRecord], None]) -> None:
        """Call ``callback`` with the answer when the intent is answered (at once if it is):
        for bookkeeping that must not wait on a task (admission's slot)."""
        if self.result is not None:
            callback(self.result)
        else:
            self._on_finish.append(callback)

    def finish(self, result: IntentRecord) -> None:
        self.result = result
        self.owned.set()
        self.done.set()
        callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            callback(result)

    async def wait(self) -> IntentRecord:
        await self.done.wait()
        assert self.result is not None
        return self.result


class Nudge:
    """Mailbox item: the venue pushed something that may have closed this symbol's position."""


class Repair:
    """Mailbox item: an audit finding for this symbol, to be carried out by its owner."""

    def __init__(self, finding: Finding) -> None:
        self.finding = finding
        self.done = anyio.Event()
        self.outcome = ""


MailboxItem = Ticket | Nudge | Repair
