"""Both buses over real sockets on 127.0.0.1 (ephemeral ports), through slbproto.transport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from slbproto.constants import CsmbError, SsmbError, VsClass, VsFlag
from slbproto.csmb import (
    Ack,
    AddVs,
    CsmbMessage,
    QueryVs,
    Reset,
    VirtualServer,
    VsList,
    decode_message,
    encode_message,
)
from slbproto.hello import HelloNegotiator
from slbproto.peer import Address, QueryRetransmitter, SsmbSender
from slbproto.ssmb import Query, Reap, Reply, SsmbMessage, Stats
from slbproto.transport import (
    CsmbConnection,
    SsmbEndpoint,
    open_csmb_connection,
    open_ssmb_endpoint,
    start_csmb_server,
)

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"
VS = VirtualServer(VsFlag.TRANSLATE_ADDR, "10.0.0.100", 80, VsClass.CS_ASSIST, 6)
T = TypeVar("T")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll condition until true or fail after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before deadline")
        await asyncio.sleep(0.005)


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), timeout=20))


def test_csmb_hello_then_configuration() -> None:
    async def scenario() -> None:
        cs_seen: list[CsmbMessage] = []
        dfs_seen: list[CsmbMessage] = []
        cs_conns: list[CsmbConnection] = []

        def cs_established(conn: CsmbConnection) -> None:
            conn.send(Reset())
            conn.send(AddVs(VS))

        def cs_message(conn: CsmbConnection, msg: CsmbMessage) -> None:
            cs_seen.append(msg)
            if isinstance(msg, QueryVs):
                conn.send(VsList((VS,)))

        def cs_factory() -> CsmbConnection:
            negotiator = HelloNegotiator(
                ssmb_active_ipaddr="127.0.0.1",
                ssmb_port=7700,
                flags=VsFlag.APP_PROXY,
                versions=[(1, 0)],
            )
            conn = CsmbConnection(cs_message, negotiator=negotiator, on_established=cs_established)
            cs_conns.append(conn)
            return conn

        server = await start_csmb_server(LOCAL, 0, cs_factory)
        port = server.sockets[0].getsockname()[1]
        dfs_negotiator = HelloNegotiator(
            ssmb_active_ipaddr="127.0.0.1", ssmb_port=17700, versions=[(1, 0), (1, 1)]
        )
        dfs = await open_csmb_connection(
            LOCAL,
            port,
            lambda: CsmbConnection(lambda c, m: dfs_seen.append(m), negotiator=dfs_negotiator, initiate=True),
        )
        try:
            await until(lambda: dfs_negotiator.established and len(dfs_seen) >= 2)
            assert dfs_negotiator.version == (1, 0)  # offered 1.1, refused, retried 1.0
            assert dfs_negotiator.counters["retries"] == 1
            assert dfs_negotiator.peer_app_proxy
            cs_negotiator = cs_conns[0].negotiator
            assert cs_negotiator is not None and cs_negotiator.established
            assert cs_negotiator.peer_ssmb_endpoint == ("127.0.0.1", 17700)
            assert dfs_seen[:2] == [
                Reset(serial_global=dfs_seen[0].serial_global),
                AddVs(VS, serial_global=dfs_seen[1].serial_global),
            ]
            # CS serials: ACK(VERS_NEW), ACK, HELLO, RESET, ADD_VS.
            assert [m.serial_global for m in dfs_seen[:2]] == [3, 4]
            dfs.send(QueryVs())
            await until(lambda: any(isinstance(m, VsList) for m in dfs_seen))
            assert next(m for m in dfs_seen if isinstance(m, VsList)).servers == (VS,)
            assert cs_seen == [QueryVs(serial_global=cs_seen[0].serial_global, serial_bytype=0)]
        finally:
            dfs.close()
            server.close()
            await server.wait_closed()

    run(scenario)


def test_csmb_lying_length_is_answered_and_closed() -> None:
    async def scenario() -> None:
        conns: list[CsmbConnection] = []

        def factory() -> CsmbConnection:
            conns.append(CsmbConnection(lambda c, m: None))
            return conns[-1]

        server = await start_csmb_server(LOCAL, 0, factory)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOCAL, port)
        try:
            lying = bytearray(encode_message(Reset()))
            lying[4:8] = (5).to_bytes(4, "big")
            writer.write(bytes(lying))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=5)  # until EOF
            assert decode_message(answer) == Ack(error=CsmbError.BAD_MESSAGE)
            await until(lambda: bool(conns) and conns[0].closed.done())
            assert conns[0].counters["bad_length"] == 1
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    run(scenario)


def test_ssmb_query_reply_batched_stats_and_garbage() -> None:
    async def scenario() -> None:
        cs_seen: list[tuple[SsmbMessage, Address]] = []
        dfs_seen: list[SsmbMessage] = []
        cs: SsmbEndpoint | None = None

        def cs_message(msg: SsmbMessage, sender: Address) -> None:
            cs_seen.append((msg, sender))
            if isinstance(msg, Query):
                assert cs is not None
                cs.send(
                    Reply(
                        msg.orig_src_ipaddr,
                        msg.orig_dst_ipaddr,
                        msg.orig_src_port,
                        msg.orig_dst_port,
                        new_dst_ipaddr="10.0.2.1",
                        new_dst_port=8080,
                        flow_id=msg.flow_id,
                    ),
                    sender,
                )

        cs = await open_ssmb_endpoint((LOCAL, 0), cs_message)
        retransmitter = QueryRetransmitter(tries=3, interval=1.0)
        dfs = await open_ssmb_endpoint(
            (LOCAL, 0),
            lambda m, s: dfs_seen.append(m),
            sender=SsmbSender(batch_delay=0.05),
            retransmitter=retransmitter,
        )
        garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            dfs.send(Query("192.0.2.7", "10.0.0.100", 40000, 80, flow_id=77), cs.local_address)
            await until(lambda: bool(dfs_seen))
            reply = dfs_seen[0]
            assert isinstance(reply, Reply)
            assert (reply.flow_id, reply.new_dst_ipaddr, reply.new_dst_port) == (77, "10.0.2.1", 8080)
            assert len(retransmitter) == 0 and retransmitter.counters["answered"] == 1

            # CS reaps three flows; they leave as one batch.
            for flow_id in (1, 2, 3):
                cs.send(
                    Reap("192.0.2.7", "10.0.0.100", 40000 + flow_id, 80, flow_id=flow_id), dfs.local_address
                )
            await until(lambda: len(dfs_seen) == 4)
            assert dfs.receiver.counters["datagrams"] == 2  # the REPLY, then one batch
            # DFS answers with STATS, batched within its 50 ms delay.
            for flow_id in (1, 2, 3):
                dfs.send(
                    Stats(
                        "192.0.2.7",
                        "10.0.0.100",
                        40000 + flow_id,
                        80,
                        inbound_bytes=100,
                        flow_id=flow_id,
                        error=SsmbError.CONNALIVE if flow_id == 2 else 0,
                    ),
                    cs.local_address,
                )
            await until(lambda: sum(isinstance(m, Stats) for m, _ in cs_seen) == 3)
            assert cs.receiver.counters["datagrams"] == 2  # the QUERY, then one STATS batch

            garbage.sendto(b"\x00\x01\x00\x01\x63\x01\x00\x00", cs.local_address)
            garbage.sendto(b"junk", cs.local_address)
            await until(lambda: cs.receiver.counters["dropped"] == 2)
            assert cs.receiver.counters["unknown_type"] == 1
            assert cs.receiver.counters["truncated"] == 1
            assert len(cs_seen) == 4
            assert cs.counters["callback_error"] == 0
        finally:
            garbage.close()
            dfs.close()
            cs.close()

    run(scenario)


def test_ssmb_unanswered_query_is_retransmitted_then_given_up() -> None:
    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind((LOCAL, 0))
        silent.setblocking(False)
        given_up: list[int] = []
        dfs = await open_ssmb_endpoint(
            (LOCAL, 0),
            lambda m, s: None,
            retransmitter=QueryRetransmitter(tries=3, interval=0.05),
            on_given_up=given_up.append,
        )
        try:
            dfs.send(Query("192.0.2.7", "10.0.0.100", 40000, 80, flow_id=9), silent.getsockname())
            await until(lambda: given_up == [9])
            received = []
            while True:
                try:
                    received.append(silent.recv(2048))
                except BlockingIOError:
                    break
            assert len(received) == 3
            assert [int.from_bytes(d[:2], "big") for d in received] == [0, 1, 2]
        finally:
            dfs.close()
            silent.close()

    run(scenario)
