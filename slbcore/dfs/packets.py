"""Just enough Ethernet/ARP/IPv4/TCP/UDP/ICMP to parse packet-ins and build the DFS's own replies.

Parsing never raises anything but :class:`PacketError`, whose ``code`` is a short stable string
used as a counter key. Builders return whole Ethernet frames with correct checksums.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PORT_UNREACH = 3
ICMP_ADMIN_PROHIBITED = 13


class PacketError(ValueError):
    """A packet could not be parsed; ``code`` names why (a counter key)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:..`` to 6 octets."""
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(raw: bytes) -> str:
    """6 octets to ``aa:bb:..``."""
    return ":".join(f"{b:02x}" for b in raw)


def ip_bytes(ip: str) -> bytes:
    """Dotted quad to 4 octets."""
    return ipaddress.IPv4Address(ip).packed


def ip_str(raw: bytes) -> str:
    """4 octets to dotted quad."""
    return str(ipaddress.IPv4Address(raw))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class Arp:
    """An ARP packet for IPv4 over Ethernet."""

    op: int
    sha: str
    spa: str
    tha: str
    tpa: str


@dataclass(frozen=True)
class Ip4:
    """An IPv4 packet with its transport header fields (ports 0 when not TCP/UDP)."""

    src: str
    dst: str
    proto: int
    tos: int
    ttl: int
    header: bytes
    payload: bytes
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    l4_payload_len: int = 0


@dataclass(frozen=True)
class Frame:
    """A parsed Ethernet frame: exactly one of ``arp`` and ``ip`` is set for frames we handle."""

    eth_src: str
    eth_dst: str
    eth_type: int
    arp: Arp | None = None
    ip: Ip4 | None = None


def parse_frame(data: bytes) -> Frame:
    """Parse an Ethernet frame (no VLAN tags) carrying ARP or IPv4."""
    if len(data) < 14:
        raise PacketError("short_ethernet", f"{len(data)} octets")
    dst, src, eth_type = data[0:6], data[6:12], struct.unpack("!H", data[12:14])[0]
    body = data[14:]
    if eth_type == ETH_TYPE_ARP:
        if len(body) < 28:
            raise PacketError("short_arp", f"{len(body)} octets")
        htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", body[:8])
        if (htype, ptype, hlen, plen) != (1, ETH_TYPE_IPV4, 6, 4):
            raise PacketError("bad_arp", "not IPv4 over Ethernet")
        arp = Arp(op, mac_str(body[8:14]), ip_str(body[14:18]), mac_str(body[18:24]), ip_str(body[24:28]))
        return Frame(mac_str(src), mac_str(dst), eth_type, arp=arp)
    if eth_type == ETH_TYPE_IPV4:
        return Frame(mac_str(src), mac_str(dst), eth_type, ip=_parse_ipv4(body))
    raise PacketError("unsupported_ethertype", f"0x{eth_type:04x}")


def _parse_ipv4(body: bytes) -> Ip4:
    if len(body) < 20:
        raise PacketError("short_ipv4", f"{len(body)} octets")
    ver_ihl, tos, total_len = body[0], body[1], struct.unpack("!H", body[2:4])[0]
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < 20 or len(body) < ihl or total_len < ihl:
        raise PacketError("bad_ipv4", "version or header length")
    if total_len > len(body):
        raise PacketError("short_ipv4", f"total length {total_len} > {len(body)}")
    frag = struct.unpack("!H", body[6:8])[0]
    ttl, proto = body[8], body[9]
    header, payload = body[:ihl], body[ihl:total_len]
    src, dst = ip_str(body[12:16]), ip_str(body[16:20])
    base = Ip4(src, dst, proto, tos, ttl, header, payload)
    if frag & 0x1FFF:
        # a non-first fragment has no transport header; the DFS cannot place it in a flow
        raise PacketError("ipv4_fragment", "non-first fragment")
    if proto == IPPROTO_TCP:
        if len(payload) < 20:
            raise PacketError("short_tcp", f"{len(payload)} octets")
        sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", payload[:14])
        doff = (off_flags >> 12) * 4
        if doff < 20 or doff > len(payload):
            raise PacketError("bad_tcp", "data offset")
        return Ip4(
            src,
            dst,
            proto,
            tos,
            ttl,
            header,
            payload,
            sport,
            dport,
            off_flags & 0x1FF,
            seq,
            ack,
            len(payload) - doff,
        )
    if proto == IPPROTO_UDP:
        if len(payload) < 8:
            raise PacketError("short_udp", f"{len(payload)} octets")
        sport, dport = struct.unpack("!HH", payload[:4])
        return Ip4(src, dst, proto, tos, ttl, header, payload, sport, dport, l4_payload_len=len(payload) - 8)
    return base


def _ipv4_header(src: str, dst: str, proto: int, payload_len: int, ttl: int = 64, tos: int = 0) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, tos, 20 + payload_len, 0, 0x4000, ttl, proto, 0, ip_bytes(src), ip_bytes(dst)
    )
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def _ethernet(src: str, dst: str, eth_type: int, payload: bytes) -> bytes:
    frame = mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", eth_type) + payload
    return frame + b"\0" * max(0, 60 - len(frame))


def build_arp(op: int, sha: str, spa: str, tha: str, tpa: str, eth_dst: str | None = None) -> bytes:
    """An ARP request or reply frame (request: broadcast unless ``eth_dst`` is given)."""
    body = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        ETH_TYPE_IPV4,
        6,
        4,
        op,
        mac_bytes(sha),
        ip_bytes(spa),
        mac_bytes(tha),
        ip_bytes(tpa),
    )
    dst = eth_dst or (BROADCAST_MAC if op == ARP_REQUEST else tha)
    return _ethernet(sha, dst, ETH_TYPE_ARP, body)


def build_tcp(
    eth_src: str,
    eth_dst: str,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    window: int = 0,
) -> bytes:
    """A TCP segment in an IPv4 packet in an Ethernet frame, checksums filled in."""
    tcp = (
        struct.pack(
            "!HHIIHHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (5 << 12) | flags, window, 0, 0
        )
        + payload
    )
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    return _ethernet(eth_src, eth_dst, ETH_TYPE_IPV4, _ipv4_header(src, dst, IPPROTO_TCP, len(tcp)) + tcp)


def build_udp(
    eth_src: str, eth_dst: str, src: str, dst: str, sport: int, dport: int, payload: bytes
) -> bytes:
    """A UDP datagram in an IPv4 packet in an Ethernet frame, checksums filled in."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, IPPROTO_UDP, len(udp))
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return _ethernet(eth_src, eth_dst, ETH_TYPE_IPV4, _ipv4_header(src, dst, IPPROTO_UDP, len(udp)) + udp)


