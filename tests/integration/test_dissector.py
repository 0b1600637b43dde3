"""The Wireshark Lua dissector (tools/wireshark/slb.lua) against real and crafted captures.

The live test sends every SSMB message type over UDP and every CSMB message type over one TCP
connection on 127.0.0.1 while ``tshark -i lo`` captures them, then decodes the capture with the
dissector and compares every field with what was sent. The offline test writes a pcap with scapy,
including malformed messages that must be flagged with expert info, never a Lua error.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from slbtools.scapy_layers import (
    CSMB,
    DEFAULT_CSMB_PORT,
    DEFAULT_SSMB_PORT,
    SSMB,
    CSMBHello,
    CSMBHelloAuth,
    CSMBPoolEntry,
    CSMBStatus,
    CSMBVsDef,
    CSMBVsList,
    SSMBAppQuery,
    SSMBEndflow,
    SSMBFlow,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "tools" / "wireshark" / "slb.lua"
TSHARK = shutil.which("tshark")
REQUIRE_ALL = os.environ.get("CI") == "true" or os.environ.get("SLB_REQUIRE_ALL_TIERS") == "1"
DEADLINE_S = 15.0


def _unavailable(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"every tier must run here (CI): {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tshark() -> str:
    """Path of tshark, or skip: the dissector cannot be exercised without it."""
    if TSHARK is None:
        _unavailable("tshark is not installed (apt-get install tshark)")
    assert TSHARK is not None
    return TSHARK


# ---------------------------------------------------------------------------------------------
# The traffic: every message type with distinctive field values.

FLOW = dict(
    orig_src_ipaddr="203.0.113.7",
    orig_dst_ipaddr="192.0.2.10",
    orig_src_port=40001,
    orig_dst_port=80,
    tos=0x10,
    proto=6,
    flags=0x02,
    tcp_flags=0x02,
    new_dst_ipaddr="10.1.0.5",
    new_dst_port=8080,
    next_hop_ipaddr="10.1.0.254",
    svr_seq_offset=1000,
    svr_ack_offset=2000,
    client_seq_offset=3000,
    client_ack_offset=4000,
)
ENDFLOW = dict(
    {k: FLOW[k] for k in list(FLOW)[:8]},
    inbound_bytes=0x1_0000_0001,
    outbound_bytes=12345,
    inbound_pkts=17,
    outbound_pkts=23,
)
APP = {k: v for k, v in FLOW.items() if not k.endswith("_offset")}


def ssmb_datagrams() -> list[tuple[str, bytes]]:
    """(label, datagram) for every SSMB type, a batched datagram, and the closing RESET."""
    return [
        (
            "QUERY",
            bytes(SSMB(serial_global=1, serial_bytype=1, msg_type="QUERY") / SSMBFlow(flow_id=0x11, **FLOW)),
        ),
        (
            "APP_QUERY",
            bytes(
                SSMB(serial_global=2, serial_bytype=1, msg_type="APP_QUERY")
                / SSMBAppQuery(flow_id=0x12, app_data=b"JSESSIONID=abc123", **APP)
            ),
        ),
        (
            "REPLY",
            bytes(
                SSMB(serial_global=3, serial_bytype=1, msg_type="REPLY", error=3)
                / SSMBFlow(flow_id=0x11, **FLOW)
            ),
        ),
        (
            "DELETE",
            bytes(
                SSMB(serial_global=4, serial_bytype=1, msg_type="DELETE")
                / SSMBEndflow(flow_id=0x11, **ENDFLOW)
            ),
        ),
        (
            "NEWFLOW",
            bytes(
                SSMB(serial_global=5, serial_bytype=1, msg_type="NEWFLOW")
                / SSMBFlow(flow_id=0x80000001, **FLOW)
            ),
        ),
        (
            "batch",
            bytes(
                SSMB(serial_global=6, serial_bytype=1, msg_type="REAP")
                / SSMBFlow(flow_id=0x21, **FLOW)
                / SSMB(serial_global=7, serial_bytype=2, msg_type="REAP")
                / SSMBFlow(flow_id=0x22, **FLOW)
                / SSMB(serial_global=8, serial_bytype=1, msg_type="STATS", error=4)
                / SSMBEndflow(flow_id=0x21, **ENDFLOW)
            ),
        ),
        ("RESET", bytes(SSMB(serial_global=9, serial_bytype=1, msg_type="RESET"))),
    ]


VS_COOKIE = dict(
    flags="TRANSLATE_ADDR+TRANSLATE_PORT+COOKIE_PROXY",
    virt_ipaddr="192.0.2.10",
    virt_port=80,
    vs_class="CS_ASSIST",
    proto=6,
    app_data=b"JSESSIONID",
)
POOL = [("10.1.0.1", 80, 3), ("10.1.0.2", 8080, 1)]
VS_POOL = dict(
    flags="TRANSLATE_ADDR",
    virt_ipaddr="192.0.2.11",
    virt_port=443,
    vs_class="DFS_ASSIST",
    proto=6,
    app_data=b"".join(bytes(CSMBPoolEntry(ipaddr=a, port=p, weight=w)) for a, p, w in POOL),
)


def csmb_messages() -> dict[str, bytes]:
    """Every CSMB type (and variants) with distinctive serials."""
    return {
        "HELLO": bytes(
            CSMB(serial_global=1, serial_bytype=1, msg_type="HELLO")
            / CSMBHello(ssmb_active_ipaddr="10.0.0.2", flags="APP_PROXY", ssmb_port=7700)
        ),
        "ACK": bytes(CSMB(serial_global=2, serial_bytype=1, msg_type="ACK", error="VERS_NEW")),
        "HELLO_AUTH": bytes(
            CSMB(serial_global=3, serial_bytype=2, msg_type="HELLO")
            / CSMBHello(
                ssmb_active_ipaddr="10.0.0.254",
                ssmb_standby_ipaddr="10.0.0.253",
                flags="REDUNDANT+APP_PROXY",
                ssmb_port=7700,
            )
            / CSMBHelloAuth(auth_data=bytes(range(32)))
        ),
        "RESET": bytes(CSMB(serial_global=4, serial_bytype=1, msg_type="RESET")),
        "ADD_VS": bytes(CSMB(serial_global=5, serial_bytype=1, msg_type="ADD_VS") / CSMBVsDef(**VS_COOKIE)),
        "ADD_VS_POOL": bytes(
            CSMB(serial_global=6, serial_bytype=2, msg_type="ADD_VS") / CSMBVsDef(**VS_POOL)
        ),
        "DELETE_VS": bytes(
            CSMB(serial_global=7, serial_bytype=1, msg_type="DELETE_VS")
            / CSMBVsDef(virt_ipaddr="192.0.2.10", virt_port=80, proto=6)
        ),
        "QUERY_VS": bytes(CSMB(serial_global=8, serial_bytype=1, msg_type="QUERY_VS")),
        "VS_LIST": bytes(
            CSMB(serial_global=9, serial_bytype=1, msg_type="VS_LIST")
            / CSMBVsList(servers=[CSMBVsDef(**VS_COOKIE), CSMBVsDef(**VS_POOL)])
        ),
        "STATUS": bytes(
            CSMB(serial_global=10, serial_bytype=1, msg_type="STATUS") / CSMBStatus(status=0xC0FFEE)
        ),
    }


# ---------------------------------------------------------------------------------------------
# Reading tshark's JSON: one dict per message, nested subtrees flattened.


def _flatten(node: dict[str, Any], out: dict[str, list[str]]) -> None:
    """Collect every field of a message, subtrees included, keeping repeats in order."""
    for key, value in node.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _flatten(item, out)
            elif isinstance(item, str):
                out.setdefault(key, []).append(item)


def decoded_messages(
    tshark: str, pcap: Path, extra: list[str]
) -> list[tuple[int, str, dict[str, list[str]]]]:
    """(frame number, "ssmb"/"csmb", fields) for every message the dissector found, in order."""
    cmd = [
        tshark,
        "-n",
        "-X",
        f"lua_script:{LUA}",
        *extra,
        "-r",
        str(pcap),
        "-T",
        "json",
        "--no-duplicate-keys",
        "-J",
        "frame ssmb csmb",
        "-Y",
        "ssmb || csmb",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Lua" not in done.stderr, done.stderr
    result = []
    for frame in json.loads(done.stdout or "[]"):
        layers = frame["_source"]["layers"]
        number = int(layers["frame"]["frame.number"])
        for bus in ("ssmb", "csmb"):
            messages = layers.get(bus, [])
            for message in messages if isinstance(messages, list) else [messages]:
                fields: dict[str, list[str]] = {}
                _flatten(message, fields)
                result.append((number, bus, fields))
    return result


def verbose_text(tshark: str, pcap: Path, extra: list[str]) -> str:
    """The -V detail of every SSMB/CSMB frame."""
    cmd = [
        tshark,
        "-n",
        "-X",
        f"lua_script:{LUA}",
        *extra,
        "-r",
        str(pcap),
        "-V",
        "-O",
        "ssmb,csmb",
        "-Y",
        "ssmb || csmb",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def one(fields: dict[str, list[str]], name: str) -> str:
    """The single value of a field in one message."""
    values = fields.get(name)
    assert values is not None and len(values) == 1, f"{name}: {values} in {fields}"
    return values[0]


def check_flow_fields(fields: dict[str, list[str]], flow_id: int) -> None:
    """A flow message decoded to the FLOW values."""
    assert one(fields, "ssmb.orig_src_ipaddr") == "203.0.113.7"
    assert one(fields, "ssmb.orig_dst_ipaddr") == "192.0.2.10"
    assert one(fields, "ssmb.orig_src_port") == "40001"
    assert one(fields, "ssmb.orig_dst_port") == "80"
    assert one(fields, "ssmb.tos") == "0x10"
    assert one(fields, "ssmb.proto") == "6"
    assert one(fields, "ssmb.flags.add_tcp_offset") == "1"
    assert one(fields, "ssmb.flags.outbound") == "0"
    assert one(fields, "ssmb.tcp_flags.syn") == "1"
    assert int(one(fields, "ssmb.flow_id"), 16) == flow_id


def check_all_ssmb(messages: list[tuple[int, str, dict[str, list[str]]]]) -> None:
    """Every SSMB type decoded with the values sent, the batch split into its three messages."""
    ssmb = [(frame, f) for frame, bus, f in messages if bus == "ssmb"]
    types = [one(f, "ssmb.msg_type") for _, f in ssmb]
    assert types == ["1", "2", "3", "4", "7", "5", "5", "6", "8"], types
    by_serial = {one(f, "ssmb.serial_global"): f for _, f in ssmb}
    query = by_serial["1"]
    check_flow_fields(query, 0x11)
    assert one(query, "ssmb.count") == "1"
    assert one(query, "ssmb.svr_seq_offset") == "1000"
    assert one(query, "ssmb.client_ack_offset") == "4000"
    assert one(query, "ssmb.new_dst_ipaddr") == "10.1.0.5"
    assert one(query, "ssmb.new_dst_port") == "8080"
    assert one(query, "ssmb.next_hop_ipaddr") == "10.1.0.254"
    app = by_serial["2"]
    assert one(app, "ssmb.app_data_len") == "17"
    assert bytes.fromhex(one(app, "ssmb.app_data").replace(":", "")) == b"JSESSIONID=abc123"
    assert int(one(app, "ssmb.flow_id"), 16) == 0x12
    assert one(by_serial["3"], "ssmb.error") == "3"
    delete = by_serial["4"]
    assert one(delete, "ssmb.inbound_bytes") == str(0x1_0000_0001)
    assert one(delete, "ssmb.outbound_bytes") == "12345"
    assert one(delete, "ssmb.inbound_pkts") == "17"
    assert one(delete, "ssmb.outbound_pkts") == "23"
    check_flow_fields(by_serial["5"], 0x80000001)
    batch_frames = {frame for frame, f in ssmb if one(f, "ssmb.serial_global") in ("6", "7", "8")}
    assert len(batch_frames) == 1, "the batched datagram is one frame"
    for serial in ("6", "7", "8"):
        assert one(by_serial[serial], "ssmb.count") == "3"
    assert int(one(by_serial["7"], "ssmb.flow_id"), 16) == 0x22
    assert one(by_serial["8"], "ssmb.error") == "4"
    assert one(by_serial["9"], "ssmb.msg_type") == "8"


def check_all_csmb(
    messages: list[tuple[int, str, dict[str, list[str]]]], split_frames: set[int] | None
) -> None:
    """Every CSMB type decoded with the values sent."""
    csmb = [(frame, f) for frame, bus, f in messages if bus == "csmb"]
    order = [one(f, "csmb.serial_global") for _, f in csmb]
    assert order == [str(n) for n in range(1, 11)], order
    by_serial = {one(f, "csmb.serial_global"): (frame, f) for frame, f in csmb}
    sent = csmb_messages()
    for label, raw in sent.items():
        serial = str(int.from_bytes(raw[0:2], "big"))
        _, fields = by_serial[serial]
        assert one(fields, "csmb.msg_length") == str(len(raw)), label
        assert one(fields, "csmb.msg_type") == str(raw[8]), label
    hello = by_serial["1"][1]
    assert one(hello, "csmb.ssmb_active_ipaddr") == "10.0.0.2"
    assert one(hello, "csmb.flags.app_proxy") == "1"
    assert one(hello, "csmb.flags.redundant") == "0"
    assert one(hello, "csmb.vers_major") == "1" and one(hello, "csmb.vers_minor") == "0"
    assert one(hello, "csmb.ssmb_port") == "7700"
    assert "csmb.auth_data_len" not in hello
    assert one(by_serial["2"][1], "csmb.error") == "1"
    auth = by_serial["3"][1]
    assert one(auth, "csmb.ssmb_standby_ipaddr") == "10.0.0.253"
    assert one(auth, "csmb.flags.redundant") == "1"
    assert one(auth, "csmb.auth_data_len") == "32"
    assert bytes.fromhex(one(auth, "csmb.auth_data").replace(":", "")) == bytes(range(32))
    add = by_serial["5"][1]
    assert one(add, "csmb.virt_ipaddr") == "192.0.2.10"
    assert one(add, "csmb.virt_port") == "80"
    assert one(add, "csmb.vs_class") == "1"
    assert one(add, "csmb.flags.cookie_proxy") == "1"
    assert one(add, "csmb.flags.translate_port") == "1"
    assert one(add, "csmb.app_data_len") == "10"
    assert bytes.fromhex(one(add, "csmb.app_data").replace(":", "")) == b"JSESSIONID"
    pool = by_serial["6"][1]
    assert one(pool, "csmb.vs_class") == "2"
    assert pool["csmb.pool.ipaddr"] == [a for a, _, _ in POOL]
    assert pool["csmb.pool.port"] == [str(p) for _, p, _ in POOL]
    assert pool["csmb.pool.weight"] == [str(w) for _, _, w in POOL]
    assert one(by_serial["7"][1], "csmb.virt_port") == "80"
    assert "csmb.virt_ipaddr" not in by_serial["8"][1]
    vs_list = by_serial["9"][1]
    assert vs_list["csmb.virt_ipaddr"] == ["192.0.2.10", "192.0.2.11"]
    assert vs_list["csmb.vs_class"] == ["1", "2"]
    assert one(by_serial["10"][1], "csmb.status") == "0x00c0ffee"
    # RESET and ADD_VS travelled in one segment; VS_LIST was split over two.
    assert by_serial["4"][0] == by_serial["5"][0]
    if split_frames is not None:
        assert by_serial["9"][0] in split_frames


def check_names_in_detail(text: str) -> None:
    """Enums are shown by name in the packet detail."""
    for name in ("QUERY", "APP_QUERY", "REPLY", "DELETE", "REAP", "STATS", "NEWFLOW", "RESET"):
        assert re.search(rf"Message type: {name} \(\d\)", text), name
    for name in ("HELLO", "ACK", "RESET", "ADD_VS", "DELETE_VS", "QUERY_VS", "VS_LIST", "STATUS"):
        assert re.search(rf"Message type: {name} \(\d\)", text), name
    for text_part in (
        "Error: CONNLIMIT (3)",
        "Error: CONNALIVE (4)",
        "Error: VERS_NEW (1)",
        "Virtual server class: DFS_ASSIST (2)",
        "COOKIE_PROXY: True",
    ):
        assert text_part in text, text_part
    assert "Lua Error" not in text


# ---------------------------------------------------------------------------------------------
# Live capture on loopback.


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(DEADLINE_S)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


class LiveCapture:
    """``tshark -i lo`` writing a pcap; packet summaries on stdout show what it has seen so far."""

    def __init__(self, tshark: str, pcap: Path, capture_filter: str, workdir: Path) -> None:
        self.stdout_path = workdir / "tshark.out"
        self.stderr_path = workdir / "tshark.err"
        self._out = self.stdout_path.open("wb")
        self._err = self.stderr_path.open("wb")
        # -P -l: print each packet as it is written, so the test can see when its last packet is in.
        self.proc = subprocess.Popen(
            [tshark, "-n", "-i", "lo", "-f", capture_filter, "-w", str(pcap), "-P", "-l"],
            stdout=self._out,
            stderr=self._err,
        )
        _wait_for(lambda: "Capturing on" in self.stderr() or self.proc.poll() is not None, "tshark to start")
        if self.proc.poll() is not None:
            raise AssertionError(f"tshark exited early: {self.stderr()}")

    def wait_until_seeing(self, probe_port: int) -> None:
        """Send probes to ``probe_port`` until one shows up: "Capturing on" precedes the filter's start."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            pattern = rf"\b{probe.getsockname()[1]}\b\s+\S+\s+{probe_port}\b"
            deadline = time.monotonic() + DEADLINE_S
            while not self.seen(pattern):
                if time.monotonic() > deadline:
                    raise AssertionError(f"tshark captured none of the probes: {self.stderr()}")
                probe.sendto(b"probe", ("127.0.0.1", probe_port))
                time.sleep(0.05)

    def stderr(self) -> str:
        """What tshark wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def seen(self, pattern: str) -> bool:
        """Whether a captured packet's summary matches ``pattern``."""
        return re.search(pattern, self.stdout_path.read_text(errors="replace")) is not None

    def stop(self) -> None:
        """Terminate tshark by pid; it finishes the pcap on SIGTERM."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=DEADLINE_S)
        self._out.close()
        self._err.close()


@dataclass
class Endpoints:
    """The sockets of the live test, bound before the capture starts so its filter can name them."""

    cs_tcp: socket.socket
    dfs_tcp: socket.socket
    cs_udp: socket.socket
    dfs_udp: socket.socket
    decode_as: list[str]

    def port(self, sock: socket.socket) -> int:
        """Local port of one of the sockets."""
        return int(sock.getsockname()[1])

    def capture_filter(self, probe_port: int) -> str:
        """Only this test's own traffic, even if other tests use the buses' ports meanwhile."""
        udp = f"udp port {self.port(self.cs_udp)} and udp port {self.port(self.dfs_udp)}"
        tcp = f"tcp port {self.port(self.cs_tcp)} and tcp port {self.port(self.dfs_tcp)}"
        return f"({udp}) or ({tcp}) or udp dst port {probe_port}"


def _bind_pair(kind: int, preferred: int) -> tuple[socket.socket, socket.socket, bool]:
    """(CS socket on the preferred port or an ephemeral one, DFS socket, whether preferred was free)."""
    cs = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        cs.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        cs.bind(("127.0.0.1", preferred))
        got_preferred = True
    except OSError:
        cs.bind(("127.0.0.1", 0))
        got_preferred = False
    dfs = socket.socket(socket.AF_INET, kind)
    dfs.bind(("127.0.0.1", 0))
    return cs, dfs, got_preferred


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    """Default ports 7700/7701 when free, else ephemeral ones decoded with decode-as."""
    cs_tcp, dfs_tcp, tcp_default = _bind_pair(socket.SOCK_STREAM, DEFAULT_CSMB_PORT)
    cs_udp, dfs_udp, udp_default = _bind_pair(socket.SOCK_DGRAM, DEFAULT_SSMB_PORT)
    decode_as = []
    if not udp_default:
        decode_as += ["-d", f"udp.port=={cs_udp.getsockname()[1]},ssmb"]
    if not tcp_default:
        decode_as += ["-d", f"tcp.port=={cs_tcp.getsockname()[1]},csmb"]
    try:
        yield Endpoints(cs_tcp, dfs_tcp, cs_udp, dfs_udp, decode_as)
    finally:
        for sock in (cs_tcp, dfs_tcp, cs_udp, dfs_udp):
            sock.close()


def _send_traffic(ends: Endpoints, capture: LiveCapture) -> None:
    """All CSMB messages over one TCP connection, then all SSMB datagrams; RESET last."""
    msgs = csmb_messages()
    ends.cs_tcp.listen(1)
    ends.dfs_tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ends.dfs_tcp.settimeout(DEADLINE_S)
    ends.dfs_tcp.connect(("127.0.0.1", ends.port(ends.cs_tcp)))
    ends.cs_tcp.settimeout(DEADLINE_S)
    cs, _ = ends.cs_tcp.accept()
    with cs:
        cs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dfs = ends.dfs_tcp

        def send(sender: socket.socket, receiver: socket.socket, data: bytes) -> None:
            # Waiting for the peer to read each write keeps every write in its own segment.
            sender.sendall(data)
            assert _recv_exactly(receiver, len(data)) == data

        send(dfs, cs, msgs["HELLO"])
        send(cs, dfs, msgs["ACK"])
        send(cs, dfs, msgs["HELLO_AUTH"])
        send(cs, dfs, msgs["RESET"] + msgs["ADD_VS"])
        send(cs, dfs, msgs["ADD_VS_POOL"])
        send(cs, dfs, msgs["DELETE_VS"])
        send(dfs, cs, msgs["QUERY_VS"])
        vs_list = msgs["VS_LIST"]
        send(cs, dfs, vs_list[:20])
        send(cs, dfs, vs_list[20:])
        send(dfs, cs, msgs["STATUS"])

    ends.cs_udp.settimeout(DEADLINE_S)
    udp_port = ends.port(ends.cs_udp)
    for _, datagram in ssmb_datagrams():
        ends.dfs_udp.sendto(datagram, ("127.0.0.1", udp_port))
        assert ends.cs_udp.recv(65535) == datagram
    last = rf"\b{ends.port(ends.dfs_udp)}\b\s+\S+\s+{udp_port}\b.*Len=8\b"
    _wait_for(lambda: capture.seen(last), "the last datagram to be captured")


def test_live_capture_decodes_every_message(tshark: str, tmp_path: Path, endpoints: Endpoints) -> None:
    """Real traffic on 127.0.0.1, captured by tshark, decoded by the dissector."""
    if os.geteuid() != 0:
        _unavailable("capturing on lo needs root")
    pcap = tmp_path / "live.pcapng"
    probe_port = _free_port(socket.SOCK_DGRAM)
    capture = LiveCapture(tshark, pcap, endpoints.capture_filter(probe_port), tmp_path)
    try:
        capture.wait_until_seeing(probe_port)
        _send_traffic(endpoints, capture)
    finally:
        capture.stop()
    decode_as = endpoints.decode_as
    messages = decoded_messages(tshark, pcap, decode_as)
    check_all_ssmb(messages)
    check_all_csmb(messages, split_frames=None)
    check_names_in_detail(verbose_text(tshark, pcap, decode_as))
    # The split VS_LIST: its first 20 octets are a segment of their own, marked as part of a PDU.
    split = subprocess.run(
        [
            tshark,
            "-n",
            "-X",
            f"lua_script:{LUA}",
            *decode_as,
            "-r",
            str(pcap),
            "-Y",
            "tcp.len == 20 && !csmb",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert split.returncode == 0 and split.stdout.split(), split.stderr


# ---------------------------------------------------------------------------------------------
# Crafted capture written with scapy: the same messages plus malformed ones.


def _crafted_packets() -> tuple[list[Packet], set[int]]:
    """Packets of a crafted capture, and the frame numbers of the split VS_LIST's segments."""
    packets: list[Packet] = []

    def udp(payload: bytes, sport: int = 40000) -> None:
        packets.append(
            Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=sport, dport=7700) / Raw(payload)
        )

    seq = {"dfs": 1000, "cs": 5000}

    def tcp(side: str, payload: bytes, flags: str = "PA") -> int:
        src, dst, sport, dport, ack = (
            ("10.0.0.2", "10.0.0.1", 50000, 7701, seq["cs"])
            if side == "dfs"
            else ("10.0.0.1", "10.0.0.2", 7701, 50000, seq["dfs"])
        )
        packets.append(
            Ether()
            / IP(src=src, dst=dst)
            / TCP(sport=sport, dport=dport, seq=seq[side], ack=ack, flags=flags)
            / Raw(payload)
        )
        seq[side] += len(payload)
        return len(packets)

    packets.append(
        Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=50000, dport=7701, seq=999, flags="S")
    )
    packets.append(
        Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=7701, dport=50000, seq=4999, ack=1000, flags="SA")
    )
    msgs = csmb_messages()
    tcp("dfs", msgs["HELLO"])
    tcp("cs", msgs["ACK"])
    tcp("cs", msgs["HELLO_AUTH"])
    tcp("cs", msgs["RESET"] + msgs["ADD_VS"])
    tcp("cs", msgs["ADD_VS_POOL"])
    tcp("cs", msgs["DELETE_VS"])
    tcp("dfs", msgs["QUERY_VS"])
    split = {tcp("cs", msgs["VS_LIST"][:20]), tcp("cs", msgs["VS_LIST"][20:])}
    tcp("dfs", msgs["STATUS"])
    for _, datagram in ssmb_datagrams():
        udp(datagram)
    return packets, split


