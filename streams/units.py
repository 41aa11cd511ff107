"""Units shared by every settings struct, so a duration means the same thing everywhere.

A duration of zero or less is always a mistake in a timeout, a deadline or an interval (it
would spin, or never wait), and so is an endless one, so the type itself refuses both: a
config file that says ``push_deadline = 0`` or ``hard_deadline = inf`` stops posguard with the
key's path instead of making it busy-loop or wait forever.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["ONE_DAY", "Seconds"]

ONE_DAY = 86_400.0

Seconds = Annotated[float, msgspec.Meta(gt=0, le=ONE_DAY)]
"""A positive, finite duration in seconds (``inf`` would be a wait that never ends)."""

