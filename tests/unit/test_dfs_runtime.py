"""The os-ken shim's runtime: one lock, errors never fatal, each kind of error logged once."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import pytest

from controller.app import DfsRuntime, OpenFlowStream
from slbcore.dfs import rules
from slbcore.dfs.config import parse_config
from slbcore.dfs.engine import DfsEngine, FlowEntryStats, Output
from slbproto import csmb, ssmb
from slbproto.peer import SsmbReceiver, SsmbSender
from tests.unit.test_dfs_engine import CONFIG

pytestmark = pytest.mark.unit


class FakeDatapath:
    """Enough of an os-ken Datapath to receive messages: records each write and its framing."""

    ofproto = rules.OF13.ofproto
    ofproto_parser = rules.OF13.ofproto_parser
    id = 1

    def __init__(self, accept: bool = True) -> None:
        self.writes: list[bytes] = []
        self.xid = 0
        self.accept = accept

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send(self, buf: bytes) -> bool:
        if self.accept:
            self.writes.append(bytes(buf))
        return self.accept

    @property
    def sent(self) -> list[tuple[int, int, bytes]]:
        """(type, xid, bytes) of every message written, split at the OpenFlow headers."""
        out = []
        for buf in self.writes:
            while buf:
                version, msg_type, length, xid = struct.unpack_from("!BBHI", buf)
                assert version == self.ofproto.OFP_VERSION and 8 <= length <= len(buf)
                out.append((msg_type, xid, buf[:length]))
                buf = buf[length:]
        return out


def make() -> tuple[DfsRuntime, list[Any], list[Any]]:
    ssmb_out: list[Any] = []
    csmb_out: list[Any] = []
    rt = DfsRuntime(DfsEngine(parse_config(CONFIG), 1), ssmb_out.append, csmb_out.append, clock=lambda: 1.0)
    return rt, ssmb_out, csmb_out


def test_engine_exception_costs_one_event() -> None:
    rt, _, _ = make()

    def boom(engine: DfsEngine, now: float) -> Output:
        raise KeyError("bug")

    rt.run(boom)
    rt.run(boom)
    assert rt.counters["engine_exceptions"] == 2
    rt.run(lambda e, now: e.csmb_connected(now))  # still works afterwards
    assert rt.engine.csmb_up


def test_each_error_kind_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    rt, _, _ = make()
    caplog.set_level(logging.WARNING, logger="dfs.controller")
    for _ in range(3):
        rt.run(lambda e, now: e.packet_in(1, b"\x00" * 5, now))
    rt.run(lambda e, now: e.packet_in(1, b"\x00" * 12 + b"\x86\xdd" + bytes(40), now))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("bad_packet.short_ethernet" in m for m in messages) == 1
    assert sum("bad_packet.unsupported_ethertype" in m for m in messages) == 1
    assert rt.engine.errors["bad_packet.short_ethernet"] == 3


def test_openflow_without_switch_is_counted_and_stats_parts_are_joined() -> None:
    rt, _, _ = make()
    rt.run(lambda e, now: e.switch_connected(now))
    assert rt.counters["openflow_dropped_no_switch"] > 0
    dp = FakeDatapath()
    rt.attach(dp)
    # One event's messages go out as one write, each with its own xid.
    assert len(dp.writes) == 1
    sent = dp.sent
    assert len(sent) > 1 and len({xid for _, xid, _ in sent}) == len(sent)
    assert rt.counters["openflow_sent"] == len(sent)
    audit = [(t, xid) for t, xid, _ in sent if t == dp.ofproto.OFPT_MULTIPART_REQUEST]
    assert len(audit) == 1
    entry = FlowEntryStats(rules.make_cookie(rules.KIND_FWD, 9, 5), {}, 1, 1)
    rt.stats_part(audit[0][1], [entry], more=True)
    assert rt.engine.audit_pending
    rt.stats_part(audit[0][1], [], more=False)
    assert not rt.engine.audit_pending
    rt.stats_part(12345, [], more=False)
    assert rt.counters["stats_reply_unexpected"] == 1


CS_SSMB = ("127.0.0.1", 7700)


def _old_cs_traffic(receiver: SsmbReceiver, rt: DfsRuntime) -> None:
    """The first CS process sends 10 SSMB RESETs (serials 0..9)."""
    sender = SsmbSender()
    for _ in range(10):
        for data, _ in sender.send(ssmb.Reset(), CS_SSMB, 0.0):
            for m in receiver.receive(data, CS_SSMB, 0.0):
                rt.run(lambda e, now, m=m: e.ssmb_message(m, now))


def _new_cs_reset(receiver: SsmbReceiver, rt: DfsRuntime) -> None:
    """A restarted CS process: its serials begin at zero again, and its first message is RESET."""
    ((data, _),) = SsmbSender().send(ssmb.Reset(), CS_SSMB, 0.0)
    for m in receiver.receive(data, CS_SSMB, 2.0):
        rt.run(lambda e, now, m=m: e.ssmb_message(m, now))


@pytest.mark.parametrize("forget", [True, False])
def test_a_restarted_cs_is_heard_after_it_reconnects(forget: bool) -> None:
    receiver = SsmbReceiver()
    sent_with_state: list[bool] = []

    def send_csmb(msg: object) -> None:
        # What the DFS says on the new connection may make the CS send SSMB at once.
        sent_with_state.append(receiver.sender_state(CS_SSMB) is not None)

    rt = DfsRuntime(
        DfsEngine(parse_config(CONFIG), 1),
        lambda _: None,
        send_csmb,
        clock=lambda: 1.0,
        forget_ssmb=receiver.forget if forget else None,
    )
    rt.run(lambda e, now: e.csmb_connected(now))
    _old_cs_traffic(receiver, rt)
    assert rt.engine.counters["flow_resets"] == 10
    rt.run(lambda e, now: e.csmb_disconnected(now))
    sent_with_state.clear()
    rt.run(lambda e, now: e.csmb_connected(now))
    assert sent_with_state == [not forget]  # HELLO went out after the old serials were forgotten
    _new_cs_reset(receiver, rt)
    if forget:
        assert rt.engine.counters["flow_resets"] == 11
        assert rt.counters["ssmb_peers_forgotten"] == 2
    else:  # the failure this guards against: serial 0 taken for a duplicate of the old process's
        assert rt.engine.counters["flow_resets"] == 10 and receiver.counters["duplicate"] == 1


def test_a_cs_hello_forgets_its_ssmb_endpoint() -> None:
    receiver = SsmbReceiver()
    rt = DfsRuntime(
        DfsEngine(parse_config(CONFIG), 1), lambda _: None, lambda _: None, forget_ssmb=receiver.forget
    )
    _old_cs_traffic(receiver, rt)
    assert receiver.sender_state(CS_SSMB) is not None
    rt.run(lambda e, now: e.csmb_message(csmb.Hello("127.0.0.1", "0.0.0.0", 0, 1, 0, 7700), now))
    assert receiver.sender_state(CS_SSMB) is None


def test_refused_write_counts_every_message_of_the_event() -> None:
    rt, _, _ = make()
    dp = FakeDatapath(accept=False)
    rt.attach(dp)
    assert rt.counters["openflow_sent"] == 0
    assert rt.counters["openflow_send_failed"] > 1
    assert not dp.writes


class StreamDatapath(FakeDatapath):
    """A datapath on an :class:`OpenFlowStream`: the runtime writes to the socket itself."""

    def __init__(self, sock: OpenFlowStream) -> None:
        super().__init__()
        self.socket = sock

    def send(self, buf: bytes) -> bool:
        raise AssertionError("the runtime must write to the stream directly")


def test_openflow_stream_is_written_directly_in_one_piece() -> None:
    a, b = socket.socketpair()
    stream = OpenFlowStream(fileno=a.detach())
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # what os-ken does; ignored
    b.settimeout(5)
    try:
        rt, _, _ = make()
        rt.attach(StreamDatapath(stream))
        sent = rt.counters["openflow_sent"]
        assert sent > 1
        # The write finished before attach returned, so everything is already buffered.
        b.setblocking(False)
        data = b""
        for _ in range(64):
            try:
                chunk = b.recv(65536)
            except BlockingIOError:
                break
            data += chunk
        probe = FakeDatapath()
        probe.writes.append(data)
        assert len(probe.sent) == sent
    finally:
        stream.close()
        b.close()


def test_failed_stream_write_closes_the_connection() -> None:
    a, b = socket.socketpair()
    stream = OpenFlowStream(fileno=a.detach())
    b.close()
    try:
        rt, _, _ = make()
        rt.attach(StreamDatapath(stream))
        assert rt.counters["openflow_write_errors"] == 1
        assert rt.counters["openflow_send_failed"] > 1
        assert rt.counters["openflow_sent"] == 0
    finally:
        stream.close()


def test_stream_writes_never_block_and_keep_their_order() -> None:
    a, b = socket.socketpair()
    stream = OpenFlowStream(fileno=a.detach())
    stream.settimeout(5)  # as os-ken does
    chunks = [bytes([i % 251]) * 4096 for i in range(512)]  # 2 MiB: far more than the socket holds
    try:
        t0 = time.monotonic()
        for chunk in chunks:
            stream.write_nowait(chunk)  # the peer reads nothing yet
        assert time.monotonic() - t0 < 2.0
        want = b"".join(chunks) + b"end"
        got = bytearray()

        def read() -> None:
            b.settimeout(5)
            while len(got) < len(want):
                data = b.recv(1 << 16)
                if not data:
                    return
                got.extend(data)

        reader = threading.Thread(target=read)
        reader.start()
        stream.sendall(b"end")  # os-ken's path: after everything before it, waits until sent
        reader.join(10)
        assert bytes(got) == want
    finally:
        stream.close()
        b.close()


def test_stream_backlog_is_bounded() -> None:
    a, b = socket.socketpair()
    stream = OpenFlowStream(fileno=a.detach())
    stream.MAX_BACKLOG = 1 << 20
    try:
        with pytest.raises(OSError):
            for _ in range(1024):
                stream.write_nowait(bytes(8192))
        with pytest.raises(OSError):
            stream.write_nowait(b"x")  # the stream stays failed
    finally:
        stream.close()
        b.close()
