"""slb-decode: hex and pcap input, readable and JSON output, clear errors with exit status 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from slbproto import csmb, ssmb
from slbtools.decode import TcpReassembler, detect_bus, main, parse_hex

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

QUERY = ssmb.Query(
    orig_src_ipaddr="203.0.113.7",
    orig_dst_ipaddr="192.0.2.10",
    orig_src_port=40001,
    orig_dst_port=80,
    flags=0x02,
    tcp_flags=0x02,
    flow_id=0x11,
    serial_global=1,
    serial_bytype=1,
)
REAP = ssmb.Reap("203.0.113.7", "192.0.2.10", 40001, 80, flow_id=0x21, serial_global=2, serial_bytype=1)
STATS = ssmb.Stats(
    "203.0.113.7",
    "192.0.2.10",
    40001,
    80,
    inbound_bytes=5,
    flow_id=0x21,
    error=4,
    serial_global=3,
    serial_bytype=1,
)
VS = csmb.VirtualServer(
    flags=0x203, virt_ipaddr="192.0.2.10", virt_port=80, vs_class=1, proto=6, app_data=b"JSESSIONID"
)
POOL_VS = csmb.VirtualServer(
    flags=0x1,
    virt_ipaddr="192.0.2.11",
    virt_port=443,
    vs_class=2,
    proto=6,
    app_data=csmb.encode_pool([csmb.PoolEntry("10.1.0.1", 80, 3)]),
)
HELLO = csmb.Hello("10.0.0.2", "0.0.0.0", 0x80, 1, 0, 7700, serial_global=1, serial_bytype=1)
ADD = csmb.AddVs(VS, serial_global=2, serial_bytype=1)
VS_LIST = csmb.VsList((VS, POOL_VS), serial_global=3, serial_bytype=1)
STATUS = csmb.Status(0xC0FFEE, serial_global=4, serial_bytype=1)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one run."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def spaced_hex(data: bytes) -> str:
    """Hex the way people paste it: 0x-prefixed groups of two octets over several lines."""
    groups = [f"0x{data[i : i + 2].hex()}" for i in range(0, len(data), 2)]
    return "\n".join(" ".join(groups[i : i + 8]) for i in range(0, len(groups), 8))


# --- hex input ---------------------------------------------------------------------------------


def test_parse_hex_tolerates_whitespace_prefixes_and_colons() -> None:
    assert parse_hex(" 0x01 02\n0X0a:0b,ff ") == bytes([1, 2, 10, 11, 255])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("01 0", "odd number of digits (3)"),
        ("01 zz", "'z' is not a hex digit (digit 3)"),
        (" \n", "no hex digits"),
    ],
)
def test_parse_hex_rejects_with_reason(text: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, text)
    assert status == 2
    assert out == ""
    assert reason in err


def test_detect_bus_by_octet_four() -> None:
    assert detect_bus(ssmb.encode_datagram([QUERY])) == "ssmb"
    assert detect_bus(csmb.encode_message(HELLO)) == "csmb"


def test_ssmb_hex_prints_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, spaced_hex(ssmb.encode_datagram([QUERY])))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("SSMB QUERY serial_global=1 serial_bytype=1 error=OK ")
    for part in (
        "orig_src_ipaddr=203.0.113.7",
        "orig_dst_port=80",
        "flags=ADD_TCP_OFFSET",
        "tcp_flags=0x02",
        "flow_id=0x00000011",
    ):
        assert part in line.split(), part


def test_batched_ssmb_datagram_is_one_line_per_message(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--bus", "ssmb", ssmb.encode_datagram([REAP, STATS]).hex())
    assert status == 0
    assert [line.split()[1] for line in out.splitlines()] == ["REAP", "STATS"]
    assert "error=CONNALIVE" in out.splitlines()[1]


def test_json_output_round_trips_values(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--json", ssmb.encode_datagram([REAP, STATS]).hex())
    assert status == 0
    reap, stats = (json.loads(line) for line in out.splitlines())
    assert reap["bus"] == "ssmb" and reap["type"] == "REAP"
    assert reap["flow_id"] == 0x21 and reap["orig_src_port"] == 40001
    assert stats["error"] == "CONNALIVE"
    assert stats["inbound_bytes"] == 5
    assert "frame" not in reap


def test_csmb_stream_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = b"".join(csmb.encode_message(m) for m in (HELLO, ADD, VS_LIST, STATUS))
    dump = tmp_path / "stream.hex"
    dump.write_text(spaced_hex(stream))
    status, out, err = run_cli(capsys, "--file", str(dump))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["CSMB", "HELLO"],
        ["CSMB", "ADD_VS"],
        ["CSMB", "VS_LIST"],
        ["CSMB", "STATUS"],
    ]
    assert "flags=APP_PROXY" in lines[0]
    assert "flags=TRANSLATE_ADDR|TRANSLATE_PORT|COOKIE_PROXY" in lines[1]
    assert 'app_data="JSESSIONID"' in lines[1]
    assert "pool=[10.1.0.1:80*3]" in lines[2]
    assert "status=0x00c0ffee" in lines[3]


def test_csmb_json_nests_virtual_servers_and_pool(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--json", "--bus", "csmb", csmb.encode_message(VS_LIST).hex())
    assert status == 0
    decoded = json.loads(out)
    assert decoded["type"] == "VS_LIST"
    first, second = decoded["servers"]
    assert first["flags"] == ["TRANSLATE_ADDR", "TRANSLATE_PORT", "COOKIE_PROXY"]
    assert first["vs_class"] == "CS_ASSIST"
    assert bytes.fromhex(first["app_data"]) == b"JSESSIONID"
    assert second["pool"] == [{"ipaddr": "10.1.0.1", "port": 80, "weight": 3}]


def test_hex_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(csmb.encode_message(STATUS).hex() + "\n"))
    status, out, _ = run_cli(capsys)
    assert status == 0
    assert out.startswith("CSMB STATUS ")


def test_truncated_ssmb_names_the_shortfall(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, ssmb.encode_datagram([QUERY])[:40].hex())
    assert status == 2
    assert out == ""
    assert "truncated" in err and "56" in err and "40" in err


def test_bad_csmb_length_after_good_messages(capsys: pytest.CaptureFixture[str]) -> None:
    bad = bytearray(csmb.encode_message(csmb.Ack()))
    bad[4:8] = (4).to_bytes(4, "big")
    status, out, err = run_cli(capsys, (csmb.encode_message(HELLO) + bytes(bad)).hex())
    assert status == 2
    assert out.startswith("CSMB HELLO ")
    assert "bad_length" in err and "msg_length=4" in err


def test_csmb_ending_inside_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    whole = csmb.encode_message(ADD)
    status, out, err = run_cli(capsys, "--bus", "csmb", (csmb.encode_message(STATUS) + whole[:20]).hex())
    assert status == 2
    assert out.startswith("CSMB STATUS ")
    assert f"truncated: CSMB message needs {len(whole)} octets (msg_length), got 20" in err


def test_unknown_type_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "--bus", "ssmb", "0000 0000 63 01 0000")
    assert status == 2
    assert "unknown_type" in err


def test_missing_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "--pcap", str(tmp_path / "absent.pcap"))
    assert status == 2 and "no such file" in err
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    status, _, err = run_cli(capsys, "--pcap", str(junk))
    assert status == 2 and "not a pcap or pcapng capture" in err
    status, _, err = run_cli(capsys, "--file", str(tmp_path / "absent.hex"))
    assert status == 2 and "absent.hex" in err


# --- TCP reassembly ----------------------------------------------------------------------------


def test_reassembler_orders_segments_and_drops_overlap() -> None:
    tcp = TcpReassembler()
    assert tcp.add(999, b"", syn=True) == b""
    assert tcp.add(1005, b"fghij") == b""  # early: held back
    assert tcp.add(1000, b"abcd") == b"abcd"  # "e" at 1004 is still missing
    assert tcp.add(1002, b"cde") == b"efghij"  # overlap trimmed, held segment released
    assert tcp.add(1000, b"abcdefghij") == b""  # retransmission
    assert tcp.add(1011, b"l") == b""
    assert tcp.add(1010, b"k") == b"kl"


def test_reassembler_handles_sequence_wraparound() -> None:
    tcp = TcpReassembler()
    assert tcp.add(2**32 - 2, b"ab") == b"ab"
    assert tcp.add(1, b"d") == b""
    assert tcp.add(0, b"c") == b"cd"


# --- pcap input --------------------------------------------------------------------------------


class Conversation:
    """Packets of one capture, with TCP sequence numbers kept per direction."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.seq: dict[tuple[str, int], int] = {}

    def udp(self, payload: bytes, dport: int = 7700, src: str = "10.0.0.2") -> None:
        self.packets.append(
            Ether() / IP(src=src, dst="10.0.0.1") / UDP(sport=40000, dport=dport) / Raw(payload)
        )

    def tcp(
        self,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        payload: bytes = b"",
        flags: str = "PA",
        seq: int | None = None,
    ) -> None:
        key = (src, sport)
        start = self.seq.setdefault(key, 1000 * sport)
        self.packets.append(
            Ether()
            / IP(src=src, dst=dst)
            / TCP(sport=sport, dport=dport, flags=flags, seq=start if seq is None else seq)
            / Raw(payload)
        )
        if seq is None:
            self.seq[key] = start + len(payload) + (1 if "S" in flags else 0)

    def write(self, path: Path) -> Path:
        wrpcap(str(path), self.packets)
        return path


