"""SSMB bookkeeping: serials, duplicates, gaps, batching, standby copies, retransmission."""

from __future__ import annotations

import pytest

from slbproto import errors
from slbproto.peer import QueryRetransmitter, SerialCounter, SsmbReceiver, SsmbSender
from slbproto.ssmb import (
    AppQuery,
    Delete,
    NewFlow,
    Query,
    Reap,
    Reply,
    Reset,
    Stats,
    decode_datagram,
    encode_datagram,
)

pytestmark = pytest.mark.unit

CS = ("10.0.0.1", 7700)
STANDBY = ("10.0.0.2", 7700)
DFS = ("10.0.1.1", 7700)


def query(flow_id: int = 1, serial: int = 0) -> Query:
    return Query("192.0.2.1", "10.0.0.100", 40000, 80, flow_id=flow_id, serial_global=serial)


def stats(flow_id: int) -> Stats:
    return Stats("192.0.2.1", "10.0.0.100", 40000, 80, flow_id=flow_id)


def reap(flow_id: int) -> Reap:
    return Reap("192.0.2.1", "10.0.0.100", 40000, 80, flow_id=flow_id)


# --- SerialCounter ------------------------------------------------------------------------


def test_serials_global_and_per_type_wrap() -> None:
    counter = SerialCounter(start=65534)
    assert counter.next(1) == (65534, 65534)
    assert counter.next(2) == (65535, 65534)
    assert counter.next(1) == (0, 65535)
    assert counter.next(1) == (1, 0)
    stamped = counter.stamp(Reset())
    assert (stamped.serial_global, stamped.serial_bytype) == (2, 65534)
    with pytest.raises(errors.UsageError):
        SerialCounter(start=65536)


# --- SsmbReceiver -------------------------------------------------------------------------


def datagram(serial: int) -> bytes:
    return encode_datagram([query(serial=serial)])


def test_receiver_drops_duplicates_and_counts_gaps() -> None:
    rx = SsmbReceiver(window=64)
    assert len(rx.receive(datagram(10), DFS, 0.0)) == 1
    assert rx.receive(datagram(10), DFS, 0.1) == []
    assert rx.counters["duplicate"] == 1
    assert len(rx.receive(datagram(14), DFS, 0.2)) == 1
    assert rx.counters["gap"] == 3
    assert len(rx.receive(datagram(12), DFS, 0.3)) == 1  # late, inside the window
    assert rx.counters["late"] == 1
    assert rx.receive(datagram(12), DFS, 0.4) == []
    assert rx.counters["duplicate"] == 2
    assert rx.lost_estimate == 2
    # Another sender has its own serial space.
    assert len(rx.receive(datagram(10), CS, 0.5)) == 1
    assert rx.counters["messages"] == 4


def test_receiver_wraps_serials() -> None:
    rx = SsmbReceiver(window=16)
    for serial in (65534, 65535, 0, 1):
        assert len(rx.receive(datagram(serial), DFS, 0.0)) == 1
    assert rx.counters["gap"] == 0
    assert rx.receive(datagram(65535), DFS, 0.0) == []
    assert rx.counters["duplicate"] == 1


def test_receiver_serial_older_than_window_is_a_restart() -> None:
    rx = SsmbReceiver(window=16)
    rx.receive(datagram(5000), DFS, 0.0)
    assert len(rx.receive(datagram(0), DFS, 1.0)) == 1
    assert rx.counters["restart"] == 1
    assert rx.sender_state(DFS) == (0, 1)
    assert rx.receive(datagram(0), DFS, 1.0) == []


def test_receiver_forget_resets_sender() -> None:
    rx = SsmbReceiver()
    rx.receive(datagram(3), DFS, 0.0)
    rx.forget(DFS)
    assert len(rx.receive(datagram(3), DFS, 0.0)) == 1


