"""Bybit V5's request signatures, so that the emulator refuses a wrong secret as Bybit does.

REST (https://bybit-exchange.github.io/docs/v5/guide#create-a-request): ``X-BAPI-SIGN`` is
the hex HMAC-SHA256, keyed with the secret, of ``timestamp + api_key + recv_window +
payload``, where the payload is the raw query string of a GET or the raw JSON body of a POST.
A wrong key is retCode 10003 "API key is invalid.", a signature that does not match is 10004
"Error sign, please check your signature generation algorithm."
(https://bybit-exchange.github.io/docs/v5/error).

WebSocket (https://bybit-exchange.github.io/docs/v5/ws/connect#authentication): the
signature is the hex HMAC-SHA256 of ``"GET/realtime" + expires``.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["rest_signature", "signature_matches", "ws_signature"]


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def rest_signature(secret: str, *, timestamp: str, api_key: str, recv_window: str, payload: bytes) -> str:
    """Over the payload's raw bytes: a body that is not UTF-8 simply does not match."""
    return _hmac_hex(secret, (timestamp + api_key + recv_window).encode("utf-8", "replace") + payload)


def ws_signature(secret: str, expires: str) -> str:
    return _hmac_hex(secret, ("GET/realtime" + expires).encode("utf-8", "replace"))


def signature_matches(sent: str, expected: str) -> bool:
    """Constant-time; any text (non-hex, non-ASCII) is simply not a match."""
    return hmac.compare_digest(sent.lower().encode("utf-8", "replace"), expected.encode())
