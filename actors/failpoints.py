"""Failpoints: let a crash test kill the process at an exact step, as SIGKILL would.

Random kills rarely land in the narrowest windows (an order sent, its record not yet
updated), yet those are the windows that write-ahead exists for. Setting
``POSGUARD_FAILPOINTS=entry_sent`` (comma-separated names) makes the process kill itself the
first time it reaches that point. Unset (always, in production) this is one set lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAILPOINTS", "failpoint"]

FAILPOINTS = frozenset(filter(None, os.environ.get("POSGUARD_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in FAILPOINTS:
        os.kill(os.getpid(), signal.SIGKILL)
