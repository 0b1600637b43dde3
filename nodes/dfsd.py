"""dfsd: the Data Flow Segment daemon.

One process, several threads around one :class:`controller.app.DfsRuntime`:

* os-ken (native-thread hub) listens for the switch on 127.0.0.1 and runs :class:`DfsApp`;
  optionally OVS connects on a unix socket (``/var/run/openvswitch/<name>.sock``) instead, which
  is how a switch reaches a controller in another namespace; that connection is handed straight
  to os-ken (:class:`UnixOpenFlowListener`);
* the SSMB thread receives UDP from the CS (duplicates dropped by :class:`SsmbReceiver`);
* the CSMB thread keeps a TCP connection to the CS, reconnecting with backoff;
* the timer thread ticks the engine (QUERY/ARP retries) and flushes SSMB batches;
* a small HTTP server on 127.0.0.1 (``[status] port``, 7790 by default, where the ``dfs`` command
  looks) answers ``/status`` and ``/flows`` in JSON;
* with ``[routing] kernel_routes = true`` a thread re-reads the routes of the daemon's own network
  namespace (pyroute2) and hands them to the engine's route table.

It prints ``READY ...`` once every listener is up, and exits cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from slbcore.dfs.config import ConfigError, DfsConfig, Route, RouteResult, RouteTable, load_config
from slbcore.dfs.engine import ZERO_IP, DfsEngine, SsmbOut
from slbproto import csmb
from slbproto.errors import ProtocolError
from slbproto.peer import SsmbReceiver, SsmbSender

LOG = logging.getLogger("dfsd")
TICK = 0.02
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
ECHO_INTERVAL, ECHO_UNREPLIED = 1.0, 3


class Buses:
    """The SSMB socket and the CSMB connection, with their counters."""

    def __init__(self, cfg: DfsConfig, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.sender = SsmbSender()
        self.receiver = SsmbReceiver()
        # The SSMB thread receives while the CSMB thread may forget a restarted CS.
        self.receiver_lock = threading.Lock()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind((cfg.mgmt_ipaddr, cfg.ssmb_port))
        self.udp.settimeout(0.2)
        self.tcp: socket.socket | None = None
        self.tcp_lock = threading.Lock()
        self.counters: dict[str, int] = {"csmb_sent": 0, "csmb_dropped": 0, "csmb_bad_stream": 0}

    @property
    def ssmb_address(self) -> tuple[str, int]:
        """Where our SSMB socket is bound."""
        addr = self.udp.getsockname()
        return addr[0], addr[1]

    def send_ssmb(self, out: SsmbOut) -> None:
        """Serialise (serials, batching) and send one SSMB message."""
        for data, dest in self.sender.send(out.message, out.to, time.monotonic()):
            self._sendto(data, dest)

    def _sendto(self, data: bytes, dest: tuple[str, int]) -> None:
        try:
            self.udp.sendto(data, dest)
        except OSError as exc:
            LOG.warning("SSMB send to %s failed: %s", dest, exc)

    def receive_ssmb(self, data: bytes, sender: tuple[str, int], now: float) -> list[Any]:
        """New SSMB messages of one datagram (duplicates and bad datagrams dropped, counted)."""
        with self.receiver_lock:
            return self.receiver.receive(data, sender, now)

    def forget_ssmb(self, sender: tuple[str, int]) -> None:
        """Forget ``sender``'s serials: it restarted, so its low serials are new messages."""
        with self.receiver_lock:
            self.receiver.forget(sender)

    def poll_ssmb(self, now: float) -> None:
        """Send SSMB batches whose delay expired."""
        for data, dest in self.sender.poll(now):
            self._sendto(data, dest)

    def send_csmb(self, msg: Any) -> None:
        """Send one CSMB message on the current connection (dropped, counted, if none)."""
        data = csmb.encode_message(msg)
        with self.tcp_lock:
            if self.tcp is None:
                self.counters["csmb_dropped"] += 1
                return
            try:
                self.tcp.sendall(data)
                self.counters["csmb_sent"] += 1
            except OSError:
                self.counters["csmb_dropped"] += 1


