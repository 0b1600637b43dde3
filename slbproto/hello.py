"""The HELLO/ACK version negotiation of the CSMB, as a table-driven state machine.

Each side sends its own HELLO and answers the peer's. Our HELLO moves through
:data:`TRANSITIONS`; the peer's HELLO is either accepted (ACK OK) or refused with
VERS_NEW / VERS_OBSOLETE (or AUTH_FAILED), which changes nothing but the counters. The session
is established when our HELLO was acknowledged and the peer's was accepted; the negotiated
version is the lower of the two versions, which both sides have then accepted.

Pure: methods take messages and return the messages to send. Serials are assigned by the
connection that sends them; with authentication, call :meth:`HelloNegotiator.seal` on our
HELLO after its serials are assigned.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from typing import Final

from slbproto.auth import NONCE_LEN, sign_hello, verify_hello
from slbproto.constants import PROTOCOL_VERSION, CsmbError, VsFlag
from slbproto.csmb import Ack, CsmbMessage, Hello, encode_message
from slbproto.errors import AuthenticationFailed, ProtocolError, UnsupportedVersion, UsageError

Version = tuple[int, int]

_KNOWN_ERRORS: Final = frozenset(int(e) for e in CsmbError)


class HelloState(enum.Enum):
    """Progress of our own HELLO."""

    IDLE = "idle"  # not sent yet
    WAIT_ACK = "wait_ack"  # sent, waiting for the peer's ACK
    ACKED = "acked"  # the peer accepted our version
    FAILED = "failed"  # no common version, or the peer refused us


class HelloEvent(enum.Enum):
    """Inputs that move our HELLO between states."""

    SEND = "send"
    ACK_OK = "ack_ok"
    RETRY = "retry"  # VERS_NEW/VERS_OBSOLETE and we have another version to offer
    REFUSED = "refused"  # version error with nothing left to offer, or any other error


TRANSITIONS: Final[dict[tuple[HelloState, HelloEvent], HelloState]] = {
    (HelloState.IDLE, HelloEvent.SEND): HelloState.WAIT_ACK,
    (HelloState.WAIT_ACK, HelloEvent.ACK_OK): HelloState.ACKED,
    (HelloState.WAIT_ACK, HelloEvent.RETRY): HelloState.WAIT_ACK,
    (HelloState.WAIT_ACK, HelloEvent.REFUSED): HelloState.FAILED,
}


class HelloNegotiator:
    """Negotiates version and learns the peer's capabilities and SSMB endpoint."""

    def __init__(
        self,
        *,
        ssmb_active_ipaddr: str,
        ssmb_port: int,
        ssmb_standby_ipaddr: str = "0.0.0.0",
        flags: int = 0,
        versions: Sequence[Version] = (PROTOCOL_VERSION,),
        auth_key: bytes | None = None,
        nonce_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not versions:
            raise UsageError("at least one supported version is required")
        self.versions: tuple[Version, ...] = tuple(sorted(set(versions)))
        self.ssmb_active_ipaddr = ssmb_active_ipaddr
        self.ssmb_standby_ipaddr = ssmb_standby_ipaddr
        self.ssmb_port = ssmb_port
        self.flags = flags
        self.auth_key = auth_key
        self._nonce_source = nonce_source
        self.state = HelloState.IDLE
        self.offered: Version = self.versions[-1]
        self.peer_hello: Hello | None = None
        self.failure_reason: str | None = None
        self.last_rejection: ProtocolError | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("hello_sent", "peer_hello_accepted", "unsupported_version", "auth_failed", "retries"),
            0,
        )
        # Build once so a bad address or port fails here, not at send time.
        encode_message(self._hello())

    def _move(self, event: HelloEvent) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise UsageError(f"HELLO: {event.value} not allowed in state {self.state.value}") from None

    def _hello(self) -> Hello:
        major, minor = self.offered
        return Hello(
            self.ssmb_active_ipaddr,
            self.ssmb_standby_ipaddr,
            self.flags,
            major,
            minor,
            self.ssmb_port,
        )

    def start(self) -> Hello:
        """Our first HELLO, offering our highest version."""
        self._move(HelloEvent.SEND)
        self.counters["hello_sent"] += 1
        return self._hello()

    def seal(self, hello: Hello) -> Hello:
        """Add auth_data to our serial-stamped HELLO when a key is configured."""
        if self.auth_key is None:
            return hello
        return sign_hello(hello, self.auth_key, self._nonce_source(NONCE_LEN))

    @property
    def expecting_ack(self) -> bool:
        """True while an ACK would answer our HELLO."""
        return self.state is HelloState.WAIT_ACK

    def on_ack(self, ack: Ack) -> list[CsmbMessage]:
        """Handle the ACK to our HELLO: [] when done or failed, [HELLO] to retry."""
        if not self.expecting_ack:
            raise UsageError(f"HELLO: no ACK expected in state {self.state.value}")
        if ack.error == CsmbError.OK:
            self._move(HelloEvent.ACK_OK)
            return []
        if ack.error in (CsmbError.VERS_NEW, CsmbError.VERS_OBSOLETE):
            lower = ack.error == CsmbError.VERS_NEW
            candidates = [v for v in self.versions if (v < self.offered if lower else v > self.offered)]
            if candidates:
                self.offered = candidates[-1] if lower else candidates[0]
                self._move(HelloEvent.RETRY)
                self.counters["retries"] += 1
                self.counters["hello_sent"] += 1
                return [self._hello()]
            direction = "lower" if lower else "higher"
            self.failure_reason = (
                f"peer refused version {_fmt(self.offered)} ({CsmbError(ack.error).name}) and we "
                f"support no {direction} version (ours: {', '.join(map(_fmt, self.versions))})"
            )
        else:
            name = CsmbError(ack.error).name if ack.error in _KNOWN_ERRORS else str(ack.error)
            self.failure_reason = f"peer refused our HELLO: {name}"
        self._move(HelloEvent.REFUSED)
        return []

    def on_hello(self, hello: Hello) -> list[CsmbMessage]:
        """Answer the peer's HELLO: ACK OK (accepted) or ACK with the reason it is refused."""
        if self.auth_key is not None:
            try:
                verify_hello(hello, self.auth_key)
            except AuthenticationFailed as exc:
                return self._reject(exc, "auth_failed", CsmbError.AUTH_FAILED)
        version = hello.version
        if version not in self.versions:
            error = CsmbError.VERS_NEW if version > self.versions[-1] else CsmbError.VERS_OBSOLETE
            if self.versions[0] < version < self.versions[-1]:
                # Inside our range but not a version we speak: ask for the next lower one.
                error = CsmbError.VERS_NEW
            refusal = UnsupportedVersion(
                f"peer offered {_fmt(version)}, we support {', '.join(map(_fmt, self.versions))}"
            )
            return self._reject(refusal, "unsupported_version", error)
        self.peer_hello = hello
        self.counters["peer_hello_accepted"] += 1
        return [Ack()]

    def _reject(self, exc: ProtocolError, counter: str, error: CsmbError) -> list[CsmbMessage]:
        self.counters[counter] += 1
        self.last_rejection = exc
        return [Ack(error=int(error))]

    @property
    def established(self) -> bool:
        """Our HELLO was acknowledged and the peer's accepted."""
        return self.state is HelloState.ACKED and self.peer_hello is not None

    @property
    def failed(self) -> bool:
        """Negotiation cannot succeed on this connection; see failure_reason."""
        return self.state is HelloState.FAILED

    @property
    def version(self) -> Version | None:
        """The negotiated version once established."""
        if not self.established or self.peer_hello is None:
            return None
        return min(self.offered, self.peer_hello.version)

    @property
    def peer_flags(self) -> VsFlag:
        """Capability flags of the peer's accepted HELLO (0 before)."""
        return VsFlag(self.peer_hello.flags if self.peer_hello else 0)

    @property
    def peer_app_proxy(self) -> bool:
        """The peer can proxy the handshake and extract application data."""
        return bool(self.peer_flags & VsFlag.APP_PROXY)

    @property
    def peer_redundant(self) -> bool:
        """The peer is a redundant CS pair that wants state-shared copies at its standby."""
        return bool(self.peer_flags & VsFlag.REDUNDANT)

    @property
    def peer_ssmb_endpoint(self) -> tuple[str, int] | None:
        """(address, UDP port) the peer announced for its SSMB."""
        if self.peer_hello is None:
            return None
        return (self.peer_hello.ssmb_active_ipaddr, self.peer_hello.ssmb_port)

    @property
    def peer_standby_endpoint(self) -> tuple[str, int] | None:
        """The peer's standby CS SSMB endpoint when it set REDUNDANT, else None."""
        hello = self.peer_hello
        if hello is None or not self.peer_redundant or hello.ssmb_standby_ipaddr == "0.0.0.0":
            return None
        return (hello.ssmb_standby_ipaddr, hello.ssmb_port)


def _fmt(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


__all__ = ["TRANSITIONS", "HelloEvent", "HelloNegotiator", "HelloState", "Version"]