def test_pcap_decodes_both_buses_with_reassembly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv = Conversation()
    dfs, cs = ("10.0.0.2", 50000), ("10.0.0.1", 7701)
    conv.tcp(*dfs, *cs, flags="S")
    conv.tcp(*cs, *dfs, flags="SA")
    conv.tcp(*dfs, *cs, csmb.encode_message(HELLO))
    conv.udp(ssmb.encode_datagram([QUERY]))
    conv.tcp(*cs, *dfs, csmb.encode_message(csmb.Ack()) + csmb.encode_message(ADD))
    vs_list = csmb.encode_message(VS_LIST)
    conv.tcp(*cs, *dfs, vs_list[:30])
    conv.udp(ssmb.encode_datagram([REAP, STATS]))
    conv.packets.append(conv.packets[-2].copy())  # a retransmitted segment adds nothing
    conv.tcp(*cs, *dfs, vs_list[30:])
    conv.udp(b"unrelated", dport=53)
    conv.packets.append(
        Ether()
        / IPv6(src="fd00::2", dst="fd00::1")
        / UDP(sport=1, dport=7700)
        / Raw(ssmb.encode_datagram([ssmb.Reset(serial_global=9)]))
    )
    pcap = conv.write(tmp_path / "both.pcap")

    status, out, err = run_cli(capsys, "--pcap", str(pcap))
    assert (status, err) == (0, "")
    summary = [(line.split()[1], line.split("  ")[1].split()[:2]) for line in out.splitlines()]
    assert summary == [
        ("3", ["CSMB", "HELLO"]),
        ("4", ["SSMB", "QUERY"]),
        ("5", ["CSMB", "ACK"]),
        ("5", ["CSMB", "ADD_VS"]),
        ("7", ["SSMB", "REAP"]),
        ("7", ["SSMB", "STATS"]),
        ("9", ["CSMB", "VS_LIST"]),
        ("11", ["SSMB", "RESET"]),
    ]
    assert out.splitlines()[0].startswith("frame 3 10.0.0.2:50000 -> 10.0.0.1:7701  CSMB HELLO ")
    assert "[fd00::2]:1 -> [fd00::1]:7700" in out.splitlines()[-1]

    status, out, _ = run_cli(capsys, "--pcap", str(pcap), "--json")
    records = [json.loads(line) for line in out.splitlines()]
    vs_record = next(r for r in records if r["type"] == "VS_LIST")
    assert vs_record["frame"] == 9 and vs_record["src"] == "10.0.0.1:7701"
    assert [s["virt_port"] for s in vs_record["servers"]] == [80, 443]


