"""Client order ids, derived from the intent so that a retry can never become a new order.

The same intent always yields the same ids, across retries, restarts and replays (I3). Ids fit
both Bybit's orderLinkId and Binance's newClientOrderId (at most 36 of ``[A-Za-z0-9_-]``).

The grammar, built and parsed here only (nowhere else may split an id):

    pg<stem>-e        the entry order of an intent
    pg<stem>-s<n>     its n-th stop placement attempt
    pg<stem>-c<n>     its n-th reduce-only close attempt
    pg<stem>-t<n>     its n-th take-profit placement attempt (where the venue keeps it apart)

``<stem>`` is 16 base32 characters of a keyed hash of (account, intent id): every order of one
intent shares it, which is how the audit tells which record owns a stop. Ids start with ``pg``
so the audit can tell posguard's orders from anything else on the account.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Literal

import msgspec

__all__ = [
    "ClientOrderId",
    "OrderRole",
    "PREFIX",
    "close_id",
    "entry_id",
    "internal_intent_id",
    "is_internal",
    "is_conditional",
    "is_entry_id",
    "is_ours",
    "parse",
    "same_intent",
    "stop_id",
    "take_profit_id",
]

PREFIX = "pg"
OrderRole = Literal["entry", "stop", "close", "take_profit"]
_ROLE_LETTER: dict[OrderRole, str] = {"entry": "e", "stop": "s", "close": "c", "take_profit": "t"}
_ROLE_OF = {letter: role for role, letter in _ROLE_LETTER.items()}
_GRAMMAR = re.compile(rf"{PREFIX}(?P<stem>[a-z2-7]{{16}})-(?P<letter>[esct])(?P<attempt>\d*)")


class ClientOrderId(msgspec.Struct, frozen=True):
    """One of posguard's client order ids, taken apart."""

    stem: str
    """Shared by every order of one intent on one account."""
    role: OrderRole
    attempt: int
    """The stop or close attempt number; 0 for an entry."""


def _stem(account: str, intent_id: str) -> str:
    raw = hashlib.blake2b(f"{account}\x00{intent_id}".encode(), digest_size=10).digest()
    return base64.b32encode(raw).decode().lower()


def _build(account: str, intent_id: str, role: OrderRole, attempt: int | None) -> str:
    return f"{PREFIX}{_stem(account, intent_id)}-{_ROLE_LETTER[role]}{'' if attempt is None else attempt}"


InternalKind = Literal["adopt", "quarantine", "emergency"]


def internal_intent_id(kind: InternalKind, key: str | int) -> str:
    """The intent id of work posguard starts itself (adopting an orphan, guarding a quarantined
    symbol, an emergency close of an entry): ``<kind>/<key>``. ``/`` is never in a strategy's
    intent id (`INTENT_ID_PATTERN`), so no intent can share its id, and so its client order
    ids, with one of these (an intent named ``x:emergency`` once took an old emergency close's
    fill for its own)."""
    return f"{kind}/{key}"


def is_internal(intent_id: str) -> bool:
    """Work posguard started itself (`internal_intent_id`): an adopted or guarded position's
    record has no entry order of posguard's on the venue."""
    return "/" in intent_id


def entry_id(account: str, intent_id: str) -> str:
    return _build(account, intent_id, "entry", None)


def stop_id(account: str, intent_id: str, attempt: int) -> str:
    """One id per placement attempt: a rejected stop's id is spent on some venues."""
    return _build(account, intent_id, "stop", attempt)


def take_profit_id(account: str, intent_id: str, attempt: int) -> str:
    """A separate take-profit order's id (Binance); one per placement attempt, like a stop's."""
    return _build(account, intent_id, "take_profit", attempt)


def close_id(account: str, intent_id: str, attempt: int = 0) -> str:
    return _build(account, intent_id, "close", attempt)


def parse(client_order_id: str) -> ClientOrderId | None:
    """The parts of one of posguard's ids; None for any other id (another tool's, a hand-placed
    order's, or one that only looks like ours)."""
    match = _GRAMMAR.fullmatch(client_order_id)
    if match is None:
        return None
    letter, attempt = match.group("letter"), match.group("attempt")
    if (letter == "e") != (attempt == ""):
        return None  # an entry has no attempt number; a stop or close always has one
    return ClientOrderId(stem=match.group("stem"), role=_ROLE_OF[letter], attempt=int(attempt or 0))


def is_ours(client_order_id: str) -> bool:
    return parse(client_order_id) is not None


def is_entry_id(client_order_id: str) -> bool:
    """An entry order's id (as opposed to a stop's or a close's): its fills open a position,
    so they never end one."""
    parsed = parse(client_order_id)
    return parsed is not None and parsed.role == "entry"


def is_conditional(client_order_id: str) -> bool | None:
    """Whether one of our ids is a stop's or a take-profit's (True) or an entry's or a close's
    (False), for a venue that keeps conditional orders apart (`Venue.fetch_order`); None for an
    id not ours."""
    parsed = parse(client_order_id)
    return None if parsed is None else parsed.role in ("stop", "take_profit")


def same_intent(client_order_id: str, other: str, *, role: OrderRole | None = None) -> bool:
    """Whether two ids are orders of one intent (``role``: and the first is of that role)."""
    first, second = parse(client_order_id), parse(other)
    if first is None or second is None or first.stem != second.stem:
        return False
    return role is None or first.role == role
