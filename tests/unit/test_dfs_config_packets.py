"""DFS configuration checks, route lookup, and the packets the DFS builds itself."""

from __future__ import annotations

import struct

import pytest

from slbcore.dfs.config import ConfigError, parse_config
from slbcore.dfs.packets import (
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    PacketError,
    build_icmp_unreachable,
    build_rst_for,
    build_tcp,
    build_udp,
    checksum,
    ip_bytes,
    parse_frame,
)

pytestmark = pytest.mark.unit

BASE = {
    "dfs": {"name": "d", "switch": "s1"},
    "interface": [
        {"port": 1, "ipaddr": "10.0.1.1/24", "mac": "02:00:00:00:00:01"},
        {"port": 2, "ipaddr": "10.0.2.1/24", "mac": "02:00:00:00:00:02"},
    ],
    "route": [{"prefix": "10.9.0.0/16", "via": "10.0.2.254"}, {"prefix": "10.9.9.0/24", "via": "10.0.1.254"}],
}


def test_route_lookup_is_longest_prefix() -> None:
    cfg = parse_config(BASE)
    r = cfg.route("10.0.2.7")
    assert r is not None and (r.interface.port, r.next_hop) == (2, "10.0.2.7")
    r = cfg.route("10.9.1.1")
    assert r is not None and (r.interface.port, r.next_hop) == (2, "10.0.2.254")
    r = cfg.route("10.9.9.1")
    assert r is not None and (r.interface.port, r.next_hop) == (1, "10.0.1.254")
    assert cfg.route("192.0.2.1") is None


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"interface": []}, "[[interface]]"),
        ({"interface": [{"port": 1, "ipaddr": "10.0.1.1", "mac": "zz"}]}, "interface[0].mac"),
        (
            {"interface": [{"port": 1, "ipaddr": "nope/24", "mac": "02:00:00:00:00:01"}]},
            "interface[0].ipaddr",
        ),
        ({"interface": [{"port": 1, "ipaddr": "10.0.1.1/24", "mac": "01:00:00:00:00:01"}]}, "multicast"),
        ({"timeouts": {"idle": 0}}, "timeouts.idle"),
        ({"limits": {"colour": 1}}, "[limits]"),
        ({"route": [{"prefix": "10.0.0.0/33", "via": "10.0.1.9"}]}, "route[0].prefix"),
        ({"cs": {"ipaddr": "localhost"}}, "cs.ipaddr"),
        ({"cs": {"ipaddr": "10.0.0.1", "standby_ipaddr": "cs2"}}, "cs.standby_ipaddr"),
    ],
)
def test_bad_config_names_the_key(patch: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config({**BASE, **patch})


def test_default_ports_are_the_project_port_family() -> None:
    cfg = parse_config(BASE)
    assert (cfg.ssmb_port, cfg.cs_ssmb_port, cfg.cs_csmb_port, cfg.status_port) == (7700, 7700, 7701, 7790)
    assert parse_config({**BASE, "status": {"port": 0}}).status_port == 0  # any free port


def test_dfs_cli_reads_the_daemon_default_status_port(capsys: pytest.CaptureFixture[str]) -> None:
    from nodes import dfscli

    assert dfscli.DEFAULT_URL == "http://127.0.0.1:7790"
    with pytest.raises(SystemExit):
        dfscli.main(["--help"])
    assert "default http://127.0.0.1:7790" in capsys.readouterr().out


def test_duplicate_port_is_refused() -> None:
    intf = BASE["interface"][0]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config({**BASE, "interface": [intf, intf]})


def _tcp_checksum_ok(frame: bytes) -> bool:
    ihl = (frame[14] & 0x0F) * 4
    ip, seg = frame[14 : 14 + ihl], frame[14 + ihl : 14 + struct.unpack("!H", frame[16:18])[0]]
    pseudo = ip[12:16] + ip[16:20] + struct.pack("!BBH", 0, ip[9], len(seg))
    return checksum(ip) == 0 and checksum(pseudo + seg) == 0


def test_rst_answers_a_syn_with_ack_of_its_sequence() -> None:
    syn = parse_frame(
        build_tcp(
            "02:00:00:00:00:09", "02:00:00:00:00:01", "10.0.1.5", "10.0.9.1", 1234, 80, 1000, 0, TCP_SYN
        )
    )
    rst = build_rst_for(syn, "02:00:00:00:00:01")
    f = parse_frame(rst)
    assert f.ip is not None and f.eth_dst == "02:00:00:00:00:09"
    assert (f.ip.src, f.ip.dst, f.ip.sport, f.ip.dport) == ("10.0.9.1", "10.0.1.5", 80, 1234)
    assert (f.ip.tcp_flags, f.ip.tcp_seq, f.ip.tcp_ack) == (TCP_RST | TCP_ACK, 0, 1001)
    assert _tcp_checksum_ok(rst)


def test_rst_answers_an_ack_with_its_ack_number_as_sequence() -> None:
    seg = parse_frame(
        build_tcp(
            "02:00:00:00:00:09",
            "02:00:00:00:00:01",
            "10.0.1.5",
            "10.0.9.1",
            1234,
            80,
            1000,
            777,
            TCP_ACK,
            b"data",
        )
    )
    f = parse_frame(build_rst_for(seg, "02:00:00:00:00:01"))
    assert f.ip is not None and (f.ip.tcp_flags, f.ip.tcp_seq) == (TCP_RST, 777)


def test_icmp_unreachable_quotes_the_datagram() -> None:
    dgram = parse_frame(
        build_udp("02:00:00:00:00:09", "02:00:00:00:00:01", "10.0.1.5", "10.0.9.1", 5000, 53, b"abcdefghijkl")
    )
    f = parse_frame(build_icmp_unreachable(dgram, "02:00:00:00:00:01", 13))
    assert f.ip is not None and f.ip.proto == 1 and f.ip.dst == "10.0.1.5"
    assert checksum(f.ip.payload) == 0
    quoted = f.ip.payload[8:]
    assert quoted[12:20] == ip_bytes("10.0.1.5") + ip_bytes("10.0.9.1") and len(quoted) == 28


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00" * 10, "short_ethernet"),
        (b"\x00" * 12 + b"\x08\x00" + b"\x45" + b"\x00" * 10, "short_ipv4"),
        (b"\x00" * 12 + b"\x08\x00" + b"\x65" + b"\x00" * 30, "bad_ipv4"),
        (b"\x00" * 12 + b"\x08\x06" + b"\x00" * 10, "short_arp"),
    ],
)
def test_malformed_frames_raise_typed_errors(data: bytes, code: str) -> None:
    with pytest.raises(PacketError) as exc:
        parse_frame(data)
    assert exc.value.code == code