def test_pcap_custom_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv = Conversation()
    conv.udp(ssmb.encode_datagram([QUERY]), dport=9700)
    conv.tcp("10.0.0.2", 50000, "10.0.0.1", 9701, csmb.encode_message(STATUS))
    pcap = conv.write(tmp_path / "ports.pcap")
    status, out, _ = run_cli(capsys, "--pcap", str(pcap))
    assert (status, out) == (0, "")
    status, out, _ = run_cli(capsys, "--pcap", str(pcap), "--ssmb-port", "9700", "--csmb-port", "9701")
    assert status == 0
    assert [line.split("  ")[1].split()[1] for line in out.splitlines()] == ["QUERY", "STATUS"]


def test_pcap_reports_bad_packets_and_keeps_going(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv = Conversation()
    conv.udp(ssmb.encode_datagram([QUERY])[:40])
    bad = bytearray(csmb.encode_message(csmb.Ack()))
    bad[4:8] = (4).to_bytes(4, "big")
    conv.tcp("10.0.0.2", 50000, "10.0.0.1", 7701, bytes(bad))
    conv.tcp("10.0.0.2", 50000, "10.0.0.1", 7701, csmb.encode_message(STATUS))  # same broken stream
    conv.udp(ssmb.encode_datagram([REAP]))
    conv.tcp("10.0.0.3", 50001, "10.0.0.1", 7701, csmb.encode_message(ADD)[:20])  # capture ends mid-message
    pcap = conv.write(tmp_path / "bad.pcap")
    status, out, err = run_cli(capsys, "--pcap", str(pcap))
    assert status == 2
    assert [line.split("  ")[1].split()[1] for line in out.splitlines()] == ["REAP"]
    problems = err.splitlines()
    assert len(problems) == 3, problems
    assert problems[0].startswith("slb-decode: frame 1 10.0.0.2:40000 -> 10.0.0.1:7700  ssmb: truncated:")
    assert (
        "frame 2 " in problems[1]
        and "bad_length" in problems[1]
        and "rest of this connection skipped" in problems[1]
    )
    assert "frame 5 " in problems[2] and "truncated: capture ends 20 octet(s) into a message" in problems[2]


def test_pcap_reassembles_ip_fragments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = ssmb.AppQuery("203.0.113.7", "192.0.2.10", 40001, 80, flow_id=0x12, app_data=b"x" * 3000)
    datagram = (
        IP(src="10.0.0.2", dst="10.0.0.1", id=77)
        / UDP(sport=40000, dport=7700)
        / Raw(ssmb.encode_datagram([big]))
    )
    pieces = fragment(datagram, fragsize=1000)
    assert len(pieces) == 4
    order = [pieces[2], pieces[0], pieces[3], pieces[1]]  # fragments may arrive in any order
    pcap = tmp_path / "fragments.pcap"
    wrpcap(str(pcap), [Ether() / p for p in order])
    status, out, err = run_cli(capsys, "--pcap", str(pcap), "--json")
    assert (status, err) == (0, "")
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["type"] == "APP_QUERY" and record["frame"] == 4
    assert bytes.fromhex(record["app_data"]) == b"x" * 3000


def test_module_entry_point_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "slbtools.decode", "--bus", "csmb", "00000000 0000000c 05000000"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CSMB RESET ")
    done = subprocess.run(
        [sys.executable, "-m", "slbtools.decode", "0102"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "truncated" in done.stderr