def test_crafted_capture_decodes_every_message(tshark: str, tmp_path: Path) -> None:
    """A pcap written with scapy decodes to exactly the values it was built from."""
    packets, split = _crafted_packets()
    pcap = tmp_path / "crafted.pcap"
    wrpcap(str(pcap), packets)
    messages = decoded_messages(tshark, pcap, [])
    check_all_ssmb(messages)
    check_all_csmb(messages, split_frames=split)
    check_names_in_detail(verbose_text(tshark, pcap, []))


def test_ports_follow_preferences(tshark: str, tmp_path: Path) -> None:
    """-o ssmb.udp_port moves the SSMB registration."""
    pcap = tmp_path / "moved.pcap"
    wrpcap(str(pcap), [Ether() / IP() / UDP(sport=1, dport=9900) / Raw(ssmb_datagrams()[0][1])])
    assert decoded_messages(tshark, pcap, []) == []
    moved = decoded_messages(tshark, pcap, ["-o", "ssmb.udp_port:9900"])
    assert [one(f, "ssmb.msg_type") for _, _, f in moved] == ["1"]


MALFORMED = [
    ("ssmb", bytes(SSMB() / SSMBFlow())[:40], "truncated: QUERY message needs 56 octets, got 40"),
    ("ssmb", bytes(SSMB())[:5], "truncated: header needs 8 octets, got 5"),
    ("ssmb", bytes(SSMB(count=3) / SSMBFlow()), "count says 3 message(s), datagram holds 1"),
    (
        "ssmb",
        bytes(SSMB() / SSMBAppQuery(app_data_len=9000)),
        "truncated: APP_QUERY message needs 9044 octets, got 44",
    ),
    (
        "ssmb",
        bytes(SSMB() / SSMBAppQuery(app_data=b"x" * 8200)),
        "app_data_len 8200 exceeds the maximum 8192",
    ),
    ("ssmb", bytes(SSMB(msg_type=99)) + b"junk", "Unknown SSMB message type"),
    ("csmb", bytes(CSMB(msg_type="ACK", msg_length=4)), "msg_length 4 outside 12..1048576"),
    ("csmb", bytes(CSMB(msg_type="STATUS")), "truncated: STATUS needs 16 octets, got 12"),
    ("csmb", bytes(CSMB(msg_type="HELLO") / Raw(b"\x00" * 8)), "truncated: HELLO needs 28 octets, got 20"),
    (
        "csmb",
        bytes(CSMB(msg_type="ADD_VS") / CSMBVsDef(app_data_len=40)),
        "truncated: app_data_len 40 but only 0 octets left",
    ),
    (
        "csmb",
        bytes(CSMB(msg_type="ADD_VS") / Raw(b"\x00" * 6)),
        "truncated: virtual server definition needs 16 octets, got 6",
    ),
    ("csmb", bytes(CSMB(msg_type="ACK") / Raw(b"zz")), "2 octet(s) after the message body"),
    ("csmb", bytes(CSMB(msg_type=42)), "Unknown CSMB message type"),
    ("csmb", bytes(CSMB(msg_type="ACK", msg_length=5_000_000)), "msg_length 5000000 outside 12..1048576"),
]


