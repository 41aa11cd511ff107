"""Failpoints: let a crash test kill the process at an exact step, as SIGKILL would.

Random kills rarely land in the narrowest windows (an order sent, its record not yet
updated; a record final, its intent not yet answered), yet those are the windows that
write-ahead exists for. Setting ``POSGUARD_FAILPOINTS`` to comma-separated names makes the
process kill itself the first time it reaches one of them. Unset (always, in production)
each failpoint is one set lookup.

The names, one pattern for every write (built here, so the code and the tests agree):

* ``entry_sent`` (`ENTRY_SENT`): the entry order was sent, its record not yet updated;
* ``record_saved:<state>`` (`record_saved`): a position record in ``<state>`` was just
  written to Redis, before anything else happens;
* ``before_reply:<status>`` (`before_reply`): an intent's reply with ``<status>`` is about to
  be written, at the reply write's call site (``duplicate`` is the reply pushed for an id
  already handled).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENTRY_SENT", "FAILPOINTS", "before_reply", "failpoint", "record_saved"]

FAILPOINTS = frozenset(filter(None, os.environ.get("POSGUARD_FAILPOINTS", "").split(",")))

ENTRY_SENT = "entry_sent"


def record_saved(state: str) -> str:
    """The failpoint right after a record in ``state`` is written."""
    return f"record_saved:{state}"


def before_reply(status: str) -> str:
    """The failpoint right before a reply with ``status`` is written."""
    return f"before_reply:{status}"


def failpoint(name: str) -> None:
    if name in FAILPOINTS:
        os.kill(os.getpid(), signal.SIGKILL)
