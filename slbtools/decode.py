"""slb-decode: print CS/DFS bus messages from a hex dump or a packet capture.

Input is one of:

- a hex dump, as arguments, ``--file FILE`` (``-`` for stdin) or piped on stdin; whitespace,
  ``0x`` prefixes, ``:`` and ``,`` are ignored. ``--bus ssmb|csmb`` says which bus it is; the
  default ``auto`` looks at octet 4, which is a CSMB length's high octet (always 0, lengths stay
  below 1 MiB) or an SSMB msg_type (never 0). SSMB input is one datagram; CSMB input is a stream
  of messages.
- ``--pcap FILE`` (pcap or pcapng, read with scapy): UDP datagrams to or from the SSMB port and
  TCP segments to or from the CSMB port (``--ssmb-port``/``--csmb-port``, defaults 7700/7701).
  Each TCP direction is reassembled by sequence number before framing.

Each message becomes one line (or one JSON object per line with ``--json``). Decoding uses the
project codec (``slbproto``). Input that cannot be decoded is reported on stderr with the reason
(``truncated: ...``, ``bad_length: ...``) and the exit status is 2; messages decoded before the
problem are still printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import re
import string
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from slbproto import csmb, ssmb
from slbproto.constants import (
    CSMB_HEADER_LEN,
    DEFAULT_CSMB_PORT,
    DEFAULT_SSMB_PORT,
    MAX_CSMB_LENGTH,
    CsmbError,
    FlowFlag,
    SsmbError,
    VsClass,
    VsFlag,
)
from slbproto.errors import ProtocolError

EXIT_OK = 0
EXIT_BAD_INPUT = 2

# A capture whose TCP gaps never close must not grow without bound.
MAX_PENDING_SEGMENTS = 4096
_SEQ_MOD = 1 << 32


class InputError(Exception):
    """Input the decoder cannot use at all: bad hex, unreadable file, not a capture."""


@dataclass(frozen=True)
class Decoded:
    """One decoded message, with where it came from when it came from a capture."""

    bus: str
    message: Any
    frame: int | None = None
    src: str | None = None
    dst: str | None = None


@dataclass(frozen=True)
class Problem:
    """Bytes that did not decode, and why."""

    reason: str
    frame: int | None = None
    src: str | None = None
    dst: str | None = None


# --- hex input ---------------------------------------------------------------------------------

_HEX_NOISE = re.compile(r"0[xX]|[\s:,]")


def parse_hex(text: str) -> bytes:
    """Bytes from a hex dump; InputError naming the first bad character or an odd digit count."""
    digits = _HEX_NOISE.sub("", text)
    if not digits:
        raise InputError("no hex digits in the input")
    for position, char in enumerate(digits):
        if char not in string.hexdigits:
            raise InputError(f"hex: {char!r} is not a hex digit (digit {position + 1})")
    if len(digits) % 2:
        raise InputError(f"hex: odd number of digits ({len(digits)}); the last octet is incomplete")
    return bytes.fromhex(digits)


def detect_bus(data: bytes) -> str:
    """'csmb' when octet 4 is 0 (a CSMB length's high octet), else 'ssmb' (octet 4 is msg_type)."""
    if len(data) > 4 and data[4] == 0:
        return "csmb"
    return "ssmb"


def decode_ssmb(data: bytes) -> list[Decoded]:
    """Every message of one SSMB datagram; ProtocolError if the datagram is bad."""
    return [Decoded("ssmb", m) for m in ssmb.decode_datagram(data)]


def decode_csmb_stream(data: bytes) -> Iterator[Decoded | Problem]:
    """CSMB messages of a byte stream in order, a Problem if it ends inside one; ProtocolError if bad."""
    decoder = csmb.StreamDecoder()
    offset = 0
    while offset < len(data):
        # Feeding one message at a time lets the messages before a bad one come out first.
        step = len(data) - offset
        if step >= CSMB_HEADER_LEN:
            length = int.from_bytes(data[offset + 4 : offset + 8], "big")
            if length <= MAX_CSMB_LENGTH:
                step = min(step, max(length, CSMB_HEADER_LEN))
        for message in decoder.feed(data[offset : offset + step]):
            yield Decoded("csmb", message)
        offset += step
    if decoder.buffered:
        yield Problem(_incomplete_reason(data[len(data) - decoder.buffered :]))


def _incomplete_reason(tail: bytes) -> str:
    if len(tail) < CSMB_HEADER_LEN:
        return f"truncated: CSMB header needs {CSMB_HEADER_LEN} octets, got {len(tail)}"
    length = int.from_bytes(tail[4:8], "big")
    return f"truncated: CSMB message needs {length} octets (msg_length), got {len(tail)}"


def decode_hex(data: bytes, bus: str) -> Iterator[Decoded | Problem]:
    """Messages of a hex dump on ``bus`` ('ssmb', 'csmb' or 'auto'); a Problem ends the run."""
    chosen = detect_bus(data) if bus == "auto" else bus
    try:
        if chosen == "ssmb":
            yield from decode_ssmb(data)
        else:
            yield from decode_csmb_stream(data)
    except ProtocolError as exc:
        yield Problem(f"{chosen}: {exc}")


# --- pcap input --------------------------------------------------------------------------------


def _seq_after(a: int, b: int) -> int:
    """Signed distance from sequence number b to a, modulo 2**32."""
    delta = (a - b) % _SEQ_MOD
    return delta - _SEQ_MOD if delta >= _SEQ_MOD // 2 else delta


@dataclass
class TcpReassembler:
    """In-order bytes of one TCP direction from segments in capture order (pure, no sockets)."""

    next_seq: int | None = None
    pending: dict[int, bytes] = field(default_factory=dict)

    def add(self, seq: int, payload: bytes, syn: bool = False) -> bytes:
        """Record one segment; return the bytes that just became contiguous."""
        if syn:
            self.next_seq = (seq + 1) % _SEQ_MOD
            seq = self.next_seq  # data on a SYN (fast open) starts after it
        if not payload:
            return b""
        if self.next_seq is None:
            self.next_seq = seq  # capture started mid-connection
        if _seq_after(seq, self.next_seq) > 0:
            if len(self.pending) >= MAX_PENDING_SEGMENTS:
                raise ProtocolError(f"TCP gap at seq {self.next_seq} never filled")
            if len(payload) > len(self.pending.get(seq, b"")):
                self.pending[seq] = payload
            return b""
        out = bytearray(self._take(seq, payload))
        progressed = True
        while progressed and self.pending:
            progressed = False
            for pending_seq in list(self.pending):
                if _seq_after(pending_seq, self.next_seq) <= 0:
                    out += self._take(pending_seq, self.pending.pop(pending_seq))
                    progressed = True
        return bytes(out)

    def _take(self, seq: int, payload: bytes) -> bytes:
        assert self.next_seq is not None
        overlap = -_seq_after(seq, self.next_seq)
        fresh = payload[overlap:] if overlap < len(payload) else b""
        self.next_seq = (self.next_seq + len(fresh)) % _SEQ_MOD
        return fresh


@dataclass
class _TcpDirection:
    reassembler: TcpReassembler = field(default_factory=TcpReassembler)
    decoder: csmb.StreamDecoder = field(default_factory=csmb.StreamDecoder)
    failed: bool = False
    last_frame: int = 0


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


_UDP, _TCP = 17, 6
_TCP_SYN = 0x02
MAX_PENDING_FRAGMENTED = 256


@dataclass(frozen=True)
class Segment:
    """The transport-layer facts the decoder needs from one UDP datagram or TCP segment."""

    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    seq: int = 0
    syn: bool = False


def parse_transport(proto: int, src_addr: str, dst_addr: str, data: bytes) -> Segment | None:
    """A Segment from the bytes after the IP header, or None if it is not whole UDP/TCP."""
    if proto == _UDP and len(data) >= 8:
        sport, dport, length = struct.unpack_from("!HHH", data)
        end = length if 8 <= length <= len(data) else len(data)
        return Segment(
            proto, _endpoint(src_addr, sport), _endpoint(dst_addr, dport), sport, dport, data[8:end]
        )
    if proto == _TCP and len(data) >= 20:
        sport, dport, seq = struct.unpack_from("!HHI", data)
        header = (data[12] >> 4) * 4
        if header < 20 or header > len(data):
            return None
        return Segment(
            proto,
            _endpoint(src_addr, sport),
            _endpoint(dst_addr, dport),
            sport,
            dport,
            data[header:],
            seq,
            bool(data[13] & _TCP_SYN),
        )
    return None


@dataclass
class Ipv4Defragmenter:
    """Whole IPv4 payloads from fragments (an APP_QUERY with large app_data exceeds a 1500 MTU)."""

    pending: dict[tuple[str, str, int, int], dict[int, bytes]] = field(default_factory=dict)
    totals: dict[tuple[str, str, int, int], int] = field(default_factory=dict)

    def add(
        self, src: str, dst: str, ident: int, proto: int, offset: int, more: bool, data: bytes
    ) -> bytes | None:
        """Record one fragment (offset in octets); return the whole payload once complete."""
        key = (src, dst, ident, proto)
        if key not in self.pending and len(self.pending) >= MAX_PENDING_FRAGMENTED:
            oldest = next(iter(self.pending))
            del self.pending[oldest]
            self.totals.pop(oldest, None)
        parts = self.pending.setdefault(key, {})
        parts[offset] = data
        if not more:
            self.totals[key] = offset + len(data)
        total = self.totals.get(key)
        if total is None:
            return None
        whole = bytearray()
        for part_offset in sorted(parts):
            if part_offset > len(whole):
                return None  # a hole remains
            whole[part_offset : part_offset + len(parts[part_offset])] = parts[part_offset]
        if len(whole) < total:
            return None
        del self.pending[key]
        del self.totals[key]
        return bytes(whole[:total])


def _segment(pkt: Any, defrag: Ipv4Defragmenter) -> Segment | None:
    """The UDP/TCP segment of an IPv4 or IPv6 packet (IPv4 fragments reassembled), or None."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    if IP in pkt:
        net = pkt[IP]
        raw = bytes(net)
        header = net.ihl * 4
        data = raw[header : net.len] if net.len else raw[header:]
        src, dst, proto = str(net.src), str(net.dst), int(net.proto)
        if net.frag or net.flags.MF:
            whole = defrag.add(src, dst, int(net.id), proto, int(net.frag) * 8, bool(net.flags.MF), data)
            if whole is None:
                return None
            data = whole
        return parse_transport(proto, src, dst, data)
    if IPv6 in pkt:
        net = pkt[IPv6]
        data = bytes(net.payload)
        if net.plen:
            data = data[: net.plen]
        # Extension headers are not followed: the buses do not use them.
        return parse_transport(int(net.nh), str(net.src), str(net.dst), data)
    return None


def read_packets(path: Path) -> Iterator[tuple[int, Any]]:
    """(frame number, scapy packet) of every packet of a pcap/pcapng file."""
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapReader

    try:
        reader = PcapReader(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (Scapy_Exception, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a pcap or pcapng capture ({exc})") from None
    with reader:
        frame = 0
        while True:
            try:
                pkt = reader.read_packet()
            except EOFError:
                return
            except (Scapy_Exception, OSError, ValueError) as exc:
                raise InputError(f"{path}: capture is damaged after frame {frame} ({exc})") from None
            if pkt is None:
                return
            frame += 1
            yield frame, pkt


def decode_pcap(path: Path, ssmb_port: int, csmb_port: int) -> Iterator[Decoded | Problem]:
    """Messages of a capture in capture order, and a Problem for every part that did not decode."""
    directions: dict[tuple[str, str], _TcpDirection] = {}
    defrag = Ipv4Defragmenter()
    for frame, pkt in read_packets(path):
        seg = _segment(pkt, defrag)
        if seg is None:
            continue
        src, dst = seg.src, seg.dst
        if seg.proto == _UDP and ssmb_port in (seg.sport, seg.dport):
            if not seg.payload:
                continue
            try:
                for datagram_message in ssmb.decode_datagram(seg.payload):
                    yield Decoded("ssmb", datagram_message, frame, src, dst)
            except ProtocolError as exc:
                yield Problem(f"ssmb: {exc}", frame, src, dst)
        elif seg.proto == _TCP and csmb_port in (seg.sport, seg.dport):
            direction = directions.setdefault((src, dst), _TcpDirection())
            if direction.failed:
                continue
            direction.last_frame = frame
            try:
                data = direction.reassembler.add(seg.seq, seg.payload, syn=seg.syn)
                for message in direction.decoder.feed(data) if data else ():
                    yield Decoded("csmb", message, frame, src, dst)
            except ProtocolError as exc:
                direction.failed = True  # a TCP stream cannot be resynchronised after this
                yield Problem(f"csmb: {exc}; rest of this connection skipped", frame, src, dst)
    for (src, dst), direction in directions.items():
        if direction.failed:
            continue
        if direction.reassembler.pending:
            yield Problem(
                f"csmb: capture ends with a gap at seq {direction.reassembler.next_seq} "
                f"({len(direction.reassembler.pending)} segment(s) held back)",
                direction.last_frame,
                src,
                dst,
            )
        elif direction.decoder.buffered:
            yield Problem(
                f"csmb: truncated: capture ends {direction.decoder.buffered} octet(s) into a message",
                direction.last_frame,
                src,
                dst,
            )


# --- output ------------------------------------------------------------------------------------

_ENUMS: dict[tuple[str, str], type[enum.IntEnum] | type[enum.IntFlag]] = {
    ("ssmb", "error"): SsmbError,
    ("ssmb", "flags"): FlowFlag,
    ("csmb", "error"): CsmbError,
    ("csmb", "flags"): VsFlag,
    ("csmb", "vs_class"): VsClass,
}
_HEX_FIELDS = {"flow_id": 8, "tcp_flags": 2, "tos": 2, "status": 8}
_FIRST = ("serial_global", "serial_bytype", "error")
_PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


def _symbol(bus: str, name: str, value: int) -> str | list[str]:
    kind = _ENUMS.get((bus, name))
    if kind is None:
        return str(value)
    if issubclass(kind, enum.IntFlag):
        names = [m.name for m in kind if m.name and value & int(m)]
        rest = value & ~sum(int(m) for m in kind)
        return names + ([hex(rest)] if rest else [])
    try:
        return kind(value).name
    except ValueError:
        return str(value)


def _ordered_fields(obj: Any) -> list[tuple[str, Any]]:
    values = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    return sorted(
        values, key=lambda item: (item[0] not in _FIRST, _FIRST.index(item[0]) if item[0] in _FIRST else 0)
    )


def _pool(vs: Any) -> list[Any] | None:
    if vs.vs_class != VsClass.DFS_ASSIST or not vs.app_data:
        return None
    try:
        return list(csmb.decode_pool(vs.app_data))
    except ProtocolError:
        return None


def _text(bus: str, name: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        if name in _HEX_FIELDS:
            return f"0x{value:0{_HEX_FIELDS[name]}x}"
        symbol = _symbol(bus, name, value)
        if isinstance(symbol, list):
            return "|".join(symbol) if symbol else "0"
        return symbol
    if isinstance(value, (bytes, bytearray)):
        text = value.decode("latin-1")
        if value and all(c in _PRINTABLE for c in text):
            return json.dumps(text)
        return "0x" + value.hex() if value else '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(_text(bus, name, v) for v in value) + "]"
    if isinstance(value, csmb.PoolEntry):
        return f"{value.ipaddr}:{value.port}*{value.weight}"
    if dataclasses.is_dataclass(value):
        parts = [f"{n}={_text(bus, n, v)}" for n, v in _ordered_fields(value) if v is not None]
        pool = _pool(value) if isinstance(value, csmb.VirtualServer) else None
        if pool is not None:
            parts = [p for p in parts if not p.startswith("app_data=")]
            parts.append("pool=" + _text(bus, "pool", tuple(pool)))
        return "{" + " ".join(parts) + "}"
    return str(value)


def _where(item: Decoded | Problem) -> str:
    if item.frame is None:
        return ""
    return f"frame {item.frame} {item.src} -> {item.dst}  "


def format_line(item: Decoded) -> str:
    """One readable line: where it came from, bus, type and every field."""
    message = item.message
    fields_text = " ".join(
        f"{name}={_text(item.bus, name, value)}"
        for name, value in _ordered_fields(message)
        if value is not None
    )
    return f"{_where(item)}{item.bus.upper()} {message.MSG_TYPE.name} {fields_text}"


def _json_value(bus: str, name: str, value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return _symbol(bus, name, value) if (bus, name) in _ENUMS else value
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, tuple):
        return [_json_value(bus, name, v) for v in value]
    if dataclasses.is_dataclass(value):
        out = {n: _json_value(bus, n, v) for n, v in _ordered_fields(value)}
        pool = _pool(value) if isinstance(value, csmb.VirtualServer) else None
        if pool is not None:
            out["pool"] = [dataclasses.asdict(entry) for entry in pool]
        return out
    return str(value)


def to_json(item: Decoded) -> dict[str, Any]:
    """A JSON-ready dict: bus, type, origin in the capture (if any), fields by name."""
    out: dict[str, Any] = {"bus": item.bus, "type": item.message.MSG_TYPE.name}
    if item.frame is not None:
        out.update(frame=item.frame, src=item.src, dst=item.dst)
    out.update((n, _json_value(item.bus, n, v)) for n, v in _ordered_fields(item.message))
    return out


# --- command line ------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port {value} outside 1..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of slb-decode."""
    parser = argparse.ArgumentParser(
        prog="slb-decode",
        description="Decode CS/DFS bus messages (SSMB over UDP, CSMB over TCP) from hex or a capture.",
        epilog="Exit status: 0 when everything decoded, 2 when some input could not be decoded.",
    )
    parser.add_argument("hex", nargs="*", help="hex dump of one SSMB datagram or of CSMB stream bytes")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-f", "--file", help="read the hex dump from FILE ('-' for stdin)")
    source.add_argument("--pcap", type=Path, help="decode a pcap/pcapng capture instead of hex")
    parser.add_argument("--bus", choices=("auto", "ssmb", "csmb"), default="auto", help="bus of a hex dump")
    parser.add_argument("--ssmb-port", type=_port, default=DEFAULT_SSMB_PORT, help="UDP port of the SSMB")
    parser.add_argument("--csmb-port", type=_port, default=DEFAULT_CSMB_PORT, help="TCP port of the CSMB")
    parser.add_argument("--json", action="store_true", help="one JSON object per message and line")
    return parser


def _hex_text(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.hex:
        return " ".join(args.hex)
    if args.file and args.file != "-":
        try:
            return Path(args.file).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise InputError(f"{args.file}: {exc.strerror or exc}") from None
    if args.file is None and stdin.isatty():
        raise InputError("no input: give hex digits, --file FILE or --pcap FILE")
    return stdin.read()


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> int:
    """Decode what ``args`` name; print messages to stdout, problems to stderr; return the exit status."""
    if args.pcap is not None:
        if args.hex:
            raise InputError("give either hex digits or --pcap, not both")
        items: Iterable[Decoded | Problem] = decode_pcap(args.pcap, args.ssmb_port, args.csmb_port)
    else:
        items = decode_hex(parse_hex(_hex_text(args, stdin)), args.bus)
    status = EXIT_OK
    for item in items:
        if isinstance(item, Problem):
            status = EXIT_BAD_INPUT
            stderr.write(f"slb-decode: {_where(item)}{item.reason}\n")
        elif args.json:
            stdout.write(json.dumps(to_json(item)) + "\n")
        else:
            stdout.write(format_line(item) + "\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``slb-decode`` / ``python -m slbtools.decode``."""
    args = build_parser().parse_args(argv)
    try:
        return run(args, sys.stdout, sys.stderr, sys.stdin)
    except InputError as exc:
        sys.stderr.write(f"slb-decode: error: {exc}\n")
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: nothing left to report to.
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
