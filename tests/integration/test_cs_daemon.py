"""The real CS daemon as a subprocess on loopback, driven by a scripted DFS over real sockets.

Covers the CSMB sequence (HELLO/ACK both ways, RESET, ADD_VS), QUERY -> REPLY over UDP, duplicate
QUERY, DELETE, REAP -> STATS CONNALIVE -> STATS, garbage on both buses (counted, daemon unharmed),
HTTP health checks against servers this test runs, drain, reload (good, bad, SIGHUP) and the CLI.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slbproto import csmb, ssmb
from slbproto.constants import CsmbError, SsmbError, VsClass, VsFlag
from slbproto.peer import SerialCounter

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 10.0


def wait_for(
    what: str, predicate: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.05
) -> Any:
    """Poll predicate until it returns something truthy, or fail naming what we waited for."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class HealthServer:
    """A tiny HTTP server on 127.0.0.1 whose /health answers 200 or 503 on demand."""

    def __init__(self) -> None:
        self.healthy = True
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = 200 if owner.healthy and self.path == "/health" else 503
                body = b"ok\n" if code == 200 else b"no\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class CsProcess:
    """The daemon subprocess, its log, and its bound ports."""

    def __init__(self, tmp: Path, config_text: str) -> None:
        self.tmp = tmp
        self.config = tmp / "cs.toml"
        self.config.write_text(config_text)
        self.log = tmp / "csd.log"
        self.pid_file = tmp / "csd.pid"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        # Kept open for the life of the process; closed in stop().
        self.out = open(tmp / "csd.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodes.csd",
                "--config",
                str(self.config),
                "--log-file",
                str(self.log),
                "--pid-file",
                str(self.pid_file),
                "--log-level",
                "debug",
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        line = wait_for("the READY line", self._ready)
        ports = dict(re.findall(r"(csmb|ssmb|status)=127\.0\.0\.1:(\d+)", line))
        self.csmb_port = int(ports["csmb"])
        self.ssmb_port = int(ports["ssmb"])
        self.status_port = int(ports["status"])
        self.url = f"http://127.0.0.1:{self.status_port}"

    def _ready(self) -> str | None:
        if self.proc.poll() is not None:
            pytest.fail(f"csd exited with {self.proc.returncode}:\n{self.output()}")
        text = self.log.read_text() if self.log.exists() else ""
        m = re.search(r"^.*READY .*$", text, re.MULTILINE)
        return m.group(0) if m else None

    def output(self) -> str:
        return (self.tmp / "csd.out").read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def post(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def counters(self) -> dict[str, int]:
        return dict(self.get("/status")["counters"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()


class ScriptedDfs:
    """A DFS played by the test: one TCP CSMB connection and one UDP SSMB socket."""

    def __init__(self, cs: CsProcess) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.ssmb_port = self.udp.getsockname()[1]
        self.cs_ssmb = ("127.0.0.1", cs.ssmb_port)
        self.tcp = socket.create_connection(("127.0.0.1", cs.csmb_port), timeout=5)
        self.tcp.settimeout(0.2)
        self.decoder = csmb.StreamDecoder()
        self.csmb_serials = SerialCounter()
        self.ssmb_serials = SerialCounter()
        self.csmb_inbox: list[Any] = []
        self.ssmb_inbox: list[Any] = []

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()

    # CSMB
    def send_csmb(self, msg: Any) -> None:
        self.tcp.sendall(csmb.encode_message(self.csmb_serials.stamp(msg)))

    def _pump_csmb(self) -> None:
        try:
            data = self.tcp.recv(65536)
        except TimeoutError:
            return
        if data:
            self.csmb_inbox.extend(self.decoder.feed(data))

    def expect_csmb(self, n: int, what: str) -> list[Any]:
        def ready() -> bool:
            self._pump_csmb()
            return len(self.csmb_inbox) >= n

        wait_for(what, ready, interval=0)
        got, self.csmb_inbox = self.csmb_inbox[:n], self.csmb_inbox[n:]
        return got

    # SSMB
    def send_ssmb(self, *msgs: Any) -> None:
        stamped = [self.ssmb_serials.stamp(m) for m in msgs]
        self.udp.sendto(ssmb.encode_datagram(stamped), self.cs_ssmb)

    def _pump_ssmb(self) -> None:
        try:
            data, _ = self.udp.recvfrom(65536)
        except TimeoutError:
            return
        self.ssmb_inbox.extend(ssmb.decode_datagram(data))

    def expect_ssmb(
        self, kind: type, what: str, timeout: float = DEADLINE, where: Callable[[Any], bool] | None = None
    ) -> Any:
        def find() -> Any:
            self._pump_ssmb()
            for i, m in enumerate(self.ssmb_inbox):
                if isinstance(m, kind) and (where is None or where(m)):
                    return self.ssmb_inbox.pop(i)
            return None

        return wait_for(what, find, timeout=timeout, interval=0)

    def handshake(self) -> list[Any]:
        self.send_csmb(csmb.Hello("127.0.0.1", "0.0.0.0", 0, 1, 0, self.ssmb_port))
        ack, hello = self.expect_csmb(2, "ACK and the CS's HELLO")
        assert isinstance(ack, csmb.Ack) and ack.error == CsmbError.OK
        assert isinstance(hello, csmb.Hello) and hello.version == (1, 0)
        assert hello.flags & VsFlag.APP_PROXY
        assert (hello.ssmb_active_ipaddr, hello.ssmb_port) == self.cs_ssmb
        self.send_csmb(csmb.Ack())
        return self.expect_csmb(3, "RESET and two ADD_VS")


def query(flow_id: int, sport: int, dst: str = "10.0.0.100", dport: int = 80) -> ssmb.Query:
    return ssmb.Query("198.51.100.7", dst, sport, dport, proto=6, flow_id=flow_id)


def stats(cls: type, flow_id: int, sport: int, error: int = 0, inbound_bytes: int = 0) -> Any:
    return cls(
        "198.51.100.7",
        "10.0.0.100",
        sport,
        80,
        proto=6,
        flow_id=flow_id,
        error=error,
        inbound_bytes=inbound_bytes,
        inbound_pkts=inbound_bytes // 100,
    )


CONFIG = """
[cs]
csmb_listen = "127.0.0.1"
csmb_port = 0
ssmb_listen = "127.0.0.1"
ssmb_port = 0
status_listen = "127.0.0.1"
status_port = 0
flow_idle_timeout = {idle}
reap_interval = 0.05
reap_response_timeout = 1.0
batch_delay = 0.005

[[virtual_server]]
name = "web"
vip = "10.0.0.100"
port = 80
flags = ["translate_addr", "translate_port"]
method = "round_robin"
health_check = {{ type = "http", path = "/health", interval = 0.1, timeout = 0.1, rise = 1, fall = 1 }}

[[virtual_server.real_server]]
name = "a"
address = "127.0.0.1"
port = {port_a}

[[virtual_server.real_server]]
name = "b"
address = "127.0.0.1"
port = {port_b}

[[virtual_server]]
name = "pool"
vip = "10.0.0.53"
port = 53
protocol = "udp"
vs_class = "dfs_assist"
health_check = {{ type = "tcp", interval = 0.1, timeout = 0.1, rise = 1, fall = 1 }}

[[virtual_server.real_server]]
name = "a"
address = "127.0.0.1"
port = {port_a}

[[virtual_server.real_server]]
name = "b"
address = "127.0.0.1"
port = {port_b}
"""


@pytest.fixture
def backends() -> Iterator[tuple[HealthServer, HealthServer]]:
    a, b = HealthServer(), HealthServer()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def cs(tmp_path: Path, backends: tuple[HealthServer, HealthServer]) -> Iterator[CsProcess]:
    a, b = backends
    proc = CsProcess(tmp_path, CONFIG.format(idle=0.5, port_a=a.port, port_b=b.port))
    try:
        yield proc
    finally:
        proc.stop()
        log = proc.log.read_text() if proc.log.exists() else ""
        assert "Traceback" not in log, log


@pytest.fixture
def dfs(cs: CsProcess) -> Iterator[ScriptedDfs]:
    peer = ScriptedDfs(cs)
    try:
        yield peer
    finally:
        peer.close()


def test_handshake_query_reply_delete(
    cs: CsProcess, dfs: ScriptedDfs, backends: tuple[HealthServer, HealthServer]
) -> None:
    reset, add_web, add_pool = dfs.handshake()
    assert isinstance(reset, csmb.Reset)
    assert add_web.vs.key == ("10.0.0.100", 80, 6) and add_web.vs.vs_class == VsClass.CS_ASSIST
    assert add_pool.vs.vs_class == VsClass.DFS_ASSIST
    ports = {e.port for e in csmb.decode_pool(add_pool.vs.app_data)}
    assert ports == {backends[0].port, backends[1].port}
    dfs.expect_ssmb(ssmb.Reset, "SSMB RESET to the announced endpoint on first contact")
    wait_for("health checks of both servers", lambda: all(r["health_detail"] for r in cs.get("/servers")))

    dfs.send_ssmb(query(1, 40001))
    reply = dfs.expect_ssmb(ssmb.Reply, "REPLY to flow 1")
    assert reply.error == SsmbError.OK and reply.flow_id == 1
    assert reply.new_dst_ipaddr == "127.0.0.1" and reply.new_dst_port in {backends[0].port, backends[1].port}
    # retransmitted QUERY (new serials, same flow_id): same answer, counted once
    dfs.send_ssmb(query(1, 40001))
    again = dfs.expect_ssmb(ssmb.Reply, "REPLY to the duplicate")
    assert (again.new_dst_ipaddr, again.new_dst_port) == (reply.new_dst_ipaddr, reply.new_dst_port)
    vs = {v["name"]: v for v in cs.get("/vs")}
    assert vs["web"]["total"] == 1 and vs["web"]["active"] == 1
    assert cs.counters()["duplicate_query"] == 1

    dfs.send_ssmb(query(2, 40002, dst="10.9.9.9"))
    assert dfs.expect_ssmb(ssmb.Reply, "UNKNOWN reply").error == SsmbError.UNKNOWN

    dfs.send_ssmb(stats(ssmb.Delete, 1, 40001, inbound_bytes=1234))
    wait_for("flow 1 deleted", lambda: cs.get("/status")["flows"]["active"] == 0)
    vs = {v["name"]: v for v in cs.get("/vs")}
    assert vs["web"]["inbound_bytes"] == 1234 and vs["web"]["active"] == 0
    dfs.send_ssmb(stats(ssmb.Delete, 99, 1))
    wait_for("DELETE for an unknown flow counted", lambda: cs.counters().get("delete_unknown_flow") == 1)


def test_ack_of_the_ssmb_reset_is_expected(cs: CsProcess, dfs: ScriptedDfs) -> None:
    """A DFS acknowledges the first-contact SSMB RESET on the CSMB: that ACK is not 'unexpected'."""
    dfs.handshake()
    dfs.expect_ssmb(ssmb.Reset, "SSMB RESET on first contact")
    dfs.send_csmb(csmb.Ack())

    def session_counters() -> dict[str, int] | None:
        sessions = cs.get("/status")["csmb_sessions"]
        counters = sessions[0]["counters"] if sessions else {}
        return counters if counters.get("rx_ack") else None

    counters = wait_for("the CS to take the ACK", session_counters)
    assert counters.get("reset_acked") == 1
    assert "unexpected_ack" not in counters
    dfs.send_csmb(csmb.Ack())  # a second one answers nothing
    wait_for(
        "a stray ACK counted",
        lambda: cs.get("/status")["csmb_sessions"][0]["counters"].get("unexpected_ack") == 1,
    )


def test_dfs_assist_delete_counted_in_its_vs(cs: CsProcess, dfs: ScriptedDfs) -> None:
    """DFS_ASSIST connections (no QUERY) end with a DELETE under a DFS-chosen id: counted, not stored."""
    dfs.handshake()
    for i in range(3):
        dfs.send_ssmb(
            ssmb.Delete(
                "198.51.100.7",
                "10.0.0.53",
                50000 + i,
                53,
                proto=17,
                flow_id=1000 + i,
                inbound_bytes=80,
                outbound_bytes=300,
                inbound_pkts=1,
                outbound_pkts=2,
            )
        )
    wait_for("three DFS_ASSIST flows counted", lambda: cs.counters().get("dfs_assist_flows") == 3)
    pool = next(v for v in cs.get("/vs") if v["name"] == "pool")
    assert (pool["total"], pool["dfs_assist_flows"], pool["active"]) == (3, 3, 0)
    assert (pool["inbound_bytes"], pool["outbound_pkts"]) == (240, 6)
    status = cs.get("/status")
    assert status["flows"]["active"] == 0
    assert "delete_unknown_flow" not in status["counters"]


def test_reap_connalive_then_stats(cs: CsProcess, dfs: ScriptedDfs) -> None:
    dfs.handshake()
    dfs.send_ssmb(query(7, 41000))
    dfs.expect_ssmb(ssmb.Reply, "REPLY")
    reap = dfs.expect_ssmb(ssmb.Reap, "REAP after the idle timeout", where=lambda m: m.flow_id == 7)
    assert reap.orig_src_port == 41000
    dfs.send_ssmb(stats(ssmb.Stats, 7, 41000, error=SsmbError.CONNALIVE, inbound_bytes=500))
    wait_for("CONNALIVE counted", lambda: cs.counters().get("stats_connalive") == 1)
    assert cs.get("/status")["flows"]["active"] == 1
    dfs.expect_ssmb(ssmb.Reap, "second REAP", where=lambda m: m.flow_id == 7)
    dfs.send_ssmb(stats(ssmb.Stats, 7, 41000, inbound_bytes=900))
    wait_for("flow reaped", lambda: cs.get("/status")["flows"]["active"] == 0)
    web = next(v for v in cs.get("/vs") if v["name"] == "web")
    assert web["inbound_bytes"] == 900, "running totals are not double counted"


def test_garbage_is_counted_and_harmless(cs: CsProcess, dfs: ScriptedDfs) -> None:
    dfs.handshake()
    junk = [
        b"",
        b"\x00",
        b"\xff" * 7,
        b"\x00\x01\x00\x01\x63\x01\x00\x00" + b"\x00" * 48,
        b"\x00\x02\x00\x02\x01\x02\x00\x00" + b"\x00" * 48,
        os.urandom(56),
        os.urandom(1400),
    ]
    for data in junk:
        dfs.udp.sendto(data, dfs.cs_ssmb)
    wait_for("garbage counted", lambda: cs.get("/status")["ssmb_receiver"].get("dropped", 0) >= len(junk) - 1)
    # a bad CSMB stream gets ACK(BAD_MESSAGE) and is closed; other sessions are unaffected
    with socket.create_connection(("127.0.0.1", cs.csmb_port), timeout=5) as bad:
        bad.sendall(b"\x00\x00\x00\x00\x00\x00\x00\x05" + b"\x07\x00\x00\x00")
        data = b""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            chunk = bad.recv(4096)
            if not chunk:
                break
            data += chunk
        assert csmb.decode_message(data[:12]).error == CsmbError.BAD_MESSAGE
    dfs.send_ssmb(query(3, 42000))
    assert dfs.expect_ssmb(ssmb.Reply, "REPLY after garbage").error == SsmbError.OK
    assert cs.proc.poll() is None


def test_health_drain_and_pool_updates(
    cs: CsProcess, dfs: ScriptedDfs, backends: tuple[HealthServer, HealthServer]
) -> None:
    a, b = backends
    dfs.handshake()
    wait_for("both up", lambda: [r["state"] for r in cs.get("/servers")] == ["up"] * 4)
    a.healthy = False
    wait_for(
        "a down by HTTP check",
        lambda: (
            next(r for r in cs.get("/servers") if r["vs"] == "web" and r["server"] == "a")["state"] == "down"
        ),
    )
    ports = set()
    for i in range(6):
        dfs.send_ssmb(query(100 + i, 43000 + i))
        ports.add(dfs.expect_ssmb(ssmb.Reply, f"REPLY {i}").new_dst_port)
    assert ports == {b.port}
    a.healthy = True
    wait_for("a up again", lambda: all(r["state"] == "up" for r in cs.get("/servers")))

    status, body = cs.post("/drain/pool/b")
    assert status == 200 and body["servers"] == ["pool/b"]
    (update,) = dfs.expect_csmb(1, "ADD_VS with the drained pool")
    assert isinstance(update, csmb.AddVs) and [e.port for e in csmb.decode_pool(update.vs.app_data)] == [
        a.port
    ]
    assert cs.post("/drain/nosuch")[0] == 404
    cs.post("/undrain/pool/b")
    (update,) = dfs.expect_csmb(1, "ADD_VS with the pool restored")
    assert len(csmb.decode_pool(update.vs.app_data)) == 2

    dfs.send_csmb(csmb.QueryVs())
    (vs_list,) = dfs.expect_csmb(1, "VS_LIST")
    assert isinstance(vs_list, csmb.VsList) and len(vs_list.servers) == 2
    dfs.send_csmb(csmb.Status(0))
    (st,) = dfs.expect_csmb(1, "STATUS")
    assert isinstance(st, csmb.Status) and st.status == 0


def test_reload_good_bad_and_sighup(
    cs: CsProcess, dfs: ScriptedDfs, backends: tuple[HealthServer, HealthServer]
) -> None:
    b = backends[1]
    dfs.handshake()
    good = cs.config.read_text()
    cs.config.write_text(good.replace(f"port = {b.port}", "port = 70000", 1))
    status, body = cs.post("/reload")
    assert status == 422
    assert any("virtual_server[0].real_server[1].port" in p and str(cs.config) in p for p in body["problems"])
    assert [v["name"] for v in cs.get("/vs")] == ["web", "pool"], "the running configuration is kept"

    cs.config.write_text(good.split('[[virtual_server]]\nname = "pool"')[0])
    status, body = cs.post("/reload")
    assert status == 200 and body["changes"] == [{"kind": "delete", "name": "pool"}]
    (delete,) = dfs.expect_csmb(1, "DELETE_VS after reload")
    assert isinstance(delete, csmb.DeleteVs) and delete.vs.key == ("10.0.0.53", 53, 17)

    cs.config.write_text(good)
    os.kill(cs.proc.pid, signal.SIGHUP)
    (add,) = dfs.expect_csmb(1, "ADD_VS after SIGHUP")
    assert isinstance(add, csmb.AddVs) and add.vs.key == ("10.0.0.53", 53, 17)


def test_cli_against_daemon(cs: CsProcess) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nodes.cscli", "--url", cs.url, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=ROOT,
        )

    out = cli("servers")
    assert out.returncode == 0 and "SERVER" in out.stdout and "pool" in out.stdout
    out = cli("--json", "status")
    assert out.returncode == 0 and len(json.loads(out.stdout)["virtual_servers"]) == 2
    assert cli("drain", "web/a").stdout.strip() == "drained: web/a"
    assert cli("undrain", "a").stdout.strip() == "undrained: web/a, pool/a"
    out = cli("drain", "ghost")
    assert out.returncode == 1 and "ghost" in out.stderr
    assert cli("reload").returncode == 0
    for sub in ("vs", "flows"):
        assert cli(sub).returncode == 0


def test_cli_unreachable_daemon() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        out = subprocess.run(
            [sys.executable, "-m", "nodes.cscli", "--url", f"http://127.0.0.1:{port}", "status"],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=ROOT,
        )
    assert out.returncode == 2 and "cannot reach the CS daemon" in out.stderr


def test_check_mode_reports_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[virtual_server]]\nname = "x"\nvip = "1.2.3"\nport = 80\n')
    out = subprocess.run(
        [sys.executable, "-m", "nodes.csd", "--check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
    )
    assert out.returncode == 1 and f"{bad}: virtual_server[0].vip:" in out.stderr


def test_sigterm_exits_cleanly(cs: CsProcess) -> None:
    assert cs.pid_file.read_text().strip() == str(cs.proc.pid)
    cs.proc.send_signal(signal.SIGTERM)
    assert cs.proc.wait(timeout=10) == 0
    assert not cs.pid_file.exists()
    assert "stopped" in cs.log.read_text()


def test_probes_against_local_servers(backends: tuple[HealthServer, HealthServer]) -> None:
    """Each probe outcome, on real sockets: success, wrong status, refused, garbage, silence."""
    import asyncio

    from nodes.health import probe_http, probe_tcp

    a, _ = backends
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts (in the kernel) but never answers
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    def answer_garbage() -> None:
        conn, _ = garbage.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"SSH-2.0-nope\r\n")

    t = threading.Thread(target=answer_garbage, daemon=True)
    t.start()

    async def run() -> list[tuple[bool, str]]:
        return [
            await probe_tcp("127.0.0.1", a.port, 1.0),
            await probe_tcp("127.0.0.1", closed_port, 1.0),
            await probe_http("127.0.0.1", a.port, "/health", 200, 1.0),
            await probe_http("127.0.0.1", a.port, "/other", 200, 1.0),
            await probe_http("127.0.0.1", garbage.getsockname()[1], "/", 200, 1.0),
            await probe_http("127.0.0.1", silent.getsockname()[1], "/", 200, 0.3),
        ]

    try:
        results = asyncio.run(run())
    finally:
        t.join(5)
        silent.close()
        garbage.close()
    oks = [ok for ok, _ in results]
    assert oks == [True, False, True, False, False, False], results
    assert "HTTP 503" in results[3][1]
    assert "not an HTTP status line" in results[4][1]
    assert "timeout" in results[5][1]


def test_bench_dfs_peers_level_drives_the_daemon(tmp_path: Path) -> None:
    """One point of the QUERY-rate curve: 3 DFS peers with CSMB sessions, the daemon's counts agree."""
    from bench.bench_cs import bench_dfs_peers

    levels = bench_dfs_peers([3], window=2, seconds=0.4, max_messages=20_000)
    udp = levels["3"]["udp"]
    cs, echo = udp["cs"], udp["echo"]
    assert cs["daemon"]["dfs_registered"] == 3
    assert cs["round_trips"] > 0 and echo["round_trips"] > 0
    assert cs["lost"] == 0 and cs["unmatched"] == 0
    # every answer counted was a REPLY the daemon says it sent; warm-up traffic makes it send more
    assert cs["daemon"]["reply_ok"] >= cs["round_trips"]
    assert cs["round_trips"] <= cs["daemon"]["rx_query"] <= cs["sent"]
    assert cs["per_peer_min"] > 0, "each peer got answers"
    assert udp["ratio_cs_to_echo"] == round(cs["per_second"] / echo["per_second"], 3)
