"""ccxt's exceptions, translated into posguard's few error classes (`posguard.streams.venue.errors`).

The translation is by the venue's own error code wherever posguard acts on that code (each
dialect's `VenueCodes`), and by ccxt's class otherwise. ccxt's class is too coarse (Bybit's
"server error" and "OrderLinkedID is duplicate" are both a plain ``ExchangeError``/
``InvalidOrder``) and, for Binance, depends on the address: ccxt applies Binance's futures
table only at Binance's own hosts, so behind an emulator or a proxy a reduce-only refusal or a
duplicate id is a plain ``ExchangeError``. When in doubt the answer
is `VenueUnavailable`: the actor then looks the order up by its client order id before
doing anything else, which is always safe; calling an unknown failure a rejection is not.

Every message that leaves this module is redacted: the API key, the secret and any request
signature are replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

import ccxt.async_support as ccxt
import msgspec

from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NotPlaced,
    OrderRejected,
    RateLimited,
    VenueAuthFailed,
    VenueError,
    VenueUnavailable,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "RedactingLogger",
    "VenueCodes",
    "clock_rejected",
    "is_not_found",
    "redact",
    "translate",
    "venue_reply",
]

_SIGNATURE = re.compile(r"(signature|sign|listenKey)(['\"]?\s*[:=]\s*['\"]?)[0-9A-Za-z%+/=_-]+", re.IGNORECASE)


class VenueCodes(msgspec.Struct, frozen=True):
    """One venue's own error codes and what each means to posguard: the one table the
    translation reads, owned by the venue's dialect (`posguard.streams.ccxt_adapter.dialects`).

    A code listed here decides, whatever class ccxt raised: ccxt's class depends on more than
    the code (Binance's futures table only applies at Binance's own addresses). A code not
    listed falls back to ccxt's class.
    """

    exchange: str
    errors: dict[str, type[VenueError]]
    """Code -> the posguard error it becomes."""
    not_found: frozenset[str]
    """Codes that mean "no such order": a lookup's answer, not an error (`is_not_found`)."""
    clock: frozenset[str]
    """Our timestamp was refused: `VenueUnavailable`, and the clock offset is measured again."""


_DUPLICATE_WORDS = re.compile(r"duplicat", re.IGNORECASE)
_CLIENT_ID_WORDS = re.compile(r"orderlinkid|clientorderid|client order id|clientalgoid", re.IGNORECASE)


MIN_SECRET_LENGTH = 6
"""Shorter "secrets" cannot be told from ordinary words (and no venue issues them); replacing
them would garble every message instead of protecting anything."""


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return _SIGNATURE.sub(r"\1\2***", text)


class RedactingLogger:
    """What ccxt gets as its ``logger``: its debug lines dump request headers (the API key,
    the signature) and URLs (Binance's signature and listen key); these pass through
    `redact` before they reach any handler."""

    def __init__(self, logger: logging.Logger, secrets: Iterable[str]) -> None:
        self._logger = logger
        self._secrets = tuple(secrets)

    def _log(self, level: int, message: object, *args: object) -> None:
        if self._logger.isEnabledFor(level):
            text = str(message) % args if args else str(message)
            self._logger.log(level, "%s", redact(text, self._secrets))

    def debug(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.DEBUG, message, *args)

    def info(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.INFO, message, *args)

    def warning(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.WARNING, message, *args)

    def error(self, message: object, *args: object, **_: object) -> None:
        self._log(logging.ERROR, message, *args)


def venue_reply(exc: BaseException) -> tuple[str, str]:
    """The venue's own (code, message) from a ccxt exception, or ("", "") if it has none.

    ccxt puts the response body after the exchange id: ``"bybit {"retCode":110072,...}"``.
    """
    text = str(exc)
    start = text.find("{")
    if start < 0:
        return "", ""
    try:
        body = json.loads(text[start:])
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    code = body.get("retCode", body.get("ret_code", body.get("code")))
    message = body.get("retMsg", body.get("ret_msg", body.get("msg", "")))
    return ("" if code is None else str(code)), str(message)


def translate(
    exc: BaseException,
    codes: VenueCodes,
    *,
    action: str,
    client_order_id: str = "",
    secrets: Iterable[str] = (),
) -> VenueError:
    """The posguard error for a ccxt exception raised while doing ``action``."""
    code, venue_message = venue_reply(exc)
    detail = redact(f"{codes.exchange} {action}: {venue_message or exc}", secrets)
    if code:
        detail += f" (code {code})"
    kind = NotPlaced if code in codes.clock else codes.errors.get(code)
    if code and _DUPLICATE_WORDS.search(venue_message) and _CLIENT_ID_WORDS.search(venue_message):
        kind = DuplicateClientOrderId  # e.g. Bybit 10001 or Binance -2010 saying so in words
    if kind is DuplicateClientOrderId:
        return DuplicateClientOrderId(client_order_id)
    if kind is not None and issubclass(kind, OrderRejected):
        return kind(detail, code=code)
    if kind is VenueAuthFailed:
        return _credentials_refused(detail)
    if kind is not None:
        return kind(detail)
    return _by_ccxt_class(exc, detail, code)


def _by_ccxt_class(exc: BaseException, detail: str, code: str) -> VenueError:
    if isinstance(exc, ccxt.DuplicateOrderId):
        return VenueUnavailable(detail)  # no client order id to report: treat as unknown outcome
    if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        return RateLimited(detail)
    if isinstance(exc, ccxt.NetworkError):  # timeouts, 5xx, connection errors, invalid nonce
        return VenueUnavailable(detail)
    if isinstance(exc, ccxt.AuthenticationError):  # PermissionDenied, AccountSuspended too
        return _credentials_refused(detail)
    if isinstance(exc, (ccxt.InvalidOrder, ccxt.InsufficientFunds, ccxt.BadRequest, ccxt.OperationRejected,
                        ccxt.ArgumentsRequired, ccxt.NotSupported)):
        return OrderRejected(detail, code=code)
    return VenueUnavailable(detail)


def _credentials_refused(detail: str) -> VenueAuthFailed:
    """The one wording of a credentials refusal; the supervisor adds which environment
    variables hold the key (the adapter does not know them)."""
    return VenueAuthFailed(f"{detail}: the venue refused the API credentials")


def clock_rejected(exc: BaseException, codes: VenueCodes) -> bool:
    """The venue refused our timestamp: the clock offset must be measured again."""
    return isinstance(exc, ccxt.InvalidNonce) or venue_reply(exc)[0] in codes.clock


def is_not_found(exc: BaseException, codes: VenueCodes) -> bool:
    """The venue says there is no such order (a lookup answer, not an error)."""
    return venue_reply(exc)[0] in codes.not_found or isinstance(exc, ccxt.OrderNotFound)
