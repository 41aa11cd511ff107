"""Units shared by every settings struct, so a duration means the same thing everywhere.

A duration of zero or less is always a mistake in a timeout, a deadline or an interval (it
would spin, or never wait), so the type itself refuses it: a config file that says
``push_deadline = 0`` stops posguard with the key's path instead of making it busy-loop.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Seconds"]

Seconds = Annotated[float, msgspec.Meta(gt=0)]
"""A positive duration in seconds."""