def build_rst_for(frame: Frame, eth_src: str) -> bytes:
    """The TCP RST a host would send back for ``frame`` (RFC 793 reset generation)."""
    ip = frame.ip
    assert ip is not None and ip.proto == IPPROTO_TCP
    if ip.tcp_flags & TCP_ACK:
        return build_tcp(eth_src, frame.eth_src, ip.dst, ip.src, ip.dport, ip.sport, ip.tcp_ack, 0, TCP_RST)
    seg_len = ip.l4_payload_len + (1 if ip.tcp_flags & TCP_SYN else 0) + (1 if ip.tcp_flags & TCP_FIN else 0)
    return build_tcp(
        eth_src, frame.eth_src, ip.dst, ip.src, ip.dport, ip.sport, 0, ip.tcp_seq + seg_len, TCP_RST | TCP_ACK
    )


def build_icmp_error(
    frame: Frame, eth_src: str, icmp_type: int, code: int, src_ipaddr: str | None = None
) -> bytes:
    """An ICMP error (unreachable, time exceeded) for ``frame``, quoting its IP header and 8 octets.

    The error comes from ``src_ipaddr`` (a router's own address) or, by default, from the
    address the offending packet was sent to (the VIP refusing it).
    """
    ip = frame.ip
    assert ip is not None
    quote = ip.header + ip.payload[:8]
    icmp = struct.pack("!BBHI", icmp_type, code, 0, 0) + quote
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    src = src_ipaddr or ip.dst
    return _ethernet(
        eth_src, frame.eth_src, ETH_TYPE_IPV4, _ipv4_header(src, ip.src, IPPROTO_ICMP, len(icmp)) + icmp
    )


def build_icmp_unreachable(frame: Frame, eth_src: str, code: int, src_ipaddr: str | None = None) -> bytes:
    """An ICMP destination-unreachable for ``frame``, quoting its IP header and first 8 octets."""
    return build_icmp_error(frame, eth_src, ICMP_UNREACH, code, src_ipaddr)


def icmp_type_code(ip: Ip4) -> tuple[int, int] | None:
    """The ICMP type and code of an ICMP packet, or None when it is too short to have them."""
    if ip.proto != IPPROTO_ICMP or len(ip.payload) < 8:
        return None
    return ip.payload[0], ip.payload[1]


def build_icmp_echo_reply(frame: Frame, eth_src: str) -> bytes:
    """The echo reply to an ICMP echo request in ``frame`` (same identifier, sequence and data)."""
    ip = frame.ip
    assert ip is not None and icmp_type_code(ip) == (ICMP_ECHO_REQUEST, 0)
    icmp = struct.pack("!BBH", ICMP_ECHO_REPLY, 0, 0) + ip.payload[4:]
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return _ethernet(
        eth_src, frame.eth_src, ETH_TYPE_IPV4, _ipv4_header(ip.dst, ip.src, IPPROTO_ICMP, len(icmp)) + icmp
    )