class UnixOpenFlowListener:
    """Accepts OVS on a unix socket and hands each connection straight to os-ken as a switch.

    A unix socket is how a switch reaches a controller in another network namespace. Each
    accepted connection runs os-ken's own per-switch loop in place, with no relay to its TCP
    listener: no copy through extra threads and sockets for each OpenFlow message. The
    connection is an :class:`controller.app.OpenFlowStream`, which the DFS writes to directly.
    """

    def __init__(self, path: str, stop: threading.Event) -> None:
        self.path, self.stop = path, stop
        self.accepted = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(0.2)

    def serve(self) -> None:
        """Accept until stopped."""
        from os_ken.controller.controller import datapath_connection_factory
        from os_ken.lib import hub

        from controller.app import OpenFlowStream

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            stream = OpenFlowStream(fileno=conn.detach())
            stream.settimeout(None)
            self.accepted += 1
            hub.spawn(datapath_connection_factory, stream, self.path)

    def close(self) -> None:
        """Stop accepting and remove the socket file."""
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def read_kernel_routes(table: int = 254, netns: str | None = None) -> tuple[Route, ...]:
    """The IPv4 routes with a gateway in routing table ``table`` of this (or ``netns``'s) namespace.

    Routes without a gateway name a namespace device, not a switch port, so they are skipped; a
    multipath route contributes its first gateway.
    """
    from pyroute2 import IPRoute

    routes: set[Route] = set()
    ipr = IPRoute(netns=netns) if netns else IPRoute()
    try:
        for msg in ipr.get_routes(family=socket.AF_INET, table=table):
            if msg.get("type", 1) != 1:  # RTN_UNICAST only: no local/broadcast/blackhole routes
                continue
            gw = msg.get_attr("RTA_GATEWAY")
            if gw is None:
                for hop in msg.get_attr("RTA_MULTIPATH") or []:
                    gw = hop.get_attr("RTA_GATEWAY")
                    if gw is not None:
                        break
            if gw is None:
                continue
            dst = msg.get_attr("RTA_DST") or "0.0.0.0"
            routes.add(Route(f"{dst}/{msg['dst_len']}", gw))
    finally:
        ipr.close()
    return tuple(sorted(routes, key=lambda r: (r.prefix, r.via)))


class KernelRoutes:
    """The engine's route table: configured routes plus the namespace's kernel routes."""

    def __init__(self, cfg: DfsConfig) -> None:
        self.cfg = cfg
        self.base = RouteTable(cfg.interfaces, cfg.routes)
        self.table = self.base
        self.kernel: tuple[Route, ...] = ()
        self.counters: dict[str, int] = {"reads": 0, "read_errors": 0, "changes": 0, "routes": 0}

    def lookup(self, dst: str) -> RouteResult | None:
        """Longest-prefix lookup over the current table."""
        return self.table.lookup(dst)

    def refresh(self) -> bool:
        """Re-read the kernel routes; True when they changed."""
        try:
            routes = read_kernel_routes(self.cfg.routing.kernel_table)
        except Exception as exc:  # netlink trouble must not stop the daemon
            self.counters["read_errors"] += 1
            if self.counters["read_errors"] == 1:
                LOG.warning("cannot read kernel routes: %s", exc)
            return False
        self.counters["reads"] += 1
        if routes == self.kernel:
            return False
        self.kernel = routes
        self.table = self.base.with_extra(routes)
        self.counters["changes"] += 1
        self.counters["routes"] = len(routes)
        return True


def kernel_route_loop(routes: KernelRoutes, runtime: Any, stop: threading.Event) -> None:
    """Re-read kernel routes periodically; a change flushes the switch's forwarding entries."""
    while not stop.wait(routes.cfg.routing.kernel_refresh):
        if routes.refresh():
            LOG.info("kernel routes changed: %d routes", len(routes.kernel))
            runtime.run(lambda e, now: e.routes_changed(now))


def ssmb_loop(buses: Buses, runtime: Any) -> None:
    """Receive SSMB datagrams until stopped."""
    while not buses.stop.is_set():
        try:
            data, addr = buses.udp.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            if buses.stop.is_set():
                return
            continue
        for msg in buses.receive_ssmb(data, (addr[0], addr[1]), time.monotonic()):
            runtime.run(lambda e, now, m=msg: e.ssmb_message(m, now))


