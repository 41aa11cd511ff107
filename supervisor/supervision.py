"""Restart policy and safe mode: what the supervisor does when actors keep failing.

One-for-one: a failed actor is restarted on its own, after an exponential backoff with jitter,
and reconciles its symbol with the venue before it takes new work. More than
``max_restarts`` restarts (of any actors) within ``restart_window`` seconds means something is
wrong beyond one symbol: posguard enters **safe mode**. In safe mode no new entries are
accepted; protection, closes and the audit go on. Safe mode is shown in Redis
(``posguard:{acct}:health`` fields ``safe_mode``, ``safe_mode_reason``, ``safe_mode_since``) and
in the log, and is left only by an operator (``posguard safe-mode off``), because a crash loop
does not fix itself.

Separately, entries are *paused* while Redis is unreachable or refuses writes (nothing can be
written ahead), and after Redis lost its data until a full audit has run; those pauses lift by
themselves (`posguard.supervisor.watchdog`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Annotated

import anyio
import msgspec

from posguard.actors.records import utc_now
from posguard.actors.store.health import HealthStatus, OperatorRequests
from posguard.streams.backoff import Backoff
from posguard.streams.units import ONE_DAY

__all__ = ["AuditSettings", "EntryGate", "RestartTracker", "SupervisorSettings"]

log = logging.getLogger("posguard.supervisor")


class SupervisorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    restart_backoff: Backoff = Backoff(initial=0.5, maximum=30.0)
    max_restarts: Annotated[int, msgspec.Meta(ge=1)] = 5
    """More restarts than this within `restart_window` seconds enter safe mode."""
    restart_window: Annotated[float, msgspec.Meta(gt=0, le=ONE_DAY)] = 60.0
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    """On SIGINT/SIGTERM, seconds to let in-flight steps finish before stopping them."""
    redis_check_interval: Annotated[float, msgspec.Meta(ge=0.1, le=60)] = 1.0
    """How often Redis is pinged; entries pause while it does not answer. At least 0.1 s (no
    busy loop), at most 60 s (a lost Redis must pause entries soon)."""


class AuditSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    """Seconds between periodic audits (there is also one at start-up, after any actor crash
    and after any stream reconnect). At least 1 s: every audit is several REST calls, and a
    venue bans a client that floods it; at most an hour, so I6 "converge" has a bound."""


class RestartTracker:
    """Counts restarts in a sliding window, to decide when to escalate."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        self._times: deque[float] = deque()
        self.total = 0

    def record(self) -> bool:
        """Note a restart now; True when the intensity limit is exceeded."""
        now = anyio.current_time()
        self.total += 1
        self._times.append(now)
        while self._times and self._times[0] < now - self.settings.restart_window:
            self._times.popleft()
        return len(self._times) > self.settings.max_restarts


class EntryGate:
    """Whether new entries may be accepted, and if not, why (for the intent's reply)."""

    def __init__(self) -> None:
        self.safe_mode_reason = ""
        self.safe_mode_since = ""
        self.safe_mode_since_ms = 0
        """When safe mode began (wall clock, ms): an operator's "off" counts only if later."""
        self.paused: dict[str, str] = {}  # cause -> reason (e.g. "redis": "Redis unreachable or refusing writes")

    @property
    def safe_mode(self) -> bool:
        return bool(self.safe_mode_reason)

    def refusal(self) -> str:
        """Empty when entries are allowed; otherwise the reason to give the intent."""
        if self.safe_mode:
            return (f"safe mode since {self.safe_mode_since}: {self.safe_mode_reason}; no new entries"
                    " until an operator runs 'posguard safe-mode off' (closes still work)")
        if self.paused:
            return "new entries paused: " + "; ".join(self.paused.values())
        return ""

    def enter_safe_mode(self, reason: str) -> bool:
        if self.safe_mode:
            return False
        self.safe_mode_reason, self.safe_mode_since = reason, utc_now()
        self.safe_mode_since_ms = int(time.time() * 1000)
        log.critical("SAFE MODE: %s. No new entries; protection, closes and audit continue.", reason)
        return True

    def lifted_by(self, requests: OperatorRequests) -> bool:
        """Whether an operator asked to leave safe mode *after* it began (an older request
        answers an earlier safe mode, not this one)."""
        asked = requests.safe_mode_off_requested_ms
        return self.safe_mode and asked is not None and asked > self.safe_mode_since_ms

    def leave_safe_mode(self, by: str) -> None:
        if self.safe_mode:
            log.warning("safe mode left (%s)", by)
        self.safe_mode_reason = self.safe_mode_since = ""
        self.safe_mode_since_ms = 0

    def status(self) -> HealthStatus:
        """The gate as the health hash shows it."""
        return HealthStatus(
            safe_mode=self.safe_mode,
            safe_mode_reason=self.safe_mode_reason,
            safe_mode_since=self.safe_mode_since,
            safe_mode_since_ms=self.safe_mode_since_ms,
            entries_paused="; ".join(self.paused.values()),
        )