def test_receiver_dedups_each_message_of_a_batch() -> None:
    rx = SsmbReceiver()
    batch = encode_datagram([Reset(serial_global=1), Reset(serial_global=2)])
    assert len(rx.receive(batch, DFS, 0.0)) == 2
    overlap = encode_datagram([Reset(serial_global=2), Reset(serial_global=3)])
    assert [m.serial_global for m in rx.receive(overlap, DFS, 0.0)] == [3]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00" * 3, "truncated"),
        (datagram(50)[:-1], "truncated"),
        (datagram(50) + b"x", "trailing_bytes"),
        (datagram(50)[:4] + b"\x63" + datagram(50)[5:], "unknown_type"),
        (datagram(50)[:5] + b"\x00" + datagram(50)[6:], "bad_count"),
        (datagram(50)[:5] + b"\x02" + datagram(50)[6:] + datagram(50), "count_mismatch"),
        (datagram(50)[:7] + b"\x09" + datagram(50)[8:], "bad_field"),
    ],
)
def test_receiver_counts_bad_datagram_and_changes_nothing_else(data: bytes, code: str) -> None:
    rx = SsmbReceiver()
    rx.receive(datagram(10), DFS, 0.0)
    before_state = rx.sender_state(DFS)
    before = dict(rx.counters)
    assert rx.receive(data, DFS, 1.0) == []
    assert rx.sender_state(DFS) == before_state
    assert rx.counters[code] == 1
    assert rx.counters["dropped"] == before["dropped"] + 1
    assert rx.counters["messages"] == before["messages"]
    assert rx.last_error is not None and rx.last_error.code == code


def test_receiver_evicts_least_recent_sender() -> None:
    rx = SsmbReceiver(max_senders=2)
    rx.receive(datagram(1), ("a", 1), 0.0)
    rx.receive(datagram(1), ("b", 1), 1.0)
    rx.receive(datagram(2), ("a", 1), 2.0)
    rx.receive(datagram(1), ("c", 1), 3.0)
    assert rx.sender_state(("b", 1)) is None
    assert rx.sender_state(("a", 1)) is not None
    assert rx.counters["evicted"] == 1


# --- SsmbSender ---------------------------------------------------------------------------


def test_high_priority_goes_out_at_once_alone_with_serials() -> None:
    tx = SsmbSender()
    out = tx.send(query(1), CS, 0.0)
    out += tx.send(query(2), CS, 0.0)
    assert [dest for _, dest in out] == [CS, CS]
    decoded = [decode_datagram(data) for data, _ in out]
    assert [len(d) for d in decoded] == [1, 1]
    assert [(d[0].serial_global, d[0].serial_bytype) for d in decoded] == [(0, 0), (1, 1)]
    assert tx.next_deadline() is None


def test_batched_types_wait_for_delay() -> None:
    tx = SsmbSender(batch_delay=0.010)
    assert tx.send(stats(1), CS, 1.0) == []
    assert tx.send(stats(2), CS, 1.005) == []
    assert tx.next_deadline() == pytest.approx(1.010)
    assert tx.poll(1.009) == []
    [(data, dest)] = tx.poll(1.010)
    assert dest == CS
    msgs = decode_datagram(data)
    assert [m.flow_id for m in msgs] == [1, 2]  # type: ignore[attr-defined]
    assert [m.serial_global for m in msgs] == [0, 1]
    assert tx.next_deadline() is None


def test_batch_leaves_when_an_mtu_is_full() -> None:
    tx = SsmbSender(mtu_payload=1472)
    out = []
    for flow_id in range(30):
        out += tx.send(stats(flow_id), CS, 0.0)
    # 60-octet STATS: 24 fit in 1472 octets; the 24th fills the datagram beyond another.
    assert len(out) == 1
    assert len(out[0][0]) == 24 * 60 <= 1472
    assert len(decode_datagram(out[0][0])) == 24
    [(rest, _)] = tx.flush()
    assert len(decode_datagram(rest)) == 6


def test_batches_are_per_destination_and_mixed_types() -> None:
    tx = SsmbSender()
    tx.send(reap(1), DFS, 0.0)
    tx.send(reap(2), ("10.0.1.2", 7700), 0.0)
    tx.send(stats(3), DFS, 0.001)
    out = dict((dest, data) for data, dest in tx.flush())
    assert [type(m).__name__ for m in decode_datagram(out[DFS])] == ["Reap", "Stats"]
    assert len(decode_datagram(out[("10.0.1.2", 7700)])) == 1


def test_unbatched_message_flushes_waiting_batch_first() -> None:
    tx = SsmbSender()
    tx.send(reap(1), DFS, 0.0)
    out = tx.send(NewFlow("1.1.1.1", "2.2.2.2", 1, 2, flow_id=0x80000001), DFS, 0.001)
    kinds = [[type(m).__name__ for m in decode_datagram(data)] for data, _ in out]
    assert kinds == [["Reap"], ["NewFlow"]]
    assert tx.next_deadline() is None


def test_bad_message_fails_its_own_send() -> None:
    tx = SsmbSender()
    with pytest.raises(errors.UsageError):
        tx.send(Stats("bad", "2.2.2.2", 1, 2), CS, 0.0)
    assert tx.flush() == []


