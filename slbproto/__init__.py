"""Wire protocol of the CS/DFS message buses (standard library only).

- :mod:`slbproto.constants`: type codes, errors, flags, limits, per-type semantics.
- :mod:`slbproto.ssmb`: per-flow messages over UDP, datagram framing and batching.
- :mod:`slbproto.csmb`: configuration messages over TCP and stream framing.
- :mod:`slbproto.peer`: pure bookkeeping (serials, duplicates, batching, retransmission).
- :mod:`slbproto.hello`: the HELLO/ACK version negotiation state machine.
- :mod:`slbproto.auth`: optional HMAC-SHA256 authentication of HELLO.
- :mod:`slbproto.transport`: thin asyncio shims, the only module that does I/O.
- :mod:`slbproto.docgen`: renders ``docs/PROTOCOL.md`` from the message tables.
"""

from slbproto.errors import ProtocolError, UsageError

__all__ = ["ProtocolError", "UsageError"]
