"""Client order ids, derived from the intent so that a retry can never become a new order.

The same intent always yields the same ids, across retries, restarts and replays (I3). Ids fit
both Bybit's orderLinkId and Binance's newClientOrderId (at most 36 of ``[A-Za-z0-9_-]``).
They start with ``pg`` so the audit can tell posguard's orders from anything else on the
account.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["ENTRY_SUFFIX", "PREFIX", "close_id", "entry_id", "is_entry_id", "is_ours", "stop_id"]

PREFIX = "pg"
ENTRY_SUFFIX = "-e"


def _digest(account: str, intent_id: str) -> str:
    raw = hashlib.blake2b(f"{account}\x00{intent_id}".encode(), digest_size=10).digest()
    return base64.b32encode(raw).decode().lower()


def entry_id(account: str, intent_id: str) -> str:
    return f"{PREFIX}{_digest(account, intent_id)}{ENTRY_SUFFIX}"


def is_entry_id(client_order_id: str) -> bool:
    """An entry order's id (as opposed to a stop's or a close's): its fills open a position,
    so they never end one."""
    return client_order_id.endswith(ENTRY_SUFFIX)


def stop_id(account: str, intent_id: str, attempt: int) -> str:
    """One id per placement attempt: a rejected stop's id is spent on some venues."""
    return f"{PREFIX}{_digest(account, intent_id)}-s{attempt}"


def close_id(account: str, intent_id: str, attempt: int = 0) -> str:
    return f"{PREFIX}{_digest(account, intent_id)}-c{attempt}"


def is_ours(client_order_id: str) -> bool:
    return client_order_id.startswith(PREFIX) and "-" in client_order_id