def csmb_loop(buses: Buses, runtime: Any) -> None:
    """Keep a CSMB connection to the CS, reconnecting with exponential backoff."""
    cfg, backoff = buses.cfg, BACKOFF_MIN
    target = cfg.cs_ipaddr
    while not buses.stop.is_set():
        try:
            sock = socket.create_connection((target, cfg.cs_csmb_port), timeout=2)
        except OSError:
            # The other CS of an active/standby pair gets the next try.
            target = _other_cs(cfg, runtime, target)
            buses.stop.wait(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)
            continue
        backoff = BACKOFF_MIN
        sock.settimeout(0.2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with buses.tcp_lock:
            buses.tcp = sock
        key = f"csmb_connects.{target}"
        buses.counters[key] = buses.counters.get(key, 0) + 1
        LOG.info("CSMB connected to %s:%d", target, cfg.cs_csmb_port)
        runtime.run(lambda e, now: e.csmb_connected(now))
        decoder = csmb.StreamDecoder()
        try:
            while not buses.stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                try:
                    msgs = decoder.feed(data)
                except ProtocolError as exc:
                    LOG.warning("CSMB stream from the CS is broken (%s); reconnecting", exc)
                    buses.counters["csmb_bad_stream"] += 1
                    break
                for msg in msgs:
                    runtime.run(lambda e, now, m=msg: e.csmb_message(m, now))
        except OSError as exc:
            LOG.info("CSMB connection lost: %s", exc)
        with buses.tcp_lock:
            buses.tcp = None
        with contextlib.suppress(OSError):
            sock.close()
        runtime.run(lambda e, now: e.csmb_disconnected(now))
        LOG.info("CSMB disconnected")
        target = _other_cs(cfg, runtime, target)
        buses.stop.wait(backoff)


def _other_cs(cfg: DfsConfig, runtime: Any, current: str) -> str:
    """Where to connect after losing ``current``: the other CS of the pair, if there is one."""
    announced = runtime.snapshot(lambda e: e.cs_standby if e.redundant else ZERO_IP)
    pair = [cfg.cs_ipaddr, cfg.cs_standby_ipaddr or announced]
    others = [ip for ip in pair if ip and ip != ZERO_IP and ip != current]
    return others[0] if others else cfg.cs_ipaddr


def timer_loop(buses: Buses, runtime: Any) -> None:
    """Tick the engine and flush SSMB batches."""
    while not buses.stop.wait(TICK):
        runtime.run(lambda e, now: e.tick(now))
        with runtime.lock:
            buses.poll_ssmb(time.monotonic())


def _supervised(
    name: str, stop: threading.Event, counters: dict[str, int], loop: Callable[..., None], *args: Any
) -> threading.Thread:
    """A thread running ``loop`` that logs a bug and starts the loop again instead of dying silently."""

    def run() -> None:
        while not stop.is_set():
            try:
                loop(*args)
                return
            except Exception:
                LOG.exception("the %s loop failed; restarting it", name)
                counters[f"{name}_loop_restarts"] = counters.get(f"{name}_loop_restarts", 0) + 1
                stop.wait(1.0)

    return threading.Thread(target=run, name=name, daemon=True)


def make_status_server(
    runtime: Any, buses: Buses, port: int, routes: KernelRoutes | None = None
) -> ThreadingHTTPServer:
    """The JSON status endpoint on 127.0.0.1."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/status":
                body: Any = runtime.snapshot(lambda e: e.status())
                body["runtime"] = dict(runtime.counters)
                with buses.receiver_lock:
                    body["ssmb_receiver"] = dict(buses.receiver.counters)
                body["ssmb_sender"] = dict(buses.sender.counters)
                body["csmb"] = dict(buses.counters)
                if routes is not None:
                    body["kernel_routes"] = dict(routes.counters)
            elif path == "/flows":
                body = runtime.snapshot(lambda e: e.flow_table())
            else:
                self.send_error(404, "unknown path; try /status or /flows")
                return
            data = json.dumps(body, sort_keys=True).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:
            LOG.debug("status: " + fmt, *args)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def _listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` in this namespace (from /proc, no connect)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if len(cols) > 3 and cols[1].endswith(want) and cols[3] == "0A":
                    return True
    return False


def start_osken(port: int) -> None:
    """Start os-ken with the DFS app, listening on 127.0.0.1:port (returns once it listens)."""
    from os_ken import cfg as osken_cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import controller as _registers_ofp_options  # noqa: F401

    osken_cfg.CONF(
        args=["--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(port)], project="os_ken"
    )
    # Echo requests are what makes os-ken's native-thread hub notice a closed switch connection
    # (its send loop otherwise waits forever); they also detect a hung switch.
    osken_cfg.CONF.set_override("echo_request_interval", ECHO_INTERVAL)
    osken_cfg.CONF.set_override("maximum_unreplied_echo_requests", ECHO_UNREPLIED)
    mgr = AppManager.get_instance()
    mgr.load_apps(["controller.app"])
    contexts = mgr.create_contexts()
    mgr.instantiate_apps(**contexts)
    deadline = time.monotonic() + 10
    while not _listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"os-ken is not listening on 127.0.0.1:{port}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """Run the DFS daemon."""
    ap = argparse.ArgumentParser(prog="dfsd", description="Data Flow Segment daemon")
    ap.add_argument("config", type=Path, help="DFS TOML configuration")
    ap.add_argument("--check", action="store_true", help="check the configuration and exit")
    ap.add_argument("--epoch", type=int, default=None, help="cookie epoch (default: derived from the clock)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stdout,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"dfsd: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"configuration OK: {cfg.name}, {len(cfg.interfaces)} interfaces")
        return 0

    from controller.app import DfsApp, DfsRuntime

    stop = threading.Event()
    epoch = args.epoch if args.epoch is not None else int(time.time()) & 0xFFFF
    routes = KernelRoutes(cfg) if cfg.routing.kernel_routes else None
    if routes is not None:
        routes.refresh()
    engine = DfsEngine(cfg, epoch, route_lookup=routes.lookup if routes is not None else None)
    try:
        buses = Buses(cfg, stop)
    except OSError as exc:
        print(f"dfsd: cannot bind SSMB {cfg.mgmt_ipaddr}:{cfg.ssmb_port}: {exc}", file=sys.stderr)
        return 1
    runtime = DfsRuntime(engine, buses.send_ssmb, buses.send_csmb, forget_ssmb=buses.forget_ssmb)
    DfsApp.runtime = runtime
    start_osken(cfg.openflow_port)
    unix_listener = UnixOpenFlowListener(cfg.unix_socket, stop) if cfg.unix_socket else None
    status = make_status_server(runtime, buses, cfg.status_port, routes)
    threads = [
        _supervised("ssmb", stop, buses.counters, ssmb_loop, buses, runtime),
        _supervised("csmb", stop, buses.counters, csmb_loop, buses, runtime),
        _supervised("timer", stop, buses.counters, timer_loop, buses, runtime),
        threading.Thread(target=status.serve_forever, name="status", daemon=True),
    ]
    if unix_listener is not None:
        threads.append(threading.Thread(target=unix_listener.serve, name="openflow-unix", daemon=True))
    if routes is not None:
        threads.append(
            threading.Thread(
                target=kernel_route_loop, args=(routes, runtime, stop), name="routes", daemon=True
            )
        )
    for t in threads:
        t.start()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ssmb_ip, ssmb_port = buses.ssmb_address
    print(
        f"READY dfsd name={cfg.name} epoch={epoch} openflow=127.0.0.1:{cfg.openflow_port}"
        f"{' unix=' + cfg.unix_socket if unix_listener else ''} ssmb={ssmb_ip}:{ssmb_port}"
        f" status=http://127.0.0.1:{status.server_address[1]}",
        flush=True,
    )
    stop.wait()
    LOG.info("stopping")
    status.shutdown()
    if unix_listener is not None:
        unix_listener.close()
    with contextlib.suppress(OSError):
        buses.udp.close()
    sys.stdout.flush()
    # os-ken's native hub threads are not daemonic and cannot be joined on demand.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
