"""A scripted CS on loopback sockets, for integration tests and benchmarks of a DFS.

It makes no decisions. On its CSMB listener (TCP) it accepts one DFS connection at a time
and answers each HELLO with ACK, its own HELLO (announcing its SSMB port), RESET and one
ADD_VS per configured virtual server. On its SSMB socket (UDP) it answers every QUERY with
a REPLY that sends the flow to the target configured for the query's destination port,
unless :attr:`ScriptedCs.silent` is set, and it records and counts QUERY, DELETE and STATS.
Every SSMB message it sends carries the next serials of one :class:`SerialCounter`.

Bad input (a broken CSMB stream, a garbage datagram, a QUERY for a port with no target) is
counted in :attr:`ScriptedCs.counts` and never stops the peer: a broken stream closes that
connection and the DFS is expected to reconnect.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from slbproto import csmb, ssmb
from slbproto.constants import PROTOCOL_VERSION
from slbproto.errors import ProtocolError
from slbproto.peer import SerialCounter

__all__ = ["COUNTER_KEYS", "ScriptedCs", "ScriptedCsError", "Target"]

Target = tuple[str, int]
"""Where a REPLY sends a flow: the new destination address (also the next hop) and port."""

COUNTER_KEYS = (
    "hellos",  # HELLOs received on CSMB
    "csmb_messages",  # every CSMB message received
    "bad_streams",  # CSMB connections closed because the stream did not decode
    "datagrams",  # SSMB datagrams received
    "bad_datagrams",  # SSMB datagrams that did not decode
    "queries",
    "replies",  # REPLYs sent
    "unrouted",  # QUERYs for a destination port with no target: not answered
    "deletes",
    "stats",
    "other",  # any other SSMB message
)

_M = TypeVar("_M", bound=ssmb.SsmbMessage)

_POLL = 0.2  # socket timeout: how soon the threads notice close()


class ScriptedCsError(RuntimeError):
    """The scripted CS was asked to send where it has no peer (no CSMB connection, no HELLO yet)."""


class ScriptedCs:
    """A CSMB listener and an SSMB peer on ``host`` (ephemeral ports), each served by a thread.

    ``targets`` maps a virtual server's port to the :data:`Target` a REPLY names. With
    ``record`` false only :attr:`counts` grow (for long benchmark runs); with it true
    :attr:`queries`, :attr:`deletes`, :attr:`stats` and :attr:`csmb_in` keep every message.
    """

    def __init__(
        self,
        vservers: Sequence[csmb.VirtualServer],
        targets: Mapping[int, Target],
        *,
        host: str = "127.0.0.1",
        record: bool = True,
    ) -> None:
        self.vservers = list(vservers)
        self.targets = dict(targets)
        self.host = host
        self.record = record
        self.silent = False
        """While true, QUERYs are recorded and counted but not answered (a CS that went quiet)."""
        self.queries: list[ssmb.Query] = []
        self.deletes: list[ssmb.Delete] = []
        self.stats: list[ssmb.Stats] = []
        self.csmb_in: list[csmb.CsmbMessage] = []
        self.counts: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self.conn: socket.socket | None = None
        self.dfs_ssmb: tuple[str, int] | None = None
        self.serials = SerialCounter()
        self._serial_lock = threading.Lock()
        self._stop = threading.Event()
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((host, 0))
            self.tcp.listen(1)
            self.tcp.settimeout(_POLL)
            self.udp.bind((host, 0))
            self.udp.settimeout(_POLL)
        except OSError:
            self.tcp.close()
            self.udp.close()
            raise
        self._threads = [
            threading.Thread(target=self._serve_csmb, name="scripted-cs-csmb", daemon=True),
            threading.Thread(target=self._serve_ssmb, name="scripted-cs-ssmb", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def csmb_port(self) -> int:
        """The TCP port the DFS connects its CSMB to."""
        return int(self.tcp.getsockname()[1])

    @property
    def ssmb_port(self) -> int:
        """The UDP port of the CS's SSMB endpoint (announced in its HELLO)."""
        return int(self.udp.getsockname()[1])

    @property
    def hellos(self) -> int:
        """HELLOs received so far; grows by one each time the DFS (re)connects."""
        return self.counts["hellos"]

    def stamp(self, msg: _M) -> _M:
        """``msg`` with the next serials; safe from any thread."""
        with self._serial_lock:
            return self.serials.stamp(msg)

    def send_ssmb(self, msg: ssmb.SsmbMessage) -> None:
        """Send one SSMB message, stamped, to the endpoint the DFS announced in its HELLO."""
        dest = self.dfs_ssmb
        if dest is None:
            raise ScriptedCsError("no HELLO from a DFS yet: its SSMB endpoint is unknown")
        self.udp.sendto(ssmb.encode_datagram([self.stamp(msg)]), dest)

    def send_csmb_raw(self, data: bytes) -> None:
        """Write raw octets on the current CSMB connection (to feed the DFS a broken stream)."""
        conn = self.conn
        if conn is None:
            raise ScriptedCsError("no CSMB connection from a DFS")
        conn.sendall(data)

    def _greeting(self) -> list[csmb.CsmbMessage]:
        major, minor = PROTOCOL_VERSION
        out: list[csmb.CsmbMessage] = [
            csmb.Ack(),
            csmb.Hello(self.host, "0.0.0.0", 0, major, minor, self.ssmb_port),
            csmb.Reset(),
        ]
        out += [csmb.AddVs(vs) for vs in self.vservers]
        return out

    def _serve_csmb(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(_POLL)
            self.conn = conn
            with conn:
                self._csmb_session(conn)
            self.conn = None

    def _csmb_session(self, conn: socket.socket) -> None:
        dec = csmb.StreamDecoder()
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                messages = dec.feed(data)
            except ProtocolError:
                self.counts["bad_streams"] += 1
                return
            for msg in messages:
                self.counts["csmb_messages"] += 1
                if self.record:
                    self.csmb_in.append(msg)
                if isinstance(msg, csmb.Hello):
                    self.counts["hellos"] += 1
                    self.dfs_ssmb = (msg.ssmb_active_ipaddr, msg.ssmb_port)
                    try:
                        conn.sendall(b"".join(csmb.encode_message(m) for m in self._greeting()))
                    except OSError:
                        return

    def _serve_ssmb(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.counts["datagrams"] += 1
            try:
                messages = ssmb.decode_datagram(data)
            except ProtocolError:
                self.counts["bad_datagrams"] += 1
                continue
            for msg in messages:
                if isinstance(msg, ssmb.Query):
                    self._on_query(msg, addr)
                elif isinstance(msg, ssmb.Delete):
                    self.counts["deletes"] += 1
                    if self.record:
                        self.deletes.append(msg)
                elif isinstance(msg, ssmb.Stats):
                    self.counts["stats"] += 1
                    if self.record:
                        self.stats.append(msg)
                else:
                    self.counts["other"] += 1

    def _on_query(self, msg: ssmb.Query, addr: tuple[str, int]) -> None:
        self.counts["queries"] += 1
        if self.record:
            self.queries.append(msg)
        if self.silent:
            return
        target = self.targets.get(msg.orig_dst_port)
        if target is None:
            self.counts["unrouted"] += 1
            return
        new_ip, new_port = target
        reply = ssmb.Reply(
            orig_src_ipaddr=msg.orig_src_ipaddr,
            orig_dst_ipaddr=msg.orig_dst_ipaddr,
            orig_src_port=msg.orig_src_port,
            orig_dst_port=msg.orig_dst_port,
            proto=msg.proto,
            new_dst_ipaddr=new_ip,
            new_dst_port=new_port,
            next_hop_ipaddr=new_ip,
            flow_id=msg.flow_id,
        )
        try:
            self.udp.sendto(ssmb.encode_datagram([self.stamp(reply)]), addr)
        except OSError:
            return
        self.counts["replies"] += 1

    def close(self) -> None:
        """Stop both threads (each notices within the poll interval) and close the sockets."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.tcp.close()
        self.udp.close()

    def __enter__(self) -> ScriptedCs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
