"""dfsd programming a real OVS userspace bridge between a client and a server namespace.

A scripted CS on loopback answers the DFS's QUERYs (or, when told to, ignores them). The tests
make real TCP connections through the VIP and check what the issue promises on real OVS: only
the first packet of a flow reaches the DFS, DELETE carries the switch's counts, a controller
reconnect keeps a live connection working, the flow limit and a silent CS refuse new flows with
a RST while existing flows carry on, bad bus input is counted and survived, and the ``dfs`` CLI
reads the live daemon. :class:`DfsBed` is shared by the other ``test_dfs_*`` integration modules.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodes.daemon import Daemon
from nodes.ovsbed import CLIENT_SIDE, SERVER_SIDE, OvsBed, get_json, ns, ovs_problem, sh, wait_for
from slbproto import csmb, ssmb
from slbproto.constants import VsClass, VsFlag
from slbtools.scripted_cs import ScriptedCs

pytestmark = [pytest.mark.integration, pytest.mark.needs_root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 100000}"
BRIDGE, NS_C, NS_S = f"dfsbr{TAG}", f"dfsc{TAG}", f"dfss{TAG}"
CLIENT_MAC, SERVER_MAC = "02:c0:00:00:00:50", "02:5e:00:00:00:10"
CLIENT, VIP, SERVER = "10.0.1.50", "10.0.9.100", "10.0.2.10"
HTTP_VS = csmb.VirtualServer(
    int(VsFlag.TRANSLATE_ADDR | VsFlag.TRANSLATE_PORT), VIP, 80, VsClass.CS_ASSIST, 6
)
ECHO_VS = csmb.VirtualServer(int(VsFlag.TRANSLATE_ADDR | VsFlag.TRANSLATE_PORT), VIP, 7, VsClass.CS_ASSIST, 6)

# Runs in the server namespace: a line echo server on :9000 that prefixes each answer with the
# local address the connection came in on, so a client can tell which server it reached.
ECHO_SERVER = r"""
import socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9000))
srv.listen(256)
def handle(c):
    me = c.getsockname()[0].encode()
    with c, c.makefile("rb") as f:
        for line in f:
            c.sendall(me + b" " + line)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

# Runs in the client namespace: send a bare ACK of no connection to VIP:port; print the flags of
# the answer ("RST" when the load balancer refused it, "NONE" when nothing came back).
RST_PROBE = r"""
import logging, sys
logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.all import IP, TCP, conf, sr1
conf.verb = 0
ans = sr1(IP(dst=sys.argv[1]) / TCP(sport=47123, dport=int(sys.argv[2]), flags="A", seq=1, ack=1), timeout=3)
print("NONE" if ans is None else ("RST" if ans[TCP].flags & 0x04 else str(ans[TCP].flags)))
"""

# Runs in the client namespace: open N connections, send R rounds of lines on each, print JSON
# with the server identity every answer named (or the error each connection hit).
ECHO_CLIENT = r"""
import json, socket, sys, time
host, port, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gap = float(sys.argv[5])
conns, errors, seen = [], [], []
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
        conns.append((s, s.makefile("rb")))
        seen.append([])
    except OSError as exc:
        errors.append(type(exc).__name__)
print("CONNECTED", len(conns), flush=True)
for r in range(rounds):
    for i, (s, f) in enumerate(conns):
        try:
            s.sendall(b"round %d\n" % r)
            line = f.readline()
            seen[i].append(line.split(b" ")[0].decode() if line else "EOF")
        except OSError as exc:
            seen[i].append(type(exc).__name__)
    time.sleep(gap)
for s, f in conns:
    f.close()
    s.close()
print(json.dumps({"errors": errors, "seen": seen}), flush=True)
"""


def link_stats(nsname: str, dev: str) -> dict[str, int]:
    data = json.loads(ns(nsname, "ip", "-s", "-j", "link", "show", dev))[0]["stats64"]
    return {
        "rx_bytes": data["rx"]["bytes"],
        "rx_packets": data["rx"]["packets"],
        "tx_bytes": data["tx"]["bytes"],
        "tx_packets": data["tx"]["packets"],
    }


