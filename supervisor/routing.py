"""Event routing: which venue pushes an actor must hear about beyond the evidence board.

An actor verifying an entry reads the board itself; what nothing else would make it look at
is its position ending under it (a stop or a liquidation filling, the position pushed flat), so
those pushes nudge it, when its record may be live (a symbol with none has nothing to end, and
its actor would only read Redis to find that). A stream coming back means pushes were missed while it was down: the
account is audited.
"""

from __future__ import annotations

from collections.abc import Callable

from posguard.actors.ids import is_entry_id
from posguard.streams.venue.events import Execution, Position, StreamStatus, VenueEvent
from posguard.supervisor.actor_registry import ActorRegistry

__all__ = ["EventRouter"]


class EventRouter:
    """An ingestor listener: runs for every event, after the board has applied it."""

    def __init__(self, actors: ActorRegistry, request_audit: Callable[[str], None]) -> None:
        self.actors = actors
        self.request_audit = request_audit
        self.ctx = actors.ctx

    def route(self, event: VenueEvent) -> None:
        """Tell an actor when the venue pushed something that may end its position; audit
        after a stream comes back (what happened while it was down was not pushed)."""
        symbol = ""
        match event:
            case Position(size=0.0) | Execution(client_order_id=""):
                symbol = event.symbol
            case Execution() if not is_entry_id(event.client_order_id):
                symbol = event.symbol
            case StreamStatus(connected=True, reason="reconnected"):
                self.request_audit(f"stream {event.topic} reconnected")
        if symbol and self.ctx.store.may_be_live(symbol):  # else no live record there to end
            actor = self.actors.get(symbol)
            if actor is not None:
                actor.nudge()
