"""The health hash ``posguard:{acct}:health``: its one schema.

Two kinds of field share the hash, and no field is ever both:

* **status**, written only by the running ``posguard run`` (and its ingestor): streams, safe
  mode, paused entries, heartbeat, audit progress;
* **requests**, written only by an operator's command (``posguard audit``, ``posguard
  safe-mode off``) and read by the running process.

When one field was both (``safe_mode`` was the engine's status *and* the operator's "off"), a
status read in flight as safe mode began returned the old "no", and the engine left safe mode
with no operator. A request now carries its own time and counts only when it is later than
what it answers (``safe_mode_off_requested_ms`` > ``safe_mode_since_ms``).

On the wire every value is plain text (``yes``/``no``, milliseconds since the epoch, ISO
timestamps) so that ``redis-cli HGETALL`` reads it; a value that does not parse reads as
unknown rather than failing the reader.
"""

from __future__ import annotations

from typing import Any

import msgspec

from posguard.streams.venue.events import TOPICS

__all__ = [
    "REQUEST_FIELDS",
    "STATUS_FIELDS",
    "Health",
    "HealthStatus",
    "OperatorRequests",
    "StreamHealth",
    "decode_health",
    "encode_fields",
]


class StreamHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One private stream (``positions``, ``orders``, ``executions``); on the wire each field
    is prefixed with the topic: ``positions_connected``, ``positions_last_event_ms``..."""

    connected: bool | None = None
    changed_ms: int | None = None
    reason: str | None = None
    last_event_ms: int | None = None


class HealthStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the running process reports. ``None`` means "not written" (or, in an update,
    "leave as it is")."""

    safe_mode: bool | None = None
    safe_mode_reason: str | None = None
    safe_mode_since: str | None = None
    """ISO timestamp, for people."""
    safe_mode_since_ms: int | None = None
    """The same moment in ms: what an operator's request is compared with."""
    entries_paused: str | None = None
    heartbeat_ms: int | None = None
    pid: int | None = None
    venue: str | None = None
    """The venue the process trades on: ``bybit``, ``binanceusdm``, or ``simulated`` (the
    built-in simulated venue, only with ``posguard run --simulated-venue``: no order reaches
    any exchange). Rewritten with every heartbeat so that ``posguard status`` always shows it."""
    audit_started: int | None = None
    """The ``audit_requested`` value the process has started working on."""
    audit_done: int | None = None
    """The ``audit_requested`` value whose audit has finished."""


class OperatorRequests(msgspec.Struct, frozen=True, kw_only=True):
    """What operators ask of the running process, each stamped with when it was asked (ms)."""

    audit_requested: int | None = None
    safe_mode_off_requested_ms: int | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The whole hash, decoded."""

    status: HealthStatus = HealthStatus()
    streams: dict[str, StreamHealth] = {}
    requests: OperatorRequests = OperatorRequests()

    def stream(self, topic: str) -> StreamHealth:
        return self.streams.get(topic, StreamHealth())


STATUS_FIELDS: frozenset[str] = frozenset(HealthStatus.__struct_fields__) | {
    f"{topic}_{name}" for topic in TOPICS for name in StreamHealth.__struct_fields__
}
REQUEST_FIELDS: frozenset[str] = frozenset(OperatorRequests.__struct_fields__)
assert not STATUS_FIELDS & REQUEST_FIELDS


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def encode_fields(update: HealthStatus | OperatorRequests | StreamHealth, *, topic: str = "") -> dict[str, str]:
    """The hash fields an update writes: every field that is not ``None``, as plain text."""
    prefix = f"{topic}_" if topic else ""
    if isinstance(update, StreamHealth) and topic not in TOPICS:
        raise ValueError(f"stream health needs one of the topics {TOPICS}, not {topic!r}")
    return {
        prefix + name: _text(value)
        for name in update.__struct_fields__
        if (value := getattr(update, name)) is not None
    }


def _parse(kind: type, text: str) -> Any:
    if text == "":
        return None
    if kind is bool:
        return {"yes": True, "no": False}.get(text)
    if kind is int:
        try:
            return int(text)
        except ValueError:
            return None
    return text


def _decode(struct: type[msgspec.Struct], raw: dict[str, str], prefix: str = "") -> Any:
    return struct(**{
        field.name: _parse(_kind(field.type), raw[prefix + field.name])
        for field in msgspec.structs.fields(struct)
        if prefix + field.name in raw
    })


def _kind(annotation: Any) -> type:
    """``bool | None`` -> ``bool``: every field of the schema is optional."""
    return next(a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None))


def decode_health(raw: dict[str, str]) -> Health:
    """The hash as read by ``HGETALL``; unknown fields are ignored, unparsable values unknown."""
    return Health(
        status=_decode(HealthStatus, raw),
        streams={topic: _decode(StreamHealth, raw, f"{topic}_") for topic in TOPICS},
        requests=_decode(OperatorRequests, raw),
    )