@dataclass
class BedSpec:
    """What a test bed runs: virtual servers, where the CS sends each VIP port, extra config."""

    vservers: list[csmb.VirtualServer] = field(default_factory=lambda: [HTTP_VS])
    targets: dict[int, tuple[str, int]] = field(
        default_factory=lambda: {80: (SERVER, 8080), 7: (SERVER, 9000)}
    )
    server_ips: tuple[str, ...] = (SERVER,)
    extra_toml: str = ""
    timeouts: str = "idle = 5\nfin_idle = 1"
    web: bool = False
    echo: bool = False


class DfsBed:
    """Bridge (secure, OF1.3, userspace), client and server namespaces, scripted CS, dfsd."""

    def __init__(self, spec: BedSpec, tmp: Path) -> None:
        self.spec, self.tmp = spec, tmp
        self.bed = OvsBed(tmp)
        self.url = ""
        self.sock_path = ""
        self.cs: ScriptedCs
        self.dfsd: Daemon
        self.dfsd_conf: Path
        self.ssmb_port = 0

    def start(self) -> DfsBed:
        spec, bed = self.spec, self.bed
        bed.add_bridge(BRIDGE, secure=True)
        bed.add_host(NS_C, BRIDGE, CLIENT_SIDE.port, [f"{CLIENT}/24"], mac=CLIENT_MAC, gateway=CLIENT_SIDE)
        server_addrs = [f"{ip}/24" for ip in spec.server_ips]
        bed.add_host(NS_S, BRIDGE, SERVER_SIDE.port, server_addrs, mac=SERVER_MAC, gateway=SERVER_SIDE)
        self.cs = ScriptedCs(spec.vservers, spec.targets)
        bed.defer(self.cs.close)
        handle = bed.start_dfsd(
            BRIDGE,
            name="dfs-it",
            cs_csmb_port=self.cs.csmb_port,
            cs_ssmb_port=self.cs.ssmb_port,
            vservers=len(spec.vservers),
            timeouts=spec.timeouts,
            extra_toml='[[route]]\nprefix = "10.0.9.0/24"\nvia = "10.0.2.254"\n' + spec.extra_toml,
        )
        self.dfsd, self.dfsd_conf = handle.daemon, handle.conf
        self.url, self.sock_path, self.ssmb_port = handle.url, handle.sock_path, handle.ssmb_port
        if spec.web:
            (self.tmp / "blob.txt").write_text("0123456789abcdef" * 65536)
            self._spawn_server([sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"], "8080")
        if spec.echo:
            self._spawn_server([sys.executable, "-c", ECHO_SERVER], "9000")
        return self

    def restart_dfsd(self, epoch: int) -> None:
        """Stop the daemon and start a new one with another epoch; the switch reconnects to it."""
        assert self.dfsd.stop() == 0, self.dfsd.log_text()[-3000:]
        assert "Traceback" not in self.dfsd.log_text()
        self.dfsd = self.bed.spawn_dfsd(self.dfsd_conf, "dfsd2.log", "--epoch", str(epoch))
        # skip OVS's reconnect backoff
        sh("ovs-appctl", "bridge/reconnect", BRIDGE)
        wait_for(lambda: self.status()["switch_connected"], 15, "the switch reconnecting")

    def _spawn_server(self, argv: list[str], port: str) -> None:
        self.bed.popen(NS_S, argv, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: f":{port} " in ns(NS_S, "ss", "-ltn"), 10, f"server on port {port}")

    def status(self) -> Any:
        return get_json(self.url + "/status")

    def diagnostics(self) -> str:
        flows = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", BRIDGE, check=False)
        return f"flows:\n{flows}\nstatus: {self.status()}\nlog:\n{self.dfsd.log_text()[-3000:]}"

    def echo_client(self, port: int, conns: int, rounds: int, gap: float) -> subprocess.Popen[str]:
        """Start the echo client in the client namespace (see ECHO_CLIENT)."""
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NS_C,
                sys.executable,
                "-c",
                ECHO_CLIENT,
                VIP,
                str(port),
                str(conns),
                str(rounds),
                str(gap),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        log = self.dfsd.log_text() if hasattr(self, "dfsd") else ""
        self.bed.close()
        # other test runs may share this machine: check only what this bed created
        assert BRIDGE not in sh("ovs-vsctl", "list-br").split()
        left = [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]
        assert NS_C not in left and NS_S not in left
        assert not os.path.exists(self.sock_path)
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def make_bed(tmp_path: Path) -> Iterator[Callable[[BedSpec], DfsBed]]:
    """Build a :class:`DfsBed` from a spec; everything it made is removed afterwards."""
    problem = ovs_problem()
    if problem:
        pytest.skip(problem)
    beds: list[DfsBed] = []

    def make(spec: BedSpec) -> DfsBed:
        bed = DfsBed(spec, tmp_path)
        beds.append(bed)
        return bed.start()

    try:
        yield make
    finally:
        for bed in beds:
            bed.close()


def echo_result(proc: subprocess.Popen[str], timeout: float = 20) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def curl(url: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", NS_C, "curl", "-s", "--max-time", str(timeout), url],
        capture_output=True,
        text=True,
        timeout=timeout + 20,
    )


def dfs_cli(bed: DfsBed, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "nodes.dfscli", "--url", bed.url, *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


# ----------------------------------------------------------------------------------------- tests


def test_http_through_vip_is_offloaded_and_counted(make_bed: Callable[[BedSpec], DfsBed]) -> None:
    bed = make_bed(BedSpec(web=True))
    cs = bed.cs

    def http_get(path: str = "/") -> str:
        res = curl(f"http://{VIP}{path}")
        assert res.returncode == 0, f"curl exit {res.returncode}\n{bed.diagnostics()}"
        return res.stdout

    # warm-up flow: the DFS learns the server's MAC; its DELETE shows the flow lifecycle works
    assert "Directory listing" in http_get()
    wait_for(lambda: len(cs.deletes) == 1, 15, "DELETE of the warm-up flow")
    st0 = bed.status()
    c0, s0 = link_stats(NS_C, f"{NS_C}i"), link_stats(NS_S, f"{NS_S}i")
    body = http_get("/blob.txt")
    assert len(body) == 16 * 65536
    wait_for(lambda: len(cs.deletes) == 2, 15, "DELETE of the measured flow")
    c1, s1 = link_stats(NS_C, f"{NS_C}i"), link_stats(NS_S, f"{NS_S}i")
    st1 = bed.status()
    delete, query = cs.deletes[1], cs.queries[-1]
    assert delete.flow_id == query.flow_id and len(cs.queries) == 2
    assert (delete.orig_dst_ipaddr, delete.orig_dst_port) == (VIP, 80)
    # The SYN reached the DFS. Packets that overtake the new entries (OVS's datapath cache
    # still sends them up until its revalidators catch up: a packet or two on an idle machine,
    # more on a busy one) are forwarded by the DFS; the rest of the flow stays in the switch.
    packet_ins = st1["counters"]["packet_ins"] - st0["counters"]["packet_ins"]
    late = st1["counters"].get("packet_ins_after_offload", 0) - st0["counters"].get(
        "packet_ins_after_offload", 0
    )
    assert packet_ins - late == 1, (packet_ins, late)
    assert delete.inbound_pkts + delete.outbound_pkts > 100
    assert late <= (delete.inbound_pkts + delete.outbound_pkts) // 4, (late, delete)
    assert st1["counters"]["flows_offloaded"] - st0["counters"]["flows_offloaded"] == 1
    client_sent = (c1["tx_packets"] - c0["tx_packets"], c1["tx_bytes"] - c0["tx_bytes"])
    client_got = (c1["rx_packets"] - c0["rx_packets"], c1["rx_bytes"] - c0["rx_bytes"])
    server_got = (s1["rx_packets"] - s0["rx_packets"], s1["rx_bytes"] - s0["rx_bytes"])
    server_sent = (s1["tx_packets"] - s0["tx_packets"], s1["tx_bytes"] - s0["tx_bytes"])
    # DELETE carries the flow's totals (running totals, see slbcore.dfs): exactly what crossed
    assert (delete.inbound_pkts, delete.inbound_bytes) == client_sent == server_got
    assert (delete.outbound_pkts, delete.outbound_bytes) == client_got
    # The bulk direction can lose segments on the server's veth before the userspace switch
    # reads them; the server retransmits, so it may have sent more than the switch forwarded.
    assert server_sent[0] >= client_got[0] and server_sent[1] >= client_got[1]
    assert not st1["errors"], st1["errors"]


def test_only_the_opening_syn_reaches_the_dfs(make_bed: Callable[[BedSpec], DfsBed]) -> None:
    """The SYN's cached datapath megaflow carries the TCP flags, so the handshake ACK is not sent up."""
    bed = make_bed(BedSpec(web=True))
    assert curl(f"http://{VIP}/").returncode == 0  # warm-up: ARP for the client and the server
    flows = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", BRIDGE)
    assert "tcp_flags=+syn-ack" in flows, flows
    st0 = bed.status()
    for _ in range(10):
        res = curl(f"http://{VIP}/")
        assert res.returncode == 0, f"curl exit {res.returncode}\n{bed.diagnostics()}"
    st1 = bed.status()

    def delta(key: str) -> int:
        return int(st1["counters"].get(key, 0)) - int(st0["counters"].get(key, 0))

    assert delta("flows_offloaded") == 10, bed.diagnostics()
    assert delta("packet_ins_after_offload") == 0, bed.diagnostics()
    assert delta("unknown_segment_refused") == 0, bed.diagnostics()
    # a segment of a connection nobody knows is answered with a RST, without asking the CS
    queries = len(bed.cs.queries)
    probe = ns(NS_C, sys.executable, "-c", RST_PROBE, VIP, "80")
    assert "RST" in probe, probe
    wait_for(lambda: bed.status()["counters"].get("unknown_segment_refused", 0) >= 1, 5, "refusal")
    assert len(bed.cs.queries) == queries


def test_switch_reconnect_and_daemon_restart_keep_a_live_connection(
    make_bed: Callable[[BedSpec], DfsBed],
) -> None:
    # ``ovs-appctl bridge/reconnect`` drops the OpenFlow connection without touching the
    # configuration. (Changing it, ``ovs-vsctl del-controller``/``set-controller``, makes OVS 3.1
    # flush the whole flow table, so that is not a reconnect the DFS could survive.)
    bed = make_bed(BedSpec(vservers=[ECHO_VS], echo=True))
    rounds = 70
    client = bed.echo_client(7, conns=1, rounds=rounds, gap=0.1)  # one connection talking for ~7 s
    try:
        wait_for(lambda: bed.status()["flows_active"] == 1, 10, "the connection offloaded")
        flows = dfs_cli(bed, "flows")
        assert f"{VIP}:7" in flows and f"{SERVER}:9000" in flows and "offloaded" in flows, flows
        st0 = bed.status()
        sh("ovs-appctl", "bridge/reconnect", BRIDGE)
        wait_for(
            lambda: (
                (s := bed.status())["counters"]["switch_connects"] == 2
                and s["counters"].get("audit_kept", 0) == 1
            ),
            10,
            "the reconnect audit keeping the flow",
            bed.diagnostics,
        )
        st1 = bed.status()
        assert st1["counters"]["packet_ins"] == st0["counters"]["packet_ins"], bed.diagnostics()
        # A new daemon (new epoch) adopts the flow the old one installed and reports its end.
        bed.restart_dfsd(epoch=(st0["epoch"] + 1) & 0xFFFF)
        wait_for(
            lambda: bed.status()["counters"].get("audit_adopted", 0) == 1,
            15,
            "the new daemon adopting the flow",
            bed.diagnostics,
        )
        result = echo_result(client)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=5)
    assert result["errors"] == [] and result["seen"] == [[SERVER] * rounds], result
    assert len(bed.cs.queries) == 1, "the connection never went back to the CS"
    wait_for(lambda: len(bed.cs.deletes) == 1, 10, "DELETE after the connection closed", bed.diagnostics)
    delete = bed.cs.deletes[0]
    assert delete.flow_id == bed.cs.queries[0].flow_id
    assert delete.inbound_pkts >= rounds and delete.outbound_pkts >= rounds, delete
    st2 = bed.status()
    assert not st2["errors"], st2["errors"]
    status_text = dfs_cli(bed, "status")
    assert "switch connected: True" in status_text and "audit_adopted" in status_text, status_text
    st_json = json.loads(dfs_cli(bed, "status", "--json"))
    assert st_json["counters"]["flows_ended"] == 1 and st_json["flows_active"] == 0


def test_refusals_fail_closed_and_keep_existing_flows(make_bed: Callable[[BedSpec], DfsBed]) -> None:
    bed = make_bed(
        BedSpec(
            vservers=[ECHO_VS, HTTP_VS],
            echo=True,
            web=True,
            timeouts="idle = 5\nfin_idle = 1\nquery = 0.1\nquery_retries = 2",
            extra_toml="[limits]\nmax_flows = 2",
        )
    )
    cs = bed.cs
    client = bed.echo_client(7, conns=2, rounds=30, gap=0.1)  # two flows: the table is full
    try:
        wait_for(lambda: bed.status()["flows_active"] == 2, 10, "two flows offloaded")
        t0 = time.monotonic()
        res = curl(f"http://{VIP}/")
        assert res.returncode == 7 and time.monotonic() - t0 < 3, res  # 7: connection refused (RST)
        assert bed.status()["errors"].get("flow_limit") == 1
        result = echo_result(client)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=5)
    assert result["errors"] == [] and result["seen"] == [[SERVER] * 30] * 2, result
    wait_for(lambda: bed.status()["flows_active"] == 0, 10, "the two flows ending")

    # Now the CS stops answering: after the QUERY and its bounded retries the client gets a RST.
    cs.silent = True
    queries = len(cs.queries)
    t0 = time.monotonic()
    res = curl(f"http://{VIP}/")
    elapsed = time.monotonic() - t0
    assert res.returncode == 7 and elapsed < 3, (res, elapsed)
    st = bed.status()
    assert st["errors"].get("query_timeout") == 1 and st["counters"]["query_retransmits"] == 2
    assert len(cs.queries) - queries == 3 and st["flows_pending"] == 0

    # Broken bus input is counted and survived: a garbage datagram, a REPLY for no flow, a
    # broken CSMB stream (the DFS reconnects and says HELLO again).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01garbage", ("127.0.0.1", bed.ssmb_port))
    cs.send_ssmb(
        ssmb.Reply(
            orig_src_ipaddr=CLIENT, orig_dst_ipaddr=VIP, orig_src_port=1, orig_dst_port=80, flow_id=999
        )
    )
    hellos = cs.hellos
    cs.send_csmb_raw(b"\xff" * 12)
    wait_for(lambda: cs.hellos > hellos, 10, "the DFS reconnecting its CSMB")
    st = wait_for(
        lambda: (
            (s := bed.status())["ssmb_receiver"].get("dropped", 0) >= 1
            and s["errors"].get("unsolicited_reply") == 1
            and s["csmb"]["csmb_bad_stream"] == 1
            and s["cs_connected"]
            and s
        ),
        10,
        "bad input counted",
    )
    assert bed.dfsd.running()
    cs.silent = False
    res = curl(f"http://{VIP}/")
    assert res.returncode == 0 and "Directory listing" in res.stdout, bed.diagnostics()
    log = bed.dfsd.log_text()
    assert log.count("DFS error unsolicited_reply") == 1 and log.count("DFS error query_timeout") == 1, log
