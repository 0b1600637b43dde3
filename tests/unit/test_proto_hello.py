"""HELLO/ACK negotiation state machine and HELLO authentication."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from slbproto import errors
from slbproto.auth import AUTH_DATA_LEN, sign_hello, verify_hello
from slbproto.constants import CsmbError, VsFlag
from slbproto.csmb import Ack, CsmbMessage, Hello, decode_message, encode_message
from slbproto.hello import TRANSITIONS, HelloNegotiator, HelloState
from slbproto.peer import SerialCounter

pytestmark = pytest.mark.unit

KEY = b"k" * 32


def dfs(**kw: object) -> HelloNegotiator:
    return HelloNegotiator(ssmb_active_ipaddr="10.0.1.1", ssmb_port=7700, **kw)  # type: ignore[arg-type]


def cs(**kw: object) -> HelloNegotiator:
    defaults: dict[str, object] = dict(
        ssmb_active_ipaddr="10.0.0.1",
        ssmb_standby_ipaddr="10.0.0.2",
        ssmb_port=7700,
        flags=VsFlag.APP_PROXY | VsFlag.REDUNDANT,
    )
    defaults.update(kw)
    return HelloNegotiator(**defaults)  # type: ignore[arg-type]


def only(messages: list[CsmbMessage]) -> CsmbMessage:
    assert len(messages) == 1
    return messages[0]


def run(a: HelloNegotiator, b: HelloNegotiator) -> None:
    """Exchange HELLOs both ways until neither side has anything to send."""
    to_b: list[CsmbMessage] = [a.start()]
    to_a: list[CsmbMessage] = [b.start()]
    for _ in range(10):
        if not to_a and not to_b:
            return
        next_a: list[CsmbMessage] = []
        next_b: list[CsmbMessage] = []
        for msg in to_b:
            next_a += b.on_hello(msg) if isinstance(msg, Hello) else b.on_ack(msg)  # type: ignore[arg-type]
        for msg in to_a:
            next_b += a.on_hello(msg) if isinstance(msg, Hello) else a.on_ack(msg)  # type: ignore[arg-type]
        to_a, to_b = next_a, next_b
    raise AssertionError("negotiation did not settle")


def test_same_version_negotiates() -> None:
    a, b = dfs(flags=0), cs()
    run(a, b)
    assert a.established and b.established
    assert a.version == b.version == (1, 0)
    assert a.peer_app_proxy and a.peer_redundant
    assert a.peer_ssmb_endpoint == ("10.0.0.1", 7700)
    assert a.peer_standby_endpoint == ("10.0.0.2", 7700)
    assert not b.peer_app_proxy
    assert b.peer_standby_endpoint is None
    assert b.peer_ssmb_endpoint == ("10.0.1.1", 7700)


def test_newer_side_retries_lower_version() -> None:
    new, old = dfs(versions=[(1, 0), (1, 1)]), cs()
    hello = new.start()
    assert hello.version == (1, 1)
    ack = only(old.on_hello(hello))
    assert ack.error == CsmbError.VERS_NEW
    assert old.counters["unsupported_version"] == 1
    assert old.peer_hello is None  # refusal changes nothing but counters
    assert isinstance(old.last_rejection, errors.UnsupportedVersion)
    retry = only(new.on_ack(ack))  # type: ignore[arg-type]
    assert isinstance(retry, Hello) and retry.version == (1, 0)
    assert new.state is HelloState.WAIT_ACK
    assert only(old.on_hello(retry)).error == CsmbError.OK
    assert new.on_ack(Ack()) == []
    assert only(new.on_hello(old.start())).error == CsmbError.OK
    assert new.version == (1, 0)


def test_older_side_retries_higher_version() -> None:
    a = dfs(versions=[(0, 9), (1, 0)])
    a.start()
    # Pretend we had to go down to 0.9 and the peer says that is obsolete.
    a.offered = (0, 9)
    retry = only(a.on_ack(Ack(error=CsmbError.VERS_OBSOLETE)))
    assert isinstance(retry, Hello) and retry.version == (1, 0)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (CsmbError.VERS_NEW, "no lower version"),
        (CsmbError.VERS_OBSOLETE, "no higher version"),
        (CsmbError.AUTH_FAILED, "AUTH_FAILED"),
        (CsmbError.BAD_MESSAGE, "BAD_MESSAGE"),
    ],
)
def test_refusal_without_alternative_fails_with_reason(error: CsmbError, reason: str) -> None:
    a = dfs()
    a.start()
    assert a.on_ack(Ack(error=error)) == []
    assert a.failed and a.state is HelloState.FAILED
    assert a.failure_reason is not None and reason in a.failure_reason
    assert a.version is None
    with pytest.raises(errors.UsageError):
        a.on_ack(Ack())


def test_disjoint_versions_fail_both_ways() -> None:
    a, b = dfs(versions=[(2, 0)]), cs()
    run(a, b)
    assert a.failed and "no lower version" in (a.failure_reason or "")
    assert b.failed and "no higher version" in (b.failure_reason or "")


@pytest.mark.parametrize(
    ("offered", "error"),
    [((2, 0), CsmbError.VERS_NEW), ((1, 1), CsmbError.VERS_NEW), ((0, 1), CsmbError.VERS_OBSOLETE)],
)
def test_unsupported_peer_version_is_refused(offered: tuple[int, int], error: CsmbError) -> None:
    b = cs(versions=[(0, 5), (1, 0), (1, 2)]) if offered == (1, 1) else cs()
    hello = Hello("10.0.1.1", "0.0.0.0", 0, offered[0], offered[1], 7700)
    assert only(b.on_hello(hello)).error == error
    assert b.peer_hello is None


def test_transition_table_rejects_illegal_moves() -> None:
    a = dfs()
    with pytest.raises(errors.UsageError):
        a.on_ack(Ack())  # nothing sent
    a.start()
    with pytest.raises(errors.UsageError):
        a.start()
    assert (HelloState.ACKED, next(iter(TRANSITIONS))[1]) not in TRANSITIONS


def test_bad_own_endpoint_fails_at_construction() -> None:
    with pytest.raises(errors.UsageError):
        HelloNegotiator(ssmb_active_ipaddr="nope", ssmb_port=1)
    with pytest.raises(errors.UsageError):
        HelloNegotiator(ssmb_active_ipaddr="1.1.1.1", ssmb_port=70000)
    with pytest.raises(errors.UsageError):
        HelloNegotiator(ssmb_active_ipaddr="1.1.1.1", ssmb_port=1, versions=[])


# --- authentication ------------------------------------------------------------------------

NONCES = (bytes([i]) * 16 for i in itertools.count())


def nonce_source(n: int) -> bytes:
    return next(NONCES)[:n]


def test_sign_and_verify_over_the_wire() -> None:
    hello = SerialCounter(start=5).stamp(Hello("10.0.0.1", "0.0.0.0", 0x80, 1, 0, 7700))
    signed = sign_hello(hello, KEY, b"n" * 16)
    assert signed.auth_data is not None and len(signed.auth_data) == AUTH_DATA_LEN
    received = decode_message(encode_message(signed))
    assert isinstance(received, Hello)
    verify_hello(received, KEY)  # does not raise
    with pytest.raises(errors.AuthenticationFailed):
        verify_hello(received, b"x" * 32)
    tampered = [
        dataclasses.replace(received, ssmb_port=7701),
        dataclasses.replace(received, serial_global=6),
        dataclasses.replace(received, flags=0),
        dataclasses.replace(received, ssmb_active_ipaddr="10.0.0.9"),
    ]
    for forged in tampered:
        with pytest.raises(errors.AuthenticationFailed):
            verify_hello(forged, KEY)
    with pytest.raises(errors.AuthenticationFailed):
        verify_hello(dataclasses.replace(received, auth_data=None), KEY)
    with pytest.raises(errors.AuthenticationFailed):
        verify_hello(dataclasses.replace(received, auth_data=b"short"), KEY)
    with pytest.raises(errors.UsageError):
        sign_hello(hello, b"short", b"n" * 16)


def test_negotiation_with_shared_key() -> None:
    a = dfs(auth_key=KEY, nonce_source=nonce_source)
    b = cs(auth_key=KEY, nonce_source=nonce_source)
    hello = a.seal(SerialCounter().stamp(a.start()))
    assert only(b.on_hello(hello)).error == CsmbError.OK


def test_wrong_or_missing_key_is_refused_and_counted() -> None:
    b = cs(auth_key=KEY)
    stranger = dfs(auth_key=b"s" * 32, nonce_source=nonce_source)
    hello = stranger.seal(stranger.start())
    assert only(b.on_hello(hello)).error == CsmbError.AUTH_FAILED
    unsigned = dfs().start()
    assert only(b.on_hello(unsigned)).error == CsmbError.AUTH_FAILED
    assert b.counters["auth_failed"] == 2
    assert b.peer_hello is None
    assert isinstance(b.last_rejection, errors.AuthenticationFailed)


def test_seal_without_key_is_identity() -> None:
    a = dfs()
    hello = a.start()
    assert a.seal(hello) is hello
