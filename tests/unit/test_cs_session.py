"""CSMB session of the CS with one DFS: HELLO/ACK, RESET + ADD_VS, QUERY_VS, STATUS, reconnects."""

from __future__ import annotations

import pytest

from slbcore.cs.config import parse_config_text
from slbcore.cs.engine import ControlSegment
from slbcore.cs.session import MAX_REFUSED_HELLOS, STATUS_VS_UNAVAILABLE, DfsSession, SessionState
from slbproto import csmb, ssmb
from slbproto.constants import CsmbError, VsClass, VsFlag

pytestmark = pytest.mark.unit

CONFIG = """
[[virtual_server]]
name = "web"
vip = "10.0.0.100"
port = 80
[[virtual_server.real_server]]
name = "a"
address = "10.0.1.1"

[[virtual_server]]
name = "dns"
vip = "10.0.0.53"
port = 53
protocol = "udp"
vs_class = "dfs_assist"
[[virtual_server.real_server]]
name = "d1"
address = "10.0.2.1"
port = 5353
weight = 4
"""

DFS_SSMB = ("192.0.2.10", 7700)


def dfs_hello(major: int = 1, minor: int = 0, port: int = 7700) -> csmb.Hello:
    return csmb.Hello("192.0.2.10", "0.0.0.0", 0, major, minor, port)


def new_session(cs: ControlSegment | None = None) -> tuple[ControlSegment, DfsSession]:
    cs = cs or ControlSegment(parse_config_text(CONFIG))
    return cs, DfsSession(cs, ("192.0.2.10", 50000), "192.0.2.1", 7700)


def establish(cs: ControlSegment, session: DfsSession) -> list[object]:
    out = session.on_message(dfs_hello(), 0.0)
    assert [type(m) for m in out.csmb] == [csmb.Ack, csmb.Hello]
    out2 = session.on_message(csmb.Ack(), 0.0)
    return [*out.csmb, *out2.csmb, *out2.ssmb]


def test_full_handshake_sequence() -> None:
    cs, session = new_session()
    out = session.on_message(dfs_hello(), 0.0)
    ack, hello = out.csmb
    assert ack.error == CsmbError.OK
    assert hello.ssmb_active_ipaddr == "192.0.2.1" and hello.ssmb_port == 7700
    assert hello.flags & VsFlag.APP_PROXY and not hello.flags & VsFlag.REDUNDANT
    assert session.state is SessionState.WAIT_ACK
    out = session.on_message(csmb.Ack(), 0.0)
    assert session.established
    assert [type(m) for m in out.csmb] == [csmb.Reset, csmb.AddVs, csmb.AddVs]
    web, dns = (m.vs for m in out.csmb[1:])
    assert web.key == ("10.0.0.100", 80, 6) and web.vs_class == VsClass.CS_ASSIST
    assert dns.vs_class == VsClass.DFS_ASSIST
    assert csmb.decode_pool(dns.app_data) == (csmb.PoolEntry("10.0.2.1", 5353, 4),)
    # first contact: the DFS is told to drop flows decided by an earlier CS
    assert [(o.dest, type(o.message)) for o in out.ssmb] == [(DFS_SSMB, ssmb.Reset)]
    assert cs.dfs_endpoints == [DFS_SSMB]
    for m in out.csmb:
        csmb.encode_message(m)


def test_version_refused_then_retry() -> None:
    cs, session = new_session()
    out = session.on_message(dfs_hello(2, 0), 0.0)
    assert [(type(m), m.error) for m in out.csmb] == [(csmb.Ack, CsmbError.VERS_NEW)]
    assert session.state is SessionState.WAIT_HELLO
    establish(cs, session)
    assert session.established


def test_too_many_refused_hellos_close() -> None:
    _, session = new_session()
    outs = [session.on_message(dfs_hello(9, 0), 0.0) for _ in range(MAX_REFUSED_HELLOS)]
    assert not any(o.close for o in outs[:-1]) and outs[-1].close


def test_dfs_refusing_our_hello_closes() -> None:
    _, session = new_session()
    session.on_message(dfs_hello(), 0.0)
    out = session.on_message(csmb.Ack(error=int(CsmbError.VERS_OBSOLETE)), 0.0)
    assert out.close and "version" in out.reason


def test_requests_before_established_ignored() -> None:
    _, session = new_session()
    out = session.on_message(csmb.QueryVs(), 0.0)
    assert out.csmb == [] and session.counters["before_established"] == 1
    assert session.on_message(csmb.Ack(), 0.0).csmb == []
    assert session.counters["unexpected_ack"] == 1


def test_query_vs_status_reset_and_unsupported() -> None:
    cs, session = new_session()
    establish(cs, session)
    out = session.on_message(csmb.QueryVs(), 1.0)
    assert [len(m.servers) for m in out.csmb] == [2]
    flt = csmb.VirtualServer(0, "10.0.0.53", 53, int(VsClass.DFS_ASSIST), 17)
    out = session.on_message(csmb.QueryVs(flt), 1.0)
    assert [d.key for d in out.csmb[0].servers] == [("10.0.0.53", 53, 17)]
    out = session.on_message(csmb.Status(0), 1.0)
    assert [m.status for m in out.csmb] == [0]
    cs.set_drain("a", True)
    assert session.on_message(csmb.Status(0), 1.0).csmb[0].status == STATUS_VS_UNAVAILABLE
    out = session.on_message(csmb.Reset(), 1.0)
    assert [type(m) for m in out.csmb] == [csmb.Reset, csmb.AddVs, csmb.AddVs]
    out = session.on_message(csmb.AddVs(flt), 1.0)
    assert [(type(m), m.error) for m in out.csmb] == [(csmb.Ack, CsmbError.NOT_SUPPORTED)]