def test_malformed_messages_get_expert_info_not_lua_errors(tshark: str, tmp_path: Path) -> None:
    """Every bad length is flagged with expert info; the dissector never raises."""
    packets: list[Packet] = []
    for index, (bus, payload, _) in enumerate(MALFORMED):
        if bus == "ssmb":
            packets.append(Ether() / IP() / UDP(sport=40000, dport=7700) / Raw(payload))
        else:
            # A connection of its own per message, so one bad length cannot hide the next.
            packets.append(
                Ether() / IP() / TCP(sport=51000 + index, dport=7701, seq=1, flags="PA") / Raw(payload)
            )
    pcap = tmp_path / "malformed.pcap"
    wrpcap(str(pcap), packets)
    text = verbose_text(tshark, pcap, [])
    assert "Lua Error" not in text
    for _, _, expected in MALFORMED:
        assert expected in text, expected
    done = subprocess.run(
        [
            tshark,
            "-n",
            "-X",
            f"lua_script:{LUA}",
            "-r",
            str(pcap),
            "-Y",
            "_ws.expert",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == len(MALFORMED)


def test_every_truncation_and_random_bytes_decode_without_lua_errors(tshark: str, tmp_path: Path) -> None:
    """Cut every message at every length and add seeded random payloads: nothing may raise in Lua."""
    rng = random.Random(7700)
    payloads: list[tuple[str, bytes]] = []
    for _, datagram in ssmb_datagrams():
        payloads += [("ssmb", datagram[:cut]) for cut in range(1, len(datagram))]
    for raw in csmb_messages().values():
        payloads += [("csmb", raw[:cut] + bytes(CSMB(msg_type="ACK"))) for cut in range(1, len(raw))]
    for _ in range(200):
        size = rng.randrange(1, 120)
        payloads.append((rng.choice(("ssmb", "csmb")), bytes(rng.randrange(256) for _ in range(size))))
    packets: list[Packet] = []
    for index, (bus, payload) in enumerate(payloads):
        if bus == "ssmb":
            packets.append(Ether() / IP() / UDP(sport=40000, dport=7700) / Raw(payload))
        else:
            sport = 20000 + index  # a connection per payload: one bad stream cannot mask another
            packets.append(Ether() / IP() / TCP(sport=sport, dport=7701, seq=1, flags="PA") / Raw(payload))
    pcap = tmp_path / "fuzz.pcap"
    wrpcap(str(pcap), packets)
    done = subprocess.run(
        [tshark, "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-V", "-O", "ssmb,csmb"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Lua Error" not in done.stdout
    assert "Malformed Packet" not in done.stdout
    assert done.stdout.count("CS/DFS flow message bus (SSMB)") >= sum(
        1 for bus, _ in payloads if bus == "ssmb"
    )
