"""Optional HMAC-SHA256 authentication of HELLO (PROTOCOL.md "Authentication").

A HELLO's ``auth_data`` is ``nonce (16 octets) || HMAC-SHA256(key, prefix || nonce)`` where
``prefix`` is the HELLO as sent up to, not including, ``auth_data_len`` (its first 28 octets,
header with final serials and msg_length included). Sign after the serials are assigned.

Implemented: signing and verifying HELLO, so a peer without the shared key is refused at the
start of the session. Not implemented: the per-message (CSMB) and per-datagram (SSMB) HMAC
trailers with replay sequence numbers; without them, later messages are not authenticated and
a recorded HELLO can be replayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Final

from slbproto.csmb import HELLO_LAYOUT, Hello, encode_message
from slbproto.errors import AuthenticationFailed, UsageError

NONCE_LEN: Final = 16
MAC_LEN: Final = 32
AUTH_DATA_LEN: Final = NONCE_LEN + MAC_LEN
MIN_KEY_LEN: Final = 16


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_LEN:
        raise UsageError(f"authentication key must be at least {MIN_KEY_LEN} octets of bytes")


def _prefix(hello: Hello) -> bytes:
    placeholder = dataclasses.replace(hello, auth_data=bytes(AUTH_DATA_LEN))
    return encode_message(placeholder)[: HELLO_LAYOUT.size]


def hello_mac(key: bytes, prefix: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 of the HELLO prefix and nonce."""
    return hmac.new(key, prefix + nonce, hashlib.sha256).digest()


def sign_hello(hello: Hello, key: bytes, nonce: bytes) -> Hello:
    """hello with auth_data filled in; its serials must already be final."""
    _check_key(key)
    if len(nonce) != NONCE_LEN:
        raise UsageError(f"nonce must be {NONCE_LEN} octets")
    return dataclasses.replace(hello, auth_data=nonce + hello_mac(key, _prefix(hello), nonce))


def verify_hello(hello: Hello, key: bytes) -> None:
    """Return if hello carries a valid HMAC under key; AuthenticationFailed otherwise."""
    _check_key(key)
    auth = hello.auth_data
    if auth is None:
        raise AuthenticationFailed("HELLO carries no auth_data")
    if len(auth) != AUTH_DATA_LEN:
        raise AuthenticationFailed(f"auth_data is {len(auth)} octets, expected {AUTH_DATA_LEN}")
    nonce, mac = auth[:NONCE_LEN], auth[NONCE_LEN:]
    if not hmac.compare_digest(mac, hello_mac(key, _prefix(hello), nonce)):
        raise AuthenticationFailed("HELLO HMAC does not verify")