def test_state_shared_types_are_copied_to_standby() -> None:
    tx = SsmbSender(standby=STANDBY)
    sent = {
        "query": tx.send(query(1), CS, 0.0),
        "delete": tx.send(Delete("1.1.1.1", "2.2.2.2", 1, 2, flow_id=1), CS, 0.0),
        "reply": tx.send(Reply("1.1.1.1", "2.2.2.2", 1, 2), DFS, 0.0),
        "reset": tx.send(Reset(), CS, 0.0),
        "app": tx.send(AppQuery("1.1.1.1", "2.2.2.2", 1, 2), CS, 0.0),
    }
    assert [d for _, d in sent["query"]] == [CS]
    assert [d for _, d in sent["app"]] == [CS]
    assert [d for _, d in sent["delete"]] == [CS, STANDBY]
    assert [d for _, d in sent["reply"]] == [DFS, STANDBY]
    assert [d for _, d in sent["reset"]] == [CS, STANDBY]
    # STATS is batched and shared: both destinations get a batch; REAP is not shared.
    tx.send(stats(9), CS, 1.0)
    tx.send(reap(9), DFS, 1.0)
    assert sorted(d for _, d in tx.flush()) == sorted([CS, STANDBY, DFS])
    # The standby sees its own gapless serial sequence.
    standby_serials = [
        decode_datagram(data)[0].serial_global
        for data, dest in sent["delete"] + sent["reply"] + sent["reset"]
        if dest == STANDBY
    ]
    assert standby_serials == [0, 1, 2]
    assert tx.counters["standby_copies"] == 4


def test_no_copy_when_destination_is_the_standby() -> None:
    tx = SsmbSender(standby=STANDBY)
    assert [d for _, d in tx.send(Reset(), STANDBY, 0.0)] == [STANDBY]


def test_sender_argument_checks() -> None:
    with pytest.raises(errors.UsageError):
        SsmbSender(mtu_payload=10)
    with pytest.raises(errors.UsageError):
        SsmbSender(batch_delay=-1)


# --- QueryRetransmitter -------------------------------------------------------------------


def test_retransmits_then_gives_up() -> None:
    tx = SsmbSender()
    rt = QueryRetransmitter(tries=3, interval=0.2, restamp=tx.restamp)
    [(first, dest)] = tx.send(query(42), CS, 0.0)
    rt.track(42, first, dest, 0.0)
    assert rt.next_deadline() == pytest.approx(0.2)
    assert rt.poll(0.19) == ([], [])
    resends, given_up = rt.poll(0.2)
    assert given_up == [] and len(resends) == 1
    again = decode_datagram(resends[0][0])[0]
    assert again.flow_id == 42  # type: ignore[attr-defined]
    assert again.serial_global == 1  # fresh serial, so the receiver does not drop it
    resends, given_up = rt.poll(0.4)
    assert len(resends) == 1 and given_up == []
    resends, given_up = rt.poll(0.61)  # 0.4 + 0.2 is not exactly 0.6 in floating point
    assert resends == [] and given_up == [42]
    assert len(rt) == 0
    assert rt.counters["resent"] == 2


def test_answer_stops_retransmission() -> None:
    rt = QueryRetransmitter(tries=3, interval=0.2)
    rt.track(1, b"q1", CS, 0.0)
    rt.track(2, b"q2", CS, 0.1)
    assert rt.answered(1)
    assert not rt.answered(1)
    resends, given_up = rt.poll(0.35)
    assert resends == [(b"q2", CS)] and given_up == []
    assert rt.next_deadline() == pytest.approx(0.55)


def test_retransmitter_without_restamp_resends_same_bytes_and_retrack_replaces() -> None:
    rt = QueryRetransmitter(tries=2, interval=1.0)
    rt.track(7, b"old", CS, 0.0)
    rt.track(7, b"new", CS, 0.5)
    assert rt.poll(1.0) == ([], [])  # the first track's deadline is stale
    assert rt.poll(1.5) == ([(b"new", CS)], [])
    assert rt.poll(2.5) == ([], [7])


def test_retransmitter_argument_checks() -> None:
    with pytest.raises(errors.UsageError):
        QueryRetransmitter(tries=0)
    with pytest.raises(errors.UsageError):
        QueryRetransmitter(interval=0)
    rt = QueryRetransmitter(max_pending=1)
    rt.track(1, b"", CS, 0.0)
    with pytest.raises(errors.UsageError):
        rt.track(2, b"", CS, 0.0)


def test_restamp_requires_single_message() -> None:
    tx = SsmbSender()
    with pytest.raises(errors.UsageError):
        tx.restamp(encode_datagram([Reset(), Reset()]), CS)
