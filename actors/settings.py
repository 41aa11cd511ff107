"""The actor's tunables. The supervisor's config.toml maps onto these (documented there)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from posguard.streams.backoff import Backoff
from posguard.streams.units import Seconds

__all__ = ["ActorSettings", "ProtectionSettings", "VerificationSettings"]


class VerificationSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    push_deadline: Seconds = 2.0
    """How long to wait for pushed evidence of a fill before asking over REST."""
    hard_deadline: Seconds = 60.0
    """After this, an entry without evidence is `unverified`: protected and handed to the audit."""
    lookup_grace: Seconds = 5.0
    """After a lost response, how long the venue must keep saying "unknown order" before
    the order is sent again (under the same client order id)."""
    backoff: Backoff = Backoff(initial=0.25, maximum=5.0)


class ProtectionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stop_confirm_deadline: Seconds = 3.0
    """How long an attached stop may stay unconfirmed before a separate stop is placed."""
    stop_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    """Stop placements tried before the position is closed instead (emergency close)."""
    stop_deadline: Seconds = 15.0
    """How long one stop placement (or one close order) may take, lookups included."""
    stop_backoff: Backoff = Backoff(initial=0.5, maximum=5.0)
    close_backoff: Backoff = Backoff(initial=1.0, maximum=30.0)
    """Retrying a close (emergency or requested) never gives up; this paces it."""
    close_alert_after: Annotated[int, msgspec.Meta(ge=1)] = 5
    """Failed close attempts before the record goes `unverified` and an alert is raised."""
    orphan_stop_distance: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] = 0.02
    """Stop distance, as a fraction of the entry price, for positions the audit adopts."""


class ActorSettings(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    verification: VerificationSettings = VerificationSettings()
    protection: ProtectionSettings = ProtectionSettings()
    mailbox_size: int = 64