def test_announce_changes_only_when_established() -> None:
    cs, session = new_session()
    new = parse_config_text(CONFIG.split('[[virtual_server]]\nname = "dns"')[0])
    assert session.announce(cs.reload(new, 1.0)) == []
    cs2, session2 = new_session()
    establish(cs2, session2)
    msgs = session2.announce(cs2.reload(new, 1.0))
    assert [(type(m), m.vs.key) for m in msgs] == [(csmb.DeleteVs, ("10.0.0.53", 53, 17))]


def test_reconnect_is_brought_back_in_line_without_flow_reset() -> None:
    cs, first = new_session()
    establish(cs, first)
    cs.handle(ssmb.Query("198.51.100.1", "10.0.0.100", 1000, 80, flow_id=1), DFS_SSMB, 0.0)
    _, second = new_session(cs)
    out = establish(cs, second)
    assert [type(m) for m in out] == [csmb.Ack, csmb.Hello, csmb.Reset, csmb.AddVs, csmb.AddVs]
    first.closed()  # the old connection notices it is gone only now
    assert cs.dfs_endpoints == [DFS_SSMB], "the new session keeps the DFS registered"
    assert len(cs.flows) == 1
    second.closed()
    assert cs.dfs_endpoints == []


def test_reset_ack_for_ssmb_reset() -> None:
    cs, session = new_session()
    assert session.reset_ack() == []
    establish(cs, session)
    acks = session.reset_ack()
    assert [(type(m), m.error) for m in acks] == [(csmb.Ack, 0)]


def test_ack_of_first_contact_ssmb_reset_is_expected() -> None:
    """The DFS answers the SSMB RESET of first contact with a CSMB ACK: counted as such, once."""
    cs, session = new_session()
    out = establish(cs, session)
    assert sum(isinstance(getattr(m, "message", None), ssmb.Reset) for m in out) == 1
    assert session.resets_awaiting_ack == 1
    assert session.on_message(csmb.Ack(), 1.0).csmb == []
    assert session.counters["reset_acked"] == 1 and session.counters["unexpected_ack"] == 0
    session.on_message(csmb.Ack(), 1.0)
    assert session.counters["unexpected_ack"] == 1 and session.counters["reset_acked"] == 1


def test_reconnect_without_ssmb_reset_expects_no_ack() -> None:
    cs, first = new_session()
    establish(cs, first)
    first.closed()
    _, second = new_session(cs)
    establish(cs, second)
    assert second.resets_awaiting_ack == 0, "a DFS seen before gets no SSMB RESET"
    second.on_message(csmb.Ack(), 1.0)
    assert second.counters["unexpected_ack"] == 1


def test_refused_ssmb_reset_ack_counted() -> None:
    cs, session = new_session()
    establish(cs, session)
    session.on_message(csmb.Ack(error=int(CsmbError.BAD_MESSAGE)), 1.0)
    assert session.counters["reset_ack_error"] == 1 and session.counters["unexpected_ack"] == 0


def test_established_by_transport_expects_reset_ack() -> None:
    """The daemon path (mark_established after the transport's HELLO) tracks the SSMB RESET too."""
    _, session = new_session()
    neg = session.negotiator
    neg.on_hello(dfs_hello())
    neg.start()
    neg.on_ack(csmb.Ack())
    out = session.mark_established(0.0)
    assert [type(o.message) for o in out.ssmb] == [ssmb.Reset]
    session.on_message(csmb.Ack(), 0.1)
    assert session.counters["reset_acked"] == 1 and session.counters["unexpected_ack"] == 0


def test_standby_sets_redundant() -> None:
    cs = ControlSegment(parse_config_text(CONFIG))
    session = DfsSession(cs, ("192.0.2.10", 1), "192.0.2.1", 7700, standby_ip="192.0.2.2")
    hello = session.on_message(dfs_hello(), 0.0).csmb[1]
    assert hello.flags & VsFlag.REDUNDANT and hello.ssmb_standby_ipaddr == "192.0.2.2"


def test_established_by_transport_negotiation() -> None:
    """The daemon lets slbproto's CsmbConnection run HELLO; the session then only sequences."""
    cs, session = new_session()
    neg = session.negotiator
    assert [type(m) for m in neg.on_hello(dfs_hello())] == [csmb.Ack]
    neg.start()
    assert session.mark_established(0.0).csmb == [], "not before our HELLO is acknowledged"
    assert neg.on_ack(csmb.Ack()) == []
    out = session.mark_established(0.0)
    assert [type(m) for m in out.csmb] == [csmb.Reset, csmb.AddVs, csmb.AddVs]
    assert session.established and cs.dfs_endpoints == [DFS_SSMB]
    assert session.mark_established(0.0).csmb == [], "only once"
