"""Redis key names. Part of posguard's interface: operators type these into redis-cli.

Every key starts with ``posguard:`` and carries the account in a hash tag, so that all of one
account's keys fall into one Redis Cluster slot and a MULTI over them is legal there too.
"""

from __future__ import annotations

import msgspec

from posguard.actors.store.client import RedisClient

__all__ = ["Keys", "delete_account_keys"]


class Keys(msgspec.Struct, frozen=True):
    account: str

    @property
    def prefix(self) -> str:
        return f"posguard:{{{self.account}}}"

    def position(self, symbol: str) -> str:
        """Hash: the position record of one symbol (its current or latest lifecycle)."""
        return f"{self.prefix}:position:{symbol}"

    @property
    def positions(self) -> str:
        """Set: every symbol that has a position record."""
        return f"{self.prefix}:positions"

    def intent(self, intent_id: str) -> str:
        """Hash: one intent, its acceptance or rejection and its final outcome."""
        return f"{self.prefix}:intent:{intent_id}"

    def reply(self, intent_id: str) -> str:
        """List: the intent's replies in order (accepted or rejected, then the outcome), as
        JSON objects, for a client to ``BLPOP``; expires a day after the last one."""
        return f"{self.prefix}:reply:{intent_id}"

    @property
    def intents(self) -> str:
        """Stream: intents from strategies (consumer group ``posguard``); see README."""
        return f"{self.prefix}:intents"

    @property
    def journal(self) -> str:
        """Stream: every state transition of every position record, in order."""
        return f"{self.prefix}:journal"

    @property
    def events(self) -> str:
        """Stream: every event the venue pushed, as received (capped)."""
        return f"{self.prefix}:events"

    def venue_position(self, symbol: str) -> str:
        """Hash: the latest position the venue pushed for a symbol."""
        return f"{self.prefix}:venue:position:{symbol}"

    def venue_order(self, client_order_id: str) -> str:
        """Hash: the latest state the venue pushed for one of our orders (expires after a day)."""
        return f"{self.prefix}:venue:order:{client_order_id}"

    @property
    def health(self) -> str:
        """Hash: stream connectivity per topic, last event times, safe mode."""
        return f"{self.prefix}:health"

    @property
    def alerts(self) -> str:
        """Stream: what a person must look at (a position possibly bare, a close failing)."""
        return f"{self.prefix}:alerts"

    @property
    def lease(self) -> str:
        """String (JSON, expires after ``lease.ttl``): the process that owns the account now:
        owner (host-pid-nonce), host, pid, since_ms and its fencing token (`store.lease`)."""
        return f"{self.prefix}:lease"

    @property
    def epoch(self) -> str:
        """String (integer): the latest fencing token; a write whose token differs is refused."""
        return f"{self.prefix}:epoch"

    @property
    def standbys(self) -> str:
        """Sorted set: processes waiting for the lease (JSON members, scored by the ms their
        presence expires); each writes only its own member."""
        return f"{self.prefix}:standbys"

    @property
    def audit(self) -> str:
        """Stream: every audit finding, what was seen and what was done."""
        return f"{self.prefix}:audit"


async def delete_account_keys(client: RedisClient, account: str) -> int:
    """Delete every key of one account (the demo starts clean); other accounts are untouched."""
    keys = [key async for key in client.scan_iter(match=f"{Keys(account).prefix}:*")]
    if keys:
        await client.delete(keys)
    return len(keys)
